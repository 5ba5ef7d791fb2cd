"""Shared fixtures for the verification-scheme tests."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest
from pydantic import TypeAdapter

from data_plane.verify import build_verifier
from data_plane.verify.base import Inbound, Verifier
from providers.verify_spec import Verify

# Every test judges requests at this instant unless it says otherwise.
NOW = 1_700_000_000.0

_SPEC = TypeAdapter(Verify)

MakeInbound = Callable[..., Inbound]


def make_inbound(
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    url: str = "https://gw.example/webhook/acme/hook",
    client_ip: str = "203.0.113.7",
    now: float = NOW,
    method: str = "POST",
) -> Inbound:
    # The gateway hands schemes lower-case header names; tests write them as vendors do.
    lowered = {name.lower(): value for name, value in (headers or {}).items()}
    return Inbound(method, url, lowered, body, client_ip, now)


def make_verifier(spec: dict[str, Any]) -> Verifier:
    """Validate `spec` as an operator's `spec.verify` would be, then build its verifier."""
    return build_verifier(_SPEC.validate_python(spec))


@pytest.fixture
def inbound() -> MakeInbound:
    return make_inbound


@pytest.fixture
def verifier() -> Callable[[dict[str, Any]], Verifier]:
    return make_verifier


@pytest.fixture
def now() -> float:
    return NOW

"""GitLab: the shared token in X-Gitlab-Token."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from data_plane.verify import VerifyFailed
from data_plane.verify.base import Inbound, Verifier

MakeInbound = Callable[..., Inbound]
MakeVerifier = Callable[[dict[str, Any]], Verifier]

TOKEN = "gl-token-5c1f"


def test_accepts_the_token(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "gitlab", "secret": TOKEN})
    assert verify(inbound(headers={"X-Gitlab-Token": TOKEN}, body=b"{}")) is None


def test_accepts_the_second_of_two_secrets(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "gitlab", "secret": ["old-token", TOKEN]})
    assert verify(inbound(headers={"X-Gitlab-Token": TOKEN})) is None


def test_body_is_not_signed_so_any_body_passes(
    verifier: MakeVerifier, inbound: MakeInbound
) -> None:
    # GitLab signs nothing: this documents the scheme's limit rather than a feature.
    verify = verifier({"scheme": "gitlab", "secret": TOKEN})
    assert verify(inbound(headers={"X-Gitlab-Token": TOKEN}, body=b"tampered")) is None


@pytest.mark.parametrize("given", ["wrong", TOKEN + "x", TOKEN[:-1], TOKEN.upper(), "tökén"])
def test_rejects_a_wrong_token(verifier: MakeVerifier, inbound: MakeInbound, given: str) -> None:
    verify = verifier({"scheme": "gitlab", "secret": TOKEN})
    with pytest.raises(VerifyFailed, match="token mismatch"):
        verify(inbound(headers={"X-Gitlab-Token": given}))


@pytest.mark.parametrize("headers", [{}, {"X-Gitlab-Token": ""}])
def test_rejects_a_missing_header(
    verifier: MakeVerifier, inbound: MakeInbound, headers: dict[str, str]
) -> None:
    verify = verifier({"scheme": "gitlab", "secret": TOKEN})
    with pytest.raises(VerifyFailed, match="missing header X-Gitlab-Token"):
        verify(inbound(headers=headers))

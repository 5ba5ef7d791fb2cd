"""docs/signatures.md is true: each worked example (the request in its ```http block, with the
secret and time the section names) passes the gateway's own verifier, and fails with one byte
of the body changed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import TypeAdapter

from data_plane.verify import build_verifier
from data_plane.verify.base import Inbound, VerifyFailed
from providers.verify_spec import Verify

PAGE = Path(__file__).resolve().parents[2] / "docs" / "signatures.md"
SECTION = re.compile(r"^## (\w+).*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
EXAMPLE = re.compile(r"```http\n(.*?)\n```", re.DOTALL)


def _examples() -> list[tuple[str, str, str, float]]:
    out = []
    for section in SECTION.finditer(PAGE.read_text(encoding="utf-8")):
        scheme, text = section.group(1), section.group(0)
        block = EXAMPLE.search(text)
        if block is None:
            continue
        secret = re.search(r"secret\s+`([^`]+)`", text)
        assert secret is not None, f"{scheme}: the example names no secret"
        when = re.search(r"time\s+(\d+)", text)
        out.append((scheme, block.group(1), secret.group(1),
                    float(when.group(1)) if when else 1_700_000_000.0))
    return out


EXAMPLES = _examples()


def test_every_hmac_scheme_has_a_worked_example() -> None:
    assert {s for s, *_ in EXAMPLES} == {"github", "stripe", "slack", "zoom", "shopify",
                                         "standard"}


@pytest.mark.parametrize(("scheme", "request_text", "secret", "now"), EXAMPLES,
                         ids=[e[0] for e in EXAMPLES])
def test_worked_example_verifies(scheme: str, request_text: str, secret: str,
                                 now: float) -> None:
    head, _, body = request_text.partition("\n\n")
    request_line, *header_lines = head.splitlines()
    path = request_line.split()[1]
    headers = {k.strip().lower(): v.strip()
               for k, _, v in (h.partition(":") for h in header_lines)}
    spec = TypeAdapter(Verify).validate_python({"scheme": scheme, "secret": secret})
    verify = build_verifier(spec)

    def inbound(payload: bytes) -> Inbound:
        return Inbound("POST", f"https://hooks.example{path}", headers, payload, "203.0.113.7",
                       now)

    assert verify(inbound(body.encode())) is None
    with pytest.raises(VerifyFailed):
        verify(inbound(body.encode() + b" "))

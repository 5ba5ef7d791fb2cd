"""GitHub: X-Hub-Signature-256 over the raw body."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any

import pytest

from data_plane.verify import VerifyFailed
from data_plane.verify.base import Inbound, Verifier

MakeInbound = Callable[..., Inbound]
MakeVerifier = Callable[[dict[str, Any]], Verifier]

# docs.github.com, "Validating webhook deliveries": the worked example.
DOC_SECRET = "It's a Secret to Everybody"
DOC_BODY = b"Hello, World!"
DOC_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"

SECRET = "gh-webhook-secret"
BODY = b'{"action":"opened","number":7}'


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_github_documented_example(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "github", "secret": DOC_SECRET})
    headers = {"X-Hub-Signature-256": DOC_SIGNATURE}
    assert verify(inbound(headers=headers, body=DOC_BODY)) is None


def test_accepts_a_correct_signature(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "github", "secret": SECRET})
    assert verify(inbound(headers={"X-Hub-Signature-256": sign(SECRET, BODY)}, body=BODY)) is None


def test_accepts_the_second_of_two_secrets(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "github", "secret": ["old-secret", SECRET]})
    assert verify(inbound(headers={"X-Hub-Signature-256": sign(SECRET, BODY)}, body=BODY)) is None


def test_rejects_a_tampered_body(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "github", "secret": SECRET})
    request = inbound(headers={"X-Hub-Signature-256": sign(SECRET, BODY)}, body=BODY + b" ")
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(request)


def test_rejects_a_wrong_secret(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "github", "secret": SECRET})
    request = inbound(headers={"X-Hub-Signature-256": sign("other", BODY)}, body=BODY)
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(request)


def test_rejects_a_missing_header(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "github", "secret": SECRET})
    with pytest.raises(VerifyFailed, match="missing header X-Hub-Signature-256"):
        verify(inbound(body=BODY))


@pytest.mark.parametrize(
    "value",
    [
        "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",  # no prefix
        "sha1=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        "sha256=not-hex",
        "sha256=abc",  # odd length
        "sha256=é",
    ],
)
def test_rejects_a_malformed_header(
    verifier: MakeVerifier, inbound: MakeInbound, value: str
) -> None:
    verify = verifier({"scheme": "github", "secret": SECRET})
    with pytest.raises(VerifyFailed, match="malformed header X-Hub-Signature-256"):
        verify(inbound(headers={"X-Hub-Signature-256": value}, body=BODY))


def test_upper_case_hex_is_accepted(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "github", "secret": SECRET})
    value = "sha256=" + sign(SECRET, BODY)[7:].upper()
    assert verify(inbound(headers={"X-Hub-Signature-256": value}, body=BODY)) is None

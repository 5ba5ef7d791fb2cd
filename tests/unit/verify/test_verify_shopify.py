"""Shopify: base64 HMAC-SHA256 of the raw body in X-Shopify-Hmac-Sha256."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from typing import Any

import pytest

from data_plane.verify import VerifyFailed
from data_plane.verify.base import Inbound, Verifier

MakeInbound = Callable[..., Inbound]
MakeVerifier = Callable[[dict[str, Any]], Verifier]

SECRET = "shpss_app_secret_0123"
BODY = b'{"id":820982911946154508,"email":"jon@example.com"}'


def sign(secret: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def test_accepts_a_correct_signature(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "shopify", "secret": SECRET})
    assert verify(inbound(headers={"X-Shopify-Hmac-Sha256": sign(SECRET, BODY)}, body=BODY)) is None


def test_accepts_the_second_of_two_secrets(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "shopify", "secret": ["previous", SECRET]})
    assert verify(inbound(headers={"X-Shopify-Hmac-Sha256": sign(SECRET, BODY)}, body=BODY)) is None


def test_rejects_a_tampered_body(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "shopify", "secret": SECRET})
    request = inbound(headers={"X-Shopify-Hmac-Sha256": sign(SECRET, BODY)}, body=BODY[:-1])
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(request)


def test_rejects_a_wrong_secret(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "shopify", "secret": SECRET})
    request = inbound(headers={"X-Shopify-Hmac-Sha256": sign("nope", BODY)}, body=BODY)
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(request)


def test_rejects_a_missing_header(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "shopify", "secret": SECRET})
    with pytest.raises(VerifyFailed, match="missing header X-Shopify-Hmac-Sha256"):
        verify(inbound(body=BODY))


@pytest.mark.parametrize("value", ["%%%", "abc", "aGVsbG8", "aGVsbG8=junk", "ünïcode"])
def test_rejects_bad_base64(verifier: MakeVerifier, inbound: MakeInbound, value: str) -> None:
    verify = verifier({"scheme": "shopify", "secret": SECRET})
    with pytest.raises(VerifyFailed, match="malformed header X-Shopify-Hmac-Sha256"):
        verify(inbound(headers={"X-Shopify-Hmac-Sha256": value}, body=BODY))


def test_hex_instead_of_base64_does_not_pass(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "shopify", "secret": SECRET})
    value = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    with pytest.raises(VerifyFailed):
        verify(inbound(headers={"X-Shopify-Hmac-Sha256": value}, body=BODY))

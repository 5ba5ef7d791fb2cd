"""Stripe: Stripe-Signature t=...,v1=... over "{t}.{body}", keyed by the whole whsec_ string."""

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

SECRET = "whsec_test_7d9a1b2c3d4e5f60718293a4b5c6d7e8"
BODY = b'{"id":"evt_1","object":"event","type":"payment_intent.succeeded"}'


def v1(secret: str, ts: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()


def header(secret: str, ts: int, body: bytes = BODY) -> dict[str, str]:
    return {"Stripe-Signature": f"t={ts},v1={v1(secret, ts, body)}"}


def test_accepts_a_correct_signature(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    verify = verifier({"scheme": "stripe", "secret": SECRET})
    assert verify(inbound(headers=header(SECRET, int(now)), body=BODY, now=now)) is None


def test_key_is_the_whole_secret_not_its_base64_decoding(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    # Stripe, unlike Standard Webhooks, uses the whsec_ string itself as the HMAC key.
    verify = verifier({"scheme": "stripe", "secret": SECRET})
    wrong_key = SECRET.removeprefix("whsec_")
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(inbound(headers=header(wrong_key, int(now)), body=BODY))


def test_accepts_the_second_of_two_secrets(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    verify = verifier({"scheme": "stripe", "secret": ["whsec_old", SECRET]})
    assert verify(inbound(headers=header(SECRET, int(now)), body=BODY)) is None


def test_accepts_any_of_several_v1_entries_and_ignores_v0(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    # During Stripe's own secret rotation one header carries a v1 per secret.
    ts = int(now)
    value = f"t={ts},v1={v1('whsec_other', ts, BODY)},v1={v1(SECRET, ts, BODY)},v0=deadbeef"
    verify = verifier({"scheme": "stripe", "secret": SECRET})
    assert verify(inbound(headers={"Stripe-Signature": value}, body=BODY)) is None


def test_rejects_a_tampered_body(verifier: MakeVerifier, inbound: MakeInbound, now: float) -> None:
    verify = verifier({"scheme": "stripe", "secret": SECRET})
    request = inbound(headers=header(SECRET, int(now)), body=BODY.replace(b"1", b"2"))
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(request)


def test_rejects_a_wrong_secret(verifier: MakeVerifier, inbound: MakeInbound, now: float) -> None:
    verify = verifier({"scheme": "stripe", "secret": SECRET})
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(inbound(headers=header("whsec_wrong", int(now)), body=BODY))


def test_rejects_a_changed_timestamp(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    ts = int(now)
    value = f"t={ts - 1},v1={v1(SECRET, ts, BODY)}"
    verify = verifier({"scheme": "stripe", "secret": SECRET})
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(inbound(headers={"Stripe-Signature": value}, body=BODY))


def test_rejects_a_stale_timestamp(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    verify = verifier({"scheme": "stripe", "secret": SECRET})
    ts = int(now) - 301
    with pytest.raises(VerifyFailed, match=r"timestamp outside tolerance \(301 s old\)"):
        verify(inbound(headers=header(SECRET, ts), body=BODY))


def test_rejects_a_future_timestamp(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    verify = verifier({"scheme": "stripe", "secret": SECRET})
    ts = int(now) + 400
    with pytest.raises(VerifyFailed, match=r"timestamp outside tolerance \(400 s in the future\)"):
        verify(inbound(headers=header(SECRET, ts), body=BODY))


def test_edge_of_tolerance_and_custom_tolerance(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    default = verifier({"scheme": "stripe", "secret": SECRET})
    assert default(inbound(headers=header(SECRET, int(now) - 300), body=BODY)) is None
    strict = verifier({"scheme": "stripe", "secret": SECRET, "tolerance_s": 10})
    with pytest.raises(VerifyFailed, match="timestamp outside tolerance"):
        strict(inbound(headers=header(SECRET, int(now) - 11), body=BODY))


def test_rejects_a_missing_header(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "stripe", "secret": SECRET})
    with pytest.raises(VerifyFailed, match="missing header Stripe-Signature"):
        verify(inbound(body=BODY))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("v1=abcd", "no timestamp"),
        ("garbage", "no timestamp"),
        ("t=abc,v1=abcd", "malformed timestamp in Stripe-Signature"),
        ("t=1_700_000_000,v1=abcd", "malformed timestamp"),
        ("t=-5,v1=abcd", "malformed timestamp"),
        ("t=1700000000", "no v1 signature"),
        ("t=1700000000,v1=zz", "no v1 signature"),
        ("t=1700000000,v0=abcd", "no v1 signature"),
    ],
)
def test_rejects_a_malformed_header(
    verifier: MakeVerifier, inbound: MakeInbound, value: str, reason: str
) -> None:
    verify = verifier({"scheme": "stripe", "secret": SECRET})
    with pytest.raises(VerifyFailed, match=reason):
        verify(inbound(headers={"Stripe-Signature": value}, body=BODY))

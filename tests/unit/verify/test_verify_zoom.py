"""Zoom: x-zm-signature v0=... over "v0:{ts}:{body}", and endpoint.url_validation."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import pytest

from data_plane.verify import VerifyFailed
from data_plane.verify.base import Inbound, Verifier

MakeInbound = Callable[..., Inbound]
MakeVerifier = Callable[[dict[str, Any]], Verifier]

SECRET = "zoom-secret-token-abc123"
BODY = b'{"event":"meeting.started","payload":{"object":{"id":"85714785125"}}}'


def headers(secret: str, ts: int | str, body: bytes = BODY) -> dict[str, str]:
    mac = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256)
    return {"x-zm-request-timestamp": str(ts), "x-zm-signature": "v0=" + mac.hexdigest()}


def validation(plain: object = "qgg8vlvZRS6UYooatFL8Aw") -> bytes:
    event = {"payload": {"plainToken": plain}, "event_ts": 1654503849680, "event": ""}
    event["event"] = "endpoint.url_validation"
    return json.dumps(event).encode()


def test_accepts_a_correct_signature(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    verify = verifier({"scheme": "zoom", "secret": SECRET})
    assert verify(inbound(headers=headers(SECRET, int(now)), body=BODY)) is None


def test_accepts_the_second_of_two_secrets(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    verify = verifier({"scheme": "zoom", "secret": ["old-zoom", SECRET]})
    assert verify(inbound(headers=headers(SECRET, int(now)), body=BODY)) is None


def test_rejects_a_tampered_body(verifier: MakeVerifier, inbound: MakeInbound, now: float) -> None:
    verify = verifier({"scheme": "zoom", "secret": SECRET})
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(inbound(headers=headers(SECRET, int(now)), body=BODY.replace(b"started", b"ended")))


def test_rejects_a_wrong_secret(verifier: MakeVerifier, inbound: MakeInbound, now: float) -> None:
    verify = verifier({"scheme": "zoom", "secret": SECRET})
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(inbound(headers=headers("nope", int(now)), body=BODY))


@pytest.mark.parametrize(("offset", "words"), [(-3600, "3600 s old"), (301, "301 s in the future")])
def test_rejects_a_timestamp_outside_tolerance(
    verifier: MakeVerifier, inbound: MakeInbound, now: float, offset: int, words: str
) -> None:
    verify = verifier({"scheme": "zoom", "secret": SECRET})
    with pytest.raises(VerifyFailed, match=words):
        verify(inbound(headers=headers(SECRET, int(now) + offset), body=BODY))


@pytest.mark.parametrize("drop", ["x-zm-request-timestamp", "x-zm-signature"])
def test_rejects_a_missing_header(
    verifier: MakeVerifier, inbound: MakeInbound, now: float, drop: str
) -> None:
    verify = verifier({"scheme": "zoom", "secret": SECRET})
    sent = headers(SECRET, int(now))
    del sent[drop]
    with pytest.raises(VerifyFailed, match=f"missing header {drop}"):
        verify(inbound(headers=sent, body=BODY))


@pytest.mark.parametrize("signature", ["v0=", "v0=qq", "sha256=00", "00"])
def test_rejects_a_malformed_signature(
    verifier: MakeVerifier, inbound: MakeInbound, now: float, signature: str
) -> None:
    verify = verifier({"scheme": "zoom", "secret": SECRET})
    sent = {"x-zm-request-timestamp": str(int(now)), "x-zm-signature": signature}
    with pytest.raises(VerifyFailed):
        verify(inbound(headers=sent, body=BODY))


def test_answers_url_validation_with_the_secret_that_signed(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    verify = verifier({"scheme": "zoom", "secret": ["old-zoom", SECRET]})
    body = validation()
    answer = verify(inbound(headers=headers(SECRET, int(now), body), body=body))
    assert answer is not None
    assert (answer.status, answer.content_type) == (200, "application/json")
    expected = hmac.new(SECRET.encode(), b"qgg8vlvZRS6UYooatFL8Aw", hashlib.sha256).hexdigest()
    assert json.loads(answer.body) == {
        "plainToken": "qgg8vlvZRS6UYooatFL8Aw",
        "encryptedToken": expected,
    }


def test_unsigned_url_validation_is_refused(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    verify = verifier({"scheme": "zoom", "secret": SECRET})
    body = validation()
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(inbound(headers=headers("attacker", int(now), body), body=body))


def test_url_validation_without_a_plain_token_is_refused(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    verify = verifier({"scheme": "zoom", "secret": SECRET})
    body = validation(plain=12345)
    with pytest.raises(VerifyFailed, match=r"without payload\.plainToken"):
        verify(inbound(headers=headers(SECRET, int(now), body), body=body))


def test_an_event_merely_mentioning_validation_is_delivered(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    verify = verifier({"scheme": "zoom", "secret": SECRET})
    body = b'{"event":"chat.message","payload":{"text":"endpoint.url_validation"}}'
    assert verify(inbound(headers=headers(SECRET, int(now), body), body=body)) is None

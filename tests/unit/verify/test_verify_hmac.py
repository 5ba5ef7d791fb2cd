"""The generic hmac scheme: header, prefix, algorithm, encoding, optional timestamp."""

from __future__ import annotations

import base64
import hmac
from collections.abc import Callable
from typing import Any

import pytest

from data_plane.verify import VerifyFailed
from data_plane.verify.base import Inbound, Verifier

MakeInbound = Callable[..., Inbound]
MakeVerifier = Callable[[dict[str, Any]], Verifier]

SECRET = "generic-hmac-secret"
BODY = b'{"order":42,"status":"paid"}'


def digest(secret: str, data: bytes, algorithm: str = "sha256", encoding: str = "hex") -> str:
    mac = hmac.new(secret.encode(), data, algorithm).digest()
    return mac.hex() if encoding == "hex" else base64.b64encode(mac).decode()


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha512"])
@pytest.mark.parametrize("encoding", ["hex", "base64"])
def test_each_algorithm_and_encoding(
    verifier: MakeVerifier, inbound: MakeInbound, algorithm: str, encoding: str
) -> None:
    spec = {"scheme": "hmac", "secret": SECRET, "algorithm": algorithm, "encoding": encoding}
    verify = verifier(spec)
    value = digest(SECRET, BODY, algorithm, encoding)
    assert verify(inbound(headers={"X-Signature": value}, body=BODY)) is None
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(inbound(headers={"X-Signature": value}, body=BODY + b"x"))


def test_custom_header_and_prefix(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    spec = {"scheme": "hmac", "secret": SECRET, "header": "X-Acme-Signature", "prefix": "sha256="}
    verify = verifier(spec)
    value = "sha256=" + digest(SECRET, BODY)
    assert verify(inbound(headers={"x-acme-signature": value}, body=BODY)) is None
    with pytest.raises(VerifyFailed, match="malformed header X-Acme-Signature"):
        verify(inbound(headers={"X-Acme-Signature": digest(SECRET, BODY)}, body=BODY))


def test_accepts_the_second_of_two_secrets(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "hmac", "secret": ["old", SECRET]})
    assert verify(inbound(headers={"X-Signature": digest(SECRET, BODY)}, body=BODY)) is None


def test_rejects_a_tampered_body(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "hmac", "secret": SECRET})
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(inbound(headers={"X-Signature": digest(SECRET, BODY)}, body=b"{}"))


def test_rejects_a_wrong_secret(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "hmac", "secret": SECRET})
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(inbound(headers={"X-Signature": digest("other", BODY)}, body=BODY))


def test_rejects_a_missing_header(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "hmac", "secret": SECRET})
    with pytest.raises(VerifyFailed, match="missing header X-Signature"):
        verify(inbound(body=BODY))


@pytest.mark.parametrize(("encoding", "value"), [("hex", "xyz0"), ("base64", "not*base64")])
def test_rejects_a_malformed_digest(
    verifier: MakeVerifier, inbound: MakeInbound, encoding: str, value: str
) -> None:
    verify = verifier({"scheme": "hmac", "secret": SECRET, "encoding": encoding})
    with pytest.raises(VerifyFailed, match="malformed header X-Signature"):
        verify(inbound(headers={"X-Signature": value}, body=BODY))


TIMED = {"scheme": "hmac", "secret": SECRET, "timestamp_header": "X-Timestamp"}


def timed_headers(secret: str, ts: int | str, body: bytes = BODY) -> dict[str, str]:
    return {"X-Timestamp": str(ts), "X-Signature": digest(secret, f"{ts}.".encode() + body)}


def test_timed_accepts_a_correct_signature(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    verify = verifier(TIMED)
    assert verify(inbound(headers=timed_headers(SECRET, int(now)), body=BODY)) is None


def test_timed_signs_the_timestamp_too(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    verify = verifier(TIMED)
    sent = timed_headers(SECRET, int(now))
    sent["X-Timestamp"] = str(int(now) - 1)
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(inbound(headers=sent, body=BODY))


def test_timed_body_alone_is_not_enough(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    verify = verifier(TIMED)
    sent = {"X-Timestamp": str(int(now)), "X-Signature": digest(SECRET, BODY)}
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(inbound(headers=sent, body=BODY))


@pytest.mark.parametrize(("offset", "words"), [(-1000, "1000 s old"), (1000, "in the future")])
def test_timed_rejects_a_timestamp_outside_tolerance(
    verifier: MakeVerifier, inbound: MakeInbound, now: float, offset: int, words: str
) -> None:
    verify = verifier(TIMED)
    with pytest.raises(VerifyFailed, match=words):
        verify(inbound(headers=timed_headers(SECRET, int(now) + offset), body=BODY))


def test_timed_respects_a_custom_tolerance(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    verify = verifier({**TIMED, "tolerance_s": 1000})
    assert verify(inbound(headers=timed_headers(SECRET, int(now) - 999), body=BODY)) is None


def test_timed_rejects_a_missing_timestamp(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    verify = verifier(TIMED)
    sent = timed_headers(SECRET, int(now))
    del sent["X-Timestamp"]
    with pytest.raises(VerifyFailed, match="missing header X-Timestamp"):
        verify(inbound(headers=sent, body=BODY))


def test_timed_rejects_a_malformed_timestamp(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier(TIMED)
    with pytest.raises(VerifyFailed, match="malformed timestamp in X-Timestamp"):
        verify(inbound(headers=timed_headers(SECRET, "yesterday"), body=BODY))

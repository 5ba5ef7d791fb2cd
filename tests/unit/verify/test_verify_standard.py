"""Standard Webhooks / Svix: webhook-* (or svix-*) headers, base64 key after whsec_."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from typing import Any

import pytest

from data_plane.verify import VerifyFailed
from data_plane.verify.base import Inbound, Verifier
from data_plane.verify.standard import build
from providers.verify_spec import Standard

MakeInbound = Callable[..., Inbound]
MakeVerifier = Callable[[dict[str, Any]], Verifier]

# The test vector of the Standard Webhooks spec and Svix's libraries.
DOC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
DOC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
DOC_TS = "1614265330"
DOC_BODY = b'{"test": 2432232314}'
DOC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

SECRET = "whsec_" + base64.b64encode(b"standard-webhooks-key-32-bytes!!").decode()
OTHER = "whsec_" + base64.b64encode(b"another-key-entirely-32-bytes!!!").decode()
BODY = b'{"type":"invoice.paid","data":{"id":"in_1"}}'


def sign(secret: str, msg_id: str, ts: int | str, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers(
    secret: str, ts: int | str, body: bytes = BODY, prefix: str = "webhook"
) -> dict[str, str]:
    return {
        f"{prefix}-id": "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
        f"{prefix}-timestamp": str(ts),
        f"{prefix}-signature": sign(secret, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", ts, body),
    }


@pytest.mark.parametrize("prefix", ["webhook", "svix"])
def test_spec_test_vector(verifier: MakeVerifier, inbound: MakeInbound, prefix: str) -> None:
    verify = verifier({"scheme": "standard", "secret": DOC_SECRET})
    sent = {
        f"{prefix}-id": DOC_ID,
        f"{prefix}-timestamp": DOC_TS,
        f"{prefix}-signature": DOC_SIGNATURE,
    }
    assert verify(inbound(headers=sent, body=DOC_BODY, now=float(DOC_TS))) is None


def test_test_vector_is_refused_with_a_tampered_body(
    verifier: MakeVerifier, inbound: MakeInbound
) -> None:
    verify = verifier({"scheme": "standard", "secret": DOC_SECRET})
    sent = {"webhook-id": DOC_ID, "webhook-timestamp": DOC_TS, "webhook-signature": DOC_SIGNATURE}
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(inbound(headers=sent, body=b'{"test": 2432232315}', now=float(DOC_TS)))


@pytest.mark.parametrize("prefix", ["webhook", "svix"])
def test_accepts_a_correct_signature(
    verifier: MakeVerifier, inbound: MakeInbound, now: float, prefix: str
) -> None:
    verify = verifier({"scheme": "standard", "secret": SECRET})
    assert verify(inbound(headers=headers(SECRET, int(now), prefix=prefix), body=BODY)) is None


def test_accepts_the_second_of_two_secrets(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    verify = verifier({"scheme": "standard", "secret": [OTHER, SECRET]})
    assert verify(inbound(headers=headers(SECRET, int(now)), body=BODY)) is None


def test_accepts_a_secret_without_the_whsec_prefix(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    verify = verifier({"scheme": "standard", "secret": SECRET.removeprefix("whsec_")})
    assert verify(inbound(headers=headers(SECRET, int(now)), body=BODY)) is None


def test_any_v1_in_a_space_separated_list_matches(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    sent = headers(SECRET, int(now))
    good = sent["webhook-signature"]
    sent["webhook-signature"] = f"v1a,Zm9v v1,AAAA {good} v1,not-base64!"
    verify = verifier({"scheme": "standard", "secret": SECRET})
    assert verify(inbound(headers=sent, body=BODY)) is None


def test_rejects_a_tampered_body(verifier: MakeVerifier, inbound: MakeInbound, now: float) -> None:
    verify = verifier({"scheme": "standard", "secret": SECRET})
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(inbound(headers=headers(SECRET, int(now)), body=BODY + b"\n"))


def test_rejects_a_changed_message_id(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    verify = verifier({"scheme": "standard", "secret": SECRET})
    sent = headers(SECRET, int(now))
    sent["webhook-id"] = "msg_other"
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(inbound(headers=sent, body=BODY))


def test_rejects_a_wrong_secret(verifier: MakeVerifier, inbound: MakeInbound, now: float) -> None:
    verify = verifier({"scheme": "standard", "secret": SECRET})
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(inbound(headers=headers(OTHER, int(now)), body=BODY))


@pytest.mark.parametrize(("offset", "words"), [(-301, "301 s old"), (301, "301 s in the future")])
def test_rejects_a_timestamp_outside_five_minutes(
    verifier: MakeVerifier, inbound: MakeInbound, now: float, offset: int, words: str
) -> None:
    verify = verifier({"scheme": "standard", "secret": SECRET})
    with pytest.raises(VerifyFailed, match=words):
        verify(inbound(headers=headers(SECRET, int(now) + offset), body=BODY))


@pytest.mark.parametrize("drop", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_rejects_a_missing_header(
    verifier: MakeVerifier, inbound: MakeInbound, now: float, drop: str
) -> None:
    verify = verifier({"scheme": "standard", "secret": SECRET})
    sent = headers(SECRET, int(now))
    del sent[drop]
    with pytest.raises(VerifyFailed, match=f"missing header {drop}"):
        verify(inbound(headers=sent, body=BODY))


@pytest.mark.parametrize("value", ["", "v1", "v1,", "v2,AAAA", "v1,%%%%", "garbage"])
def test_rejects_a_signature_list_without_a_usable_v1(
    verifier: MakeVerifier, inbound: MakeInbound, now: float, value: str
) -> None:
    verify = verifier({"scheme": "standard", "secret": SECRET})
    sent = headers(SECRET, int(now))
    sent["webhook-signature"] = value
    with pytest.raises(VerifyFailed):
        verify(inbound(headers=sent, body=BODY))


def test_rejects_a_malformed_timestamp(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    verify = verifier({"scheme": "standard", "secret": SECRET})
    sent = headers(SECRET, "1614265330.5")
    with pytest.raises(VerifyFailed, match="malformed timestamp in webhook-timestamp"):
        verify(inbound(headers=sent, body=BODY))


@pytest.mark.parametrize("secret", ["whsec_", "whsec_not base64!", "whsec_abc", "plain words"])
def test_a_secret_that_is_not_base64_fails_at_build_time(secret: str) -> None:
    with pytest.raises(ValueError, match="not base64") as caught:
        build(Standard(scheme="standard", secret=(secret,)))
    key = secret.removeprefix("whsec_")
    assert not key or key not in str(caught.value)

"""Slack: X-Slack-Signature v0=... over "v0:{ts}:{body}", and the url_verification challenge."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import pytest

from data_plane.verify import Answer, VerifyFailed
from data_plane.verify.base import Inbound, Verifier

MakeInbound = Callable[..., Inbound]
MakeVerifier = Callable[[dict[str, Any]], Verifier]

# Slack's "Verifying requests from Slack" worked example (a slash-command form post).
DOC_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
DOC_TS = "1531420618"
DOC_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow"
    b"&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner"
    b"&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands"
    b"%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
DOC_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"

SECRET = "slack-signing-secret-0001"
BODY = b'{"type":"event_callback","event":{"type":"app_mention","text":"hi"}}'


def headers(secret: str, ts: int | str, body: bytes = BODY) -> dict[str, str]:
    mac = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256)
    return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": "v0=" + mac.hexdigest()}


def test_slack_documented_example(verifier: MakeVerifier, inbound: MakeInbound) -> None:
    verify = verifier({"scheme": "slack", "secret": DOC_SECRET})
    request = inbound(
        headers={"X-Slack-Request-Timestamp": DOC_TS, "X-Slack-Signature": DOC_SIGNATURE},
        body=DOC_BODY,
        now=float(DOC_TS) + 60,
    )
    assert verify(request) is None


def test_accepts_a_correct_signature(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    verify = verifier({"scheme": "slack", "secret": SECRET})
    assert verify(inbound(headers=headers(SECRET, int(now)), body=BODY)) is None


def test_accepts_the_second_of_two_secrets(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    verify = verifier({"scheme": "slack", "secret": ["old-slack", SECRET]})
    assert verify(inbound(headers=headers(SECRET, int(now)), body=BODY)) is None


def test_rejects_a_tampered_body(verifier: MakeVerifier, inbound: MakeInbound, now: float) -> None:
    verify = verifier({"scheme": "slack", "secret": SECRET})
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(inbound(headers=headers(SECRET, int(now)), body=BODY.replace(b"hi", b"ho")))


def test_rejects_a_wrong_secret(verifier: MakeVerifier, inbound: MakeInbound, now: float) -> None:
    verify = verifier({"scheme": "slack", "secret": SECRET})
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(inbound(headers=headers("other", int(now)), body=BODY))


def test_rejects_the_documented_example_once_stale(
    verifier: MakeVerifier, inbound: MakeInbound
) -> None:
    verify = verifier({"scheme": "slack", "secret": DOC_SECRET})
    request = inbound(
        headers={"X-Slack-Request-Timestamp": DOC_TS, "X-Slack-Signature": DOC_SIGNATURE},
        body=DOC_BODY,
        now=float(DOC_TS) + 412,
    )
    with pytest.raises(VerifyFailed, match=r"timestamp outside tolerance \(412 s old\)"):
        verify(request)


def test_rejects_a_future_timestamp(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    verify = verifier({"scheme": "slack", "secret": SECRET})
    with pytest.raises(VerifyFailed, match="in the future"):
        verify(inbound(headers=headers(SECRET, int(now) + 301), body=BODY))


@pytest.mark.parametrize("drop", ["X-Slack-Request-Timestamp", "X-Slack-Signature"])
def test_rejects_a_missing_header(
    verifier: MakeVerifier, inbound: MakeInbound, now: float, drop: str
) -> None:
    verify = verifier({"scheme": "slack", "secret": SECRET})
    sent = headers(SECRET, int(now))
    del sent[drop]
    with pytest.raises(VerifyFailed, match=f"missing header {drop}"):
        verify(inbound(headers=sent, body=BODY))


@pytest.mark.parametrize(
    ("ts", "signature", "reason"),
    [
        ("soon", "v0=00", "malformed timestamp in X-Slack-Request-Timestamp"),
        ("1.7e9", "v0=00", "malformed timestamp"),
        ("\u0661\u0667" + "\u0660" * 8, "v0=00", "malformed timestamp"),  # Arabic-Indic digits
        ("9" * 5000, "v0=00", "malformed timestamp"),
        (None, "v1=00", "malformed header X-Slack-Signature"),
        (None, "v0=xyz", "malformed header X-Slack-Signature"),
    ],
)
def test_rejects_malformed_headers(
    verifier: MakeVerifier,
    inbound: MakeInbound,
    now: float,
    ts: str | None,
    signature: str,
    reason: str,
) -> None:
    verify = verifier({"scheme": "slack", "secret": SECRET})
    sent = {"X-Slack-Request-Timestamp": ts or str(int(now)), "X-Slack-Signature": signature}
    with pytest.raises(VerifyFailed, match=reason):
        verify(inbound(headers=sent, body=BODY))


def url_verification(
    challenge: object = "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
) -> bytes:
    return json.dumps(
        {"token": "Jhj5dZrVaK7ZwHHjRyZWjbDl", "challenge": challenge, "type": "url_verification"}
    ).encode()


def test_answers_a_signed_url_verification_with_the_challenge(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    verify = verifier({"scheme": "slack", "secret": SECRET})
    body = url_verification()
    answer = verify(inbound(headers=headers(SECRET, int(now), body), body=body))
    assert answer == Answer(
        200, b"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "text/plain"
    )


def test_an_unsigned_url_verification_is_refused(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    # Slack's docs: verify the request's authenticity, then answer the challenge.
    verify = verifier({"scheme": "slack", "secret": SECRET})
    body = url_verification()
    with pytest.raises(VerifyFailed, match="signature mismatch"):
        verify(inbound(headers=headers("other", int(now), body), body=body))


def test_url_verification_without_a_challenge_is_refused(
    verifier: MakeVerifier, inbound: MakeInbound, now: float
) -> None:
    verify = verifier({"scheme": "slack", "secret": SECRET})
    body = url_verification(challenge=None)
    with pytest.raises(VerifyFailed, match="without a challenge"):
        verify(inbound(headers=headers(SECRET, int(now), body), body=body))


@pytest.mark.parametrize(
    "body",
    [
        b"text=url_verification&command=%2Fdeploy",  # a form post that mentions the word
        b'{"type":"event_callback","event":{"text":"url_verification"}}',
    ],
)
def test_other_signed_requests_mentioning_the_word_are_delivered(
    verifier: MakeVerifier, inbound: MakeInbound, now: float, body: bytes
) -> None:
    verify = verifier({"scheme": "slack", "secret": SECRET})
    assert verify(inbound(headers=headers(SECRET, int(now), body), body=body)) is None

"""Slack: `X-Slack-Signature: v0=<hex>` over `v0:{X-Slack-Request-Timestamp}:{body}`.

Slack's Events API sends a `url_verification` request when a Request URL is configured; its
docs say to verify the request's authenticity and then reply with the `challenge` value, so
the gateway answers it here, after the signature check, instead of delivering it.
"""

from __future__ import annotations

import json

from data_plane.verify import v0
from data_plane.verify._common import encode_secrets, keyed
from data_plane.verify.base import Answer, Inbound, Verifier, VerifyFailed
from providers.verify_spec import Slack

_SIGNATURE = ("x-slack-signature", "X-Slack-Signature")
_TIMESTAMP = ("x-slack-request-timestamp", "X-Slack-Request-Timestamp")
# Cheap tests first: most requests are events or form posts that never need parsing. A
# url_verification body is about 150 bytes, so larger bodies are not even searched.
_CHALLENGE_MARK = b"url_verification"
_MAX_CHALLENGE_BODY = 2048


def build(spec: Slack) -> Verifier:
    keys = keyed(encode_secrets(spec.secret), "sha256")
    tolerance = spec.tolerance_s

    def verify(inbound: Inbound) -> Answer | None:
        v0.check(keys, inbound, tolerance, _SIGNATURE, _TIMESTAMP)
        body = inbound.body
        if len(body) <= _MAX_CHALLENGE_BODY and _CHALLENGE_MARK in body:
            return _challenge(body)
        return None

    return verify


def _challenge(body: bytes) -> Answer | None:
    try:
        event = json.loads(body)
    except (ValueError, RecursionError):
        return None  # a signed form post that merely mentions the word: deliver it
    if not isinstance(event, dict) or event.get("type") != "url_verification":
        return None
    challenge = event.get("challenge")
    if not isinstance(challenge, str):
        raise VerifyFailed("url_verification without a challenge")
    # errors="replace": JSON can carry a lone surrogate escape; it must not crash the gateway.
    return Answer(200, challenge.encode(errors="replace"), "text/plain")

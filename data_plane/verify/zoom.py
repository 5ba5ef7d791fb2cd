"""Zoom: `x-zm-signature: v0=<hex>` over `v0:{x-zm-request-timestamp}:{body}`.

Zoom validates an endpoint (at setup and every 72 hours) with a signed
`endpoint.url_validation` event; the reply must echo `payload.plainToken` with its
HMAC-SHA256 under the secret token. The reply uses the secret that verified the request, so
validation keeps working while an old and a new secret are both configured.
"""

from __future__ import annotations

import json

from data_plane.verify import v0
from data_plane.verify._common import Mac, encode_secrets, keyed
from data_plane.verify.base import Answer, Inbound, Verifier, VerifyFailed
from providers.verify_spec import Zoom

_SIGNATURE = ("x-zm-signature", "x-zm-signature")
_TIMESTAMP = ("x-zm-request-timestamp", "x-zm-request-timestamp")
_VALIDATION = "endpoint.url_validation"
# Cheap tests first: ordinary events never need parsing here. A validation body is about
# 120 bytes, so larger bodies are not even searched.
_VALIDATION_MARK = _VALIDATION.encode()
_MAX_CHALLENGE_BODY = 2048


def build(spec: Zoom) -> Verifier:
    keys = keyed(encode_secrets(spec.secret), "sha256")
    tolerance = spec.tolerance_s

    def verify(inbound: Inbound) -> Answer | None:
        index = v0.check(keys, inbound, tolerance, _SIGNATURE, _TIMESTAMP)
        body = inbound.body
        if len(body) <= _MAX_CHALLENGE_BODY and _VALIDATION_MARK in body:
            return _validation(body, keys[index])
        return None

    return verify


def _validation(body: bytes, key: Mac) -> Answer | None:
    try:
        event = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(event, dict) or event.get("event") != _VALIDATION:
        return None
    payload = event.get("payload")
    plain = payload.get("plainToken") if isinstance(payload, dict) else None
    if not isinstance(plain, str):
        raise VerifyFailed("endpoint.url_validation without payload.plainToken")
    mac = key.copy()
    # surrogatepass: JSON can carry a lone surrogate escape; it must not crash the gateway.
    mac.update(plain.encode(errors="surrogatepass"))
    reply = {"plainToken": plain, "encryptedToken": mac.hexdigest()}
    return Answer(200, json.dumps(reply).encode(), "application/json")

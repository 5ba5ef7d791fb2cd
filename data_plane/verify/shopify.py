"""Shopify: `X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256 of the raw body>`, keyed by the app
secret."""

from __future__ import annotations

from data_plane.verify._common import encode_secrets, from_b64, header, keyed, match
from data_plane.verify.base import Answer, Inbound, Verifier, VerifyFailed
from providers.verify_spec import Shopify

_HEADER = "x-shopify-hmac-sha256"
_DISPLAY = "X-Shopify-Hmac-Sha256"


def build(spec: Shopify) -> Verifier:
    keys = keyed(encode_secrets(spec.secret), "sha256")

    def verify(inbound: Inbound) -> Answer | None:
        received = from_b64(header(inbound.headers, _HEADER, _DISPLAY).strip())
        if received is None:
            raise VerifyFailed(f"malformed header {_DISPLAY}")
        if match(keys, (inbound.body,), (received,)) < 0:
            raise VerifyFailed("signature mismatch")
        return None

    return verify

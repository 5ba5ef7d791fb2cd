"""GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`."""

from __future__ import annotations

from data_plane.verify._common import encode_secrets, from_hex, header, keyed, match
from data_plane.verify.base import Answer, Inbound, Verifier, VerifyFailed
from providers.verify_spec import GitHub

_HEADER = "x-hub-signature-256"
_DISPLAY = "X-Hub-Signature-256"
_PREFIX = "sha256="


def build(spec: GitHub) -> Verifier:
    keys = keyed(encode_secrets(spec.secret), "sha256")

    def verify(inbound: Inbound) -> Answer | None:
        value = header(inbound.headers, _HEADER, _DISPLAY)
        received = from_hex(value[7:]) if value.startswith(_PREFIX) else None
        if received is None:
            raise VerifyFailed(f"malformed header {_DISPLAY}")
        if match(keys, (inbound.body,), (received,)) < 0:
            raise VerifyFailed("signature mismatch")
        return None

    return verify

"""`Authorization: Bearer <token>`, the token compared with each secret."""

from __future__ import annotations

from data_plane.verify._common import encode_secrets, header, token_matches
from data_plane.verify.base import Answer, Inbound, Verifier, VerifyFailed
from providers.verify_spec import Bearer

_HEADER = "authorization"
_DISPLAY = "Authorization"


def build(spec: Bearer) -> Verifier:
    secrets = encode_secrets(spec.secret)

    def verify(inbound: Inbound) -> Answer | None:
        scheme, _, token = header(inbound.headers, _HEADER, _DISPLAY).strip().partition(" ")
        # The auth-scheme name is case-insensitive (RFC 9110 section 11.1).
        if scheme.lower() != "bearer":
            raise VerifyFailed(f"{_DISPLAY} is not a Bearer token")
        if not token_matches(secrets, token.strip()):
            raise VerifyFailed("token mismatch")
        return None

    return verify

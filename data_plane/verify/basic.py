"""`Authorization: Basic base64(user:password)`: the user must be `spec.username` and the
password one of the secrets."""

from __future__ import annotations

import hmac

from data_plane.verify._common import encode_secrets, from_b64, header
from data_plane.verify.base import Answer, Inbound, Verifier, VerifyFailed
from providers.verify_spec import Basic

_HEADER = "authorization"
_DISPLAY = "Authorization"


def build(spec: Basic) -> Verifier:
    username = spec.username.encode()
    passwords = encode_secrets(spec.secret)

    def verify(inbound: Inbound) -> Answer | None:
        scheme, _, encoded = header(inbound.headers, _HEADER, _DISPLAY).strip().partition(" ")
        # The auth-scheme name is case-insensitive (RFC 9110 section 11.1).
        if scheme.lower() != "basic":
            raise VerifyFailed(f"{_DISPLAY} is not Basic credentials")
        credentials = from_b64(encoded.strip())
        if credentials is None or b":" not in credentials:
            raise VerifyFailed(f"malformed header {_DISPLAY}")
        user, _, password = credentials.partition(b":")
        # Both halves are always compared, so timing tells neither whether the user was right
        # nor which password matched.
        user_ok = hmac.compare_digest(user, username)
        password_ok = False
        for secret in passwords:
            password_ok |= hmac.compare_digest(password, secret)
        if not (user_ok and password_ok):
            raise VerifyFailed("credentials mismatch")
        return None

    return verify

"""Standard Webhooks (and Svix, which it grew from).

Headers `webhook-id`, `webhook-timestamp`, `webhook-signature` (Svix: the same with `svix-`);
the signature header is a space-separated list of `v1,<base64 HMAC-SHA256>` over
`{id}.{timestamp}.{body}`. The key is the base64 text after `whsec_`, decoded, as in the
reference libraries; other versions in the list (e.g. `v1a` asymmetric) are ignored.
"""

from __future__ import annotations

import binascii

from data_plane.verify._common import from_b64, header, keyed, match, timestamp, within
from data_plane.verify.base import Answer, Inbound, Verifier, VerifyFailed
from providers.verify_spec import Standard

_PREFIX = "whsec_"
# (signature, id, timestamp) header names; Standard Webhooks' first, then Svix's.
_STANDARD = ("webhook-signature", "webhook-id", "webhook-timestamp")
_SVIX = ("svix-signature", "svix-id", "svix-timestamp")


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a `whsec_` secret; ValueError (without the secret) if it is not one."""
    text = secret[len(_PREFIX) :] if secret.startswith(_PREFIX) else secret
    try:
        key = binascii.a2b_base64(text, strict_mode=True)
    except ValueError:
        key = b""
    if not key:
        raise ValueError("standard: a secret is not base64 after its 'whsec_' prefix")
    return key


def build(spec: Standard) -> Verifier:
    keys = keyed((decode_secret(s) for s in spec.secret), "sha256")
    tolerance = spec.tolerance_s

    def verify(inbound: Inbound) -> Answer | None:
        headers = inbound.headers
        names = _STANDARD
        value = headers.get(_STANDARD[0])
        if value is None:
            names = _SVIX
            value = headers.get(_SVIX[0])
        if not value:
            raise VerifyFailed(f"missing header {_STANDARD[0]}")
        msg_id = header(headers, names[1], names[1])
        raw_ts = header(headers, names[2], names[2])
        within(timestamp(raw_ts, names[2]), inbound.now, tolerance)
        signatures = []
        for entry in value.split():
            version, _, b64 = entry.partition(",")
            if version == "v1":
                decoded = from_b64(b64)
                if decoded is not None:
                    signatures.append(decoded)
        if not signatures:
            raise VerifyFailed(f"malformed header {names[0]} (no v1 signature)")
        # errors="replace": an id UTF-8 cannot encode just fails to match, never crashes.
        signed = f"{msg_id}.{raw_ts.strip()}.".encode(errors="replace")
        if match(keys, (signed, inbound.body), signatures) < 0:
            raise VerifyFailed("signature mismatch")
        return None

    return verify

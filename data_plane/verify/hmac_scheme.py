"""The generic `hmac` scheme, for providers without a scheme of their own.

`spec.header` holds `spec.prefix` + the digest (`spec.algorithm`, `spec.encoding`) of the raw
body, or of `{timestamp}.{body}` when `spec.timestamp_header` names a header carrying Unix
seconds, which must then be within `spec.tolerance_s`.
"""

from __future__ import annotations

from data_plane.verify._common import (
    encode_secrets,
    from_b64,
    from_hex,
    header,
    keyed,
    match,
    timestamp,
    within,
)
from data_plane.verify.base import Answer, Inbound, Verifier, VerifyFailed
from providers.verify_spec import Hmac

_DECODERS = {"hex": from_hex, "base64": from_b64}


def build(spec: Hmac) -> Verifier:
    keys = keyed(encode_secrets(spec.secret), spec.algorithm)
    decode = _DECODERS[spec.encoding]
    name, display = spec.header.lower(), spec.header
    prefix, cut = spec.prefix, len(spec.prefix)
    tolerance = spec.tolerance_s

    def received(inbound: Inbound) -> bytes:
        value = header(inbound.headers, name, display).strip()
        decoded = decode(value[cut:]) if value.startswith(prefix) else None
        if decoded is None:
            raise VerifyFailed(f"malformed header {display}")
        return decoded

    if spec.timestamp_header is None:

        def verify(inbound: Inbound) -> Answer | None:
            if match(keys, (inbound.body,), (received(inbound),)) < 0:
                raise VerifyFailed("signature mismatch")
            return None

        return verify

    ts_name, ts_display = spec.timestamp_header.lower(), spec.timestamp_header

    def verify_timed(inbound: Inbound) -> Answer | None:
        raw_ts = header(inbound.headers, ts_name, ts_display).strip()
        within(timestamp(raw_ts, ts_display), inbound.now, tolerance)
        signed = (raw_ts.encode(), b".", inbound.body)
        if match(keys, signed, (received(inbound),)) < 0:
            raise VerifyFailed("signature mismatch")
        return None

    return verify_timed

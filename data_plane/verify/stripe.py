"""Stripe: `Stripe-Signature: t=<ts>,v1=<hex>[,v1=<hex>...]` over `{t}.{body}`.

The key is the whole `whsec_...` string as UTF-8 (Stripe does not decode it). Several `v1`
entries appear while Stripe rotates an endpoint's secret; any one matching is enough.
"""

from __future__ import annotations

from data_plane.verify._common import (
    encode_secrets,
    from_hex,
    header,
    keyed,
    match,
    timestamp,
    within,
)
from data_plane.verify.base import Answer, Inbound, Verifier, VerifyFailed
from providers.verify_spec import Stripe

_HEADER = "stripe-signature"
_DISPLAY = "Stripe-Signature"


def build(spec: Stripe) -> Verifier:
    keys = keyed(encode_secrets(spec.secret), "sha256")
    tolerance = spec.tolerance_s

    def verify(inbound: Inbound) -> Answer | None:
        ts: str | None = None
        signatures: list[bytes] = []
        for item in header(inbound.headers, _HEADER, _DISPLAY).split(","):
            name, _, value = item.strip().partition("=")
            if name == "t":
                ts = value
            elif name == "v1":
                # A malformed entry cannot match; others in the list still may.
                decoded = from_hex(value)
                if decoded is not None:
                    signatures.append(decoded)
        if ts is None:
            raise VerifyFailed(f"malformed header {_DISPLAY} (no timestamp)")
        within(timestamp(ts, _DISPLAY), inbound.now, tolerance)
        if not signatures:
            raise VerifyFailed(f"malformed header {_DISPLAY} (no v1 signature)")
        if match(keys, (ts.strip().encode(), b".", inbound.body), signatures) < 0:
            raise VerifyFailed("signature mismatch")
        return None

    return verify

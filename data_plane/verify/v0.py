"""The `v0` signature Slack and Zoom share: `v0=<hex HMAC-SHA256>` over `v0:{timestamp}:{body}`,
with the timestamp in its own header and checked against a tolerance."""

from __future__ import annotations

from collections.abc import Sequence

from data_plane.verify._common import Mac, from_hex, header, match, timestamp, within
from data_plane.verify.base import Inbound, VerifyFailed


def check(
    keys: Sequence[Mac],
    inbound: Inbound,
    tolerance: float,
    signature: tuple[str, str],
    timestamp_header: tuple[str, str],
) -> int:
    """Index of the key that signed the request; VerifyFailed otherwise.

    Headers are given as (lower-case name, name as the vendor writes it, for messages).
    """
    headers = inbound.headers
    raw_ts = header(headers, *timestamp_header)
    within(timestamp(raw_ts, timestamp_header[1]), inbound.now, tolerance)
    value = header(headers, *signature)
    received = from_hex(value[3:]) if value.startswith("v0=") else None
    if received is None:
        raise VerifyFailed(f"malformed header {signature[1]}")
    index = match(keys, (b"v0:", raw_ts.strip().encode(), b":", inbound.body), (received,))
    if index < 0:
        raise VerifyFailed("signature mismatch")
    return index

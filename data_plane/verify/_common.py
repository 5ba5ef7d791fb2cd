"""Small pieces the schemes share: header lookup, timestamps, digest decoding, HMAC matching.

Everything here is on the per-request path, so it avoids allocation it does not need: keys
are HMAC objects keyed once at build time (copying one skips re-hashing the key pads), and
received signatures are decoded to raw bytes and compared with the raw digest rather than
formatting our own digest as text.
"""

from __future__ import annotations

import binascii
import hmac
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from data_plane.verify.base import VerifyFailed

# More digits than any Unix time in seconds for millennia; also keeps int() away from the
# huge-string conversion limit.
_MAX_TS_DIGITS = 12


def encode_secrets(secrets: Iterable[str]) -> tuple[bytes, ...]:
    return tuple(s.encode() for s in secrets)


class Mac(Protocol):
    """A keyed HMAC: `hmac.HMAC`, or the OpenSSL object inside one."""

    def copy(self) -> Mac: ...
    def update(self, msg: bytes, /) -> None: ...
    def digest(self) -> bytes: ...
    def hexdigest(self) -> str: ...


def keyed(secrets: Iterable[bytes], digest: str) -> tuple[Mac, ...]:
    """One pre-keyed HMAC per secret; `match` copies them per request.

    The OpenSSL HMAC object an `hmac.HMAC` wraps, where it has one: copying and feeding it
    directly skips the wrapper's Python methods, a third of the check of a small body."""
    return tuple(_unwrapped(hmac.new(s, digestmod=digest)) for s in secrets)


def _unwrapped(mac: hmac.HMAC) -> Mac:
    inner: Mac | None = getattr(mac, "_hmac", None)
    return inner if inner is not None else mac


def header(headers: Mapping[str, str], name: str, display: str) -> str:
    """The value of header `name` (lower-case), or VerifyFailed naming it as `display`."""
    value = headers.get(name)
    if not value:
        raise VerifyFailed(f"missing header {display}")
    return value


def timestamp(value: str, display: str) -> int:
    """Parse Unix seconds strictly: int() alone would accept '1_000', ' +5' or non-ASCII digits."""
    value = value.strip()
    if not (0 < len(value) <= _MAX_TS_DIGITS and value.isascii() and value.isdigit()):
        raise VerifyFailed(f"malformed timestamp in {display}")
    return int(value)


def within(ts: int, now: float, tolerance: float) -> None:
    """Reject replays (too old) and clock games (too far ahead) alike."""
    age = now - ts
    if age > tolerance:
        raise VerifyFailed(f"timestamp outside tolerance ({int(age)} s old)")
    if -age > tolerance:
        raise VerifyFailed(f"timestamp outside tolerance ({int(-age)} s in the future)")


def from_hex(value: str) -> bytes | None:
    """Raw bytes of a hex digest, or None; unlike bytes.fromhex, no embedded whitespace."""
    try:
        return binascii.unhexlify(value)
    except ValueError:  # binascii.Error is one; non-ASCII text raises a plain ValueError
        return None


def from_b64(value: str) -> bytes | None:
    """Raw bytes of a standard base64 digest, or None; strict, so no junk is ignored."""
    try:
        return binascii.a2b_base64(value, strict_mode=True)
    except ValueError:
        return None


def match(keys: Sequence[Mac], parts: Sequence[bytes], received: Sequence[bytes]) -> int:
    """Index of the first key whose HMAC over `parts` equals one of `received`, else -1.

    Every key is tried before giving up, so rotating secrets all work; the index lets a scheme
    answer a challenge with the secret that actually signed.
    """
    for index, key in enumerate(keys):
        mac = key.copy()
        for part in parts:
            mac.update(part)
        digest = mac.digest()
        for candidate in received:
            if hmac.compare_digest(digest, candidate):
                return index
    return -1


def token_matches(secrets: Sequence[bytes], given: str) -> bool:
    """Constant-time comparison of a presented token with every accepted secret."""
    # errors="replace": a header with characters UTF-8 cannot encode simply fails to match.
    presented = given.encode("utf-8", "replace")
    found = False
    for secret in secrets:
        # No early exit: the time taken does not tell which secret matched, or whether one did.
        found |= hmac.compare_digest(presented, secret)
    return found

"""`ip_allow`: only callers from these networks get through.

The caller is the direct peer, unless the peer is one of `trusted_proxies`: then
X-Forwarded-For is walked from the right (each proxy appends the address it saw), skipping
trusted proxies, and the first address that is not one is the caller. Entries left of it
were written by the caller itself and prove nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

from data_plane.verify.base import VerifyFailed
from providers.verify_spec import Verify

IpCheck = Callable[[str, Mapping[str, str]], None]

_Address = IPv4Address | IPv6Address
_DENIED = "source address not allowed"
_CACHE_SIZE = 4096


def parse_address(text: str) -> _Address | None:
    """An address as written by a peer or a proxy: bare, `v4:port`, `[v6]` or `[v6]:port`."""
    text = text.strip()
    try:
        address = ip_address(text)
    except ValueError:
        if text.startswith("["):
            text = text[1 : text.find("]")]
        elif text.count(":") == 1:
            text = text.partition(":")[0]
        else:
            return None
        try:
            address = ip_address(text)
        except ValueError:
            return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; match them as IPv4.
        return address.ipv4_mapped
    return address


def _contains(networks: Iterable[str]) -> Callable[[_Address], bool]:
    nets = tuple(ip_network(n, strict=False) for n in networks)

    def contains(address: _Address) -> bool:
        # Comparing across IP versions is simply False, so one flat tuple is enough.
        return any(address in net for net in nets)

    return contains


def build(spec: Verify) -> IpCheck:
    if not spec.ip_allow:

        def allow_any(client_ip: str, headers: Mapping[str, str]) -> None:
            return None

        return allow_any

    allowed = _contains(spec.ip_allow)
    trusted = _contains(spec.trusted_proxies) if spec.trusted_proxies else None

    # The decision depends only on these two strings, and senders come from few addresses:
    # caching skips the (pure-Python, slow) address parsing on nearly every request. Bounded,
    # so a caller varying X-Forwarded-For only causes misses.
    @lru_cache(maxsize=_CACHE_SIZE)
    def decide(client_ip: str, forwarded: str | None) -> bool:
        client = parse_address(client_ip)
        if client is not None and trusted is not None and trusted(client) and forwarded:
            for hop in reversed(forwarded.split(",")):
                client = parse_address(hop)
                if client is None or not trusted(client):
                    break
        return client is not None and allowed(client)

    def check(client_ip: str, headers: Mapping[str, str]) -> None:
        if not decide(client_ip, headers.get("x-forwarded-for") if trusted else None):
            raise VerifyFailed(_DENIED)

    return check

"""SSRF guard: outbound HTTP must not reach the gateway's own network unless a Connection says
`allow_private: true`.

An address is refused when it is loopback, private, link-local, multicast, reserved,
unspecified, not globally routable (e.g. 100.64.0.0/10 carrier-grade NAT), a cloud metadata
address (169.254.169.254, fd00:ec2::254, 100.100.100.200), or an IPv6 address that carries a
refused IPv4 one (IPv4-mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``).
A host is refused when ANY of its addresses is: the resolver picks the order, not us.

Host names written as numbers are parsed the way ``inet_aton`` (and so ``getaddrinfo``) reads
them, so ``2130706433``, ``0x7f.1``, ``0177.0.0.1`` and ``127.1`` are all 127.0.0.1 here too.

DNS rebinding
-------------
Checking a name and then letting the HTTP client resolve it again is useless: a hostile DNS
server answers a public address to the check and 127.0.0.1 to the connect. So the check happens
*at connect time, on the addresses actually dialled*: `GuardedBackend` is an httpcore network
backend whose `connect_tcp` resolves the host once, checks every address, and dials those
checked addresses (never the name). Everything else stays as the URL says: the pool key, the
Host header, TLS SNI and certificate verification all use the host name, so HTTPS to a
name-based virtual host works and a TLS connection opened for one name is never reused for
another name that happens to share its address (which the "rewrite the URL to the IP and send
``sni_hostname``" approach gets wrong). Keep-alive connections were checked when they were
opened, so the per-request cost of the guard on a warm pool is zero.

Redirects are never followed and proxies from the environment are ignored (`Clients` builds
its HTTP clients that way): either would let a request leave for an unchecked address.

`check_destination` runs the same check for a URL up front (config validation, tools, tests).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_address
from urllib.parse import unquote

import httpcore
import httpx

from data_plane.errors import DeliveryError, SsrfBlocked

IPAddress = IPv4Address | IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""(host, port) -> the addresses the host resolves to, as text; raises OSError if none."""

DNS_TIMEOUT_S = 5.0

METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    {
        IPv4Address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        IPv6Address("fd00:ec2::254"),  # AWS IMDS over IPv6
        IPv4Address("100.100.100.200"),  # Alibaba Cloud
    }
)
_NAT64 = IPv6Network("64:ff9b::/96")
_DEFAULT_PORTS = {"http": 80, "https": 443}


# --- classification ------------------------------------------------------------------------


def refusal(address: IPAddress) -> str | None:
    """Why the guard refuses `address` ("loopback", ...), or None for a public address."""
    if address in METADATA_ADDRESSES:
        return "cloud metadata"
    if isinstance(address, IPv6Address):
        # An address that only carries an IPv4 one is judged by the IPv4 one.
        carried, kind = address.ipv4_mapped, "IPv4-mapped"
        if carried is None and address in _NAT64:
            carried, kind = IPv4Address(int(address) & 0xFFFFFFFF), "NAT64"
        if carried is not None:
            inner = refusal(carried)
            return f"{kind} {carried} ({inner})" if inner else None
        if address.sixtofour is not None:
            inner = refusal(address.sixtofour)
            if inner:
                return f"6to4 {address.sixtofour} ({inner})"
        if address.is_site_local:
            return "site-local"
    for flag, label in _FLAGS:
        if getattr(address, flag):
            return label
    if not address.is_global:
        return "not globally routable"
    return None


_FLAGS = (
    ("is_unspecified", "unspecified"),
    ("is_loopback", "loopback"),
    ("is_link_local", "link-local"),
    ("is_multicast", "multicast"),
    ("is_private", "private"),
    ("is_reserved", "reserved"),
)


def parse_literal(host: str) -> IPAddress | None:
    """The address `host` spells as a literal (any inet_aton form, bracketed or zoned IPv6)."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        try:
            # URLs percent-encode the zone separator: fe80::1%25eth0.
            return ip_address(unquote(text))
        except ValueError:
            return None
    return _inet_aton(text)


def _inet_aton(text: str) -> IPv4Address | None:
    # a, a.b, a.b.c, a.b.c.d; each part decimal, 0-prefixed octal or 0x-prefixed hex; the last
    # part fills the remaining bytes. The forms getaddrinfo also accepts.
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values: list[int] = []
    for part in parts:
        value = _aton_part(part)
        if value is None:
            return None
        values.append(value)
    last_bits = 8 * (5 - len(values))
    if any(v > 0xFF for v in values[:-1]) or values[-1] >= 1 << last_bits:
        return None
    number = 0
    for v in values[:-1]:
        number = number << 8 | v
    return IPv4Address(number << last_bits | values[-1])


def _aton_part(part: str) -> int | None:
    lower = part.lower()
    try:
        if lower.startswith("0x"):
            return int(lower[2:], 16) if lower[2:] and _is_hex(lower[2:]) else None
        if not lower.isascii() or not lower.isdigit():
            return None
        if len(lower) > 1 and lower.startswith("0"):
            return int(lower, 8)
        return int(lower)
    except ValueError:
        return None


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


# --- resolution ----------------------------------------------------------------------------


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses getaddrinfo gives for `host`, in its order, without repeats."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def resolve_allowed(
    host: str,
    port: int,
    *,
    resolver: Resolver | None = None,
    timeout_s: float | None = DNS_TIMEOUT_S,
) -> tuple[str, ...]:
    """The addresses to dial for `host`, every one checked.

    Raises SsrfBlocked if any address is refused, DeliveryError (retryable) if the name does not
    resolve in time.
    """
    literal = parse_literal(host)
    if literal is not None:
        _check(host, (literal,))
        return (_dialable(literal),)
    try:
        async with asyncio.timeout(timeout_s):
            answers = await (resolver or system_resolver)(host, port)
    except TimeoutError:
        raise DeliveryError("name resolution timed out", destination=host) from None
    except OSError as exc:
        raise DeliveryError(
            f"name resolution failed ({type(exc).__name__})", destination=host
        ) from None
    addresses: list[IPAddress] = []
    for answer in answers:
        try:
            addresses.append(ip_address(answer))
        except ValueError:
            raise SsrfBlocked("resolver answered a non-address", destination=host) from None
    if not addresses:
        raise DeliveryError("name resolved to no address", destination=host)
    _check(host, addresses)
    return tuple(_dialable(a) for a in addresses)


def _check(host: str, addresses: Iterable[IPAddress]) -> None:
    for address in addresses:
        why = refusal(address)
        if why is not None:
            shown = host if str(address) == host else f"{host} -> {address}"
            raise SsrfBlocked(f"{shown}: {why} address refused (SSRF guard)", destination=host)


def _dialable(address: IPAddress) -> str:
    # Dial an IPv4-mapped address as plain IPv4: an IPv6 socket may not exist for it.
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


async def check_destination(
    url: str,
    allow_private: bool,
    resolver: Resolver | None = None,
    *,
    timeout_s: float | None = DNS_TIMEOUT_S,
) -> tuple[str, ...]:
    """Refuse (SsrfBlocked) a URL whose host is or resolves to a refused address.

    Returns the checked addresses (empty when `allow_private` skips the check). The URL is
    parsed by httpx, as the HTTP client would, so the check and the connection cannot disagree
    about which host a crafted URL names.
    """
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise SsrfBlocked("URL is not valid", destination="url") from None
    host = parsed.raw_host.decode("ascii")
    if parsed.scheme not in _DEFAULT_PORTS or not host:
        raise SsrfBlocked("URL is not http(s) with a host", destination=host or "url")
    if allow_private:
        return ()
    port = parsed.port or _DEFAULT_PORTS[parsed.scheme]
    return await resolve_allowed(host, port, resolver=resolver, timeout_s=timeout_s)


# --- the connect-time guard ----------------------------------------------------------------


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that dials only checked addresses (see the module doc)."""

    def __init__(
        self,
        resolver: Resolver | None = None,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._resolver = resolver
        self._inner = inner if inner is not None else httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        # SsrfBlocked / DeliveryError pass through httpcore and httpx untouched.
        addresses = await resolve_allowed(
            host, port, resolver=self._resolver, timeout_s=timeout or DNS_TIMEOUT_S
        )
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # addresses is never empty
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not guarded destinations")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


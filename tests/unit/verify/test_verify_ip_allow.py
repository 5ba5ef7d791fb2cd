"""ip_allow with trusted proxies, alone and wrapped around a scheme by build_verifier."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from data_plane.verify import VerifyFailed
from data_plane.verify.base import Inbound, Verifier
from data_plane.verify.ip_allow import IpCheck, build, parse_address
from providers.verify_spec import NoVerify

MakeInbound = Callable[..., Inbound]
MakeVerifier = Callable[[dict[str, Any]], Verifier]

PROXIES = ("10.0.0.0/8", "2001:db8:ffff::/48")


def check(allow: tuple[str, ...], trusted: tuple[str, ...] = PROXIES) -> IpCheck:
    return build(NoVerify(scheme="none", ip_allow=allow, trusted_proxies=trusted))


def xff(value: str) -> dict[str, str]:
    return {"x-forwarded-for": value}


def test_direct_peer_allowed_and_denied() -> None:
    allowed = check(("192.0.2.0/24", "2001:db8:1::/64"), trusted=())
    allowed("192.0.2.55", {})
    allowed("2001:db8:1::7", {})
    for peer in ("198.51.100.1", "2001:db8:2::1"):
        with pytest.raises(VerifyFailed, match="source address not allowed"):
            allowed(peer, {})


def test_empty_allow_list_allows_anyone() -> None:
    check(())("198.51.100.1", xff("garbage"))


def test_xff_is_ignored_from_an_untrusted_peer() -> None:
    allowed = check(("192.0.2.0/24",))
    # A caller cannot talk its way in by writing the header itself.
    with pytest.raises(VerifyFailed):
        allowed("198.51.100.1", xff("192.0.2.9"))
    # ...nor lose access when it is the allowed address that forwards junk.
    allowed("192.0.2.9", xff("198.51.100.1"))


def test_xff_from_a_trusted_proxy_names_the_client() -> None:
    allowed = check(("192.0.2.0/24",))
    allowed("10.1.2.3", xff("192.0.2.9"))
    with pytest.raises(VerifyFailed):
        allowed("10.1.2.3", xff("198.51.100.1"))


def test_walks_from_the_right_skipping_trusted_proxies() -> None:
    allowed = check(("192.0.2.0/24",))
    # client -> proxy 10.9.9.9 -> proxy 10.1.2.3 (the peer); the left-most entry is spoofed.
    allowed("10.1.2.3", xff("198.51.100.66, 192.0.2.9, 10.9.9.9"))
    with pytest.raises(VerifyFailed):
        allowed("10.1.2.3", xff("192.0.2.9, 198.51.100.66, 10.9.9.9"))


def test_all_hops_trusted_means_the_left_most_is_the_client() -> None:
    allowed = check(("10.0.0.0/8",))
    allowed("10.1.2.3", xff("10.5.5.5, 10.9.9.9"))


def test_trusted_proxy_without_xff_is_itself_the_client() -> None:
    allowed = check(("192.0.2.0/24",))
    with pytest.raises(VerifyFailed):
        allowed("10.1.2.3", {})
    check(("10.0.0.0/8",))("10.1.2.3", {})


@pytest.mark.parametrize("forwarded", ["unknown", "not an ip, 10.9.9.9", "_hidden", ""])
def test_unparseable_hops_are_denied(forwarded: str) -> None:
    allowed = check(("0.0.0.0/0", "::/0"))
    if forwarded == "":
        allowed("10.1.2.3", xff(forwarded))  # empty header: the proxy itself is the client
        return
    with pytest.raises(VerifyFailed):
        allowed("10.1.2.3", xff(forwarded))


def test_ipv6_hops_and_ports() -> None:
    allowed = check(("192.0.2.0/24", "2001:db8:1::/64"))
    allowed("2001:db8:ffff::1", xff("[2001:db8:1::5]:4711"))
    allowed("10.0.0.1", xff("192.0.2.9:51234"))
    allowed("::ffff:10.0.0.1", xff("192.0.2.9"))  # dual-stack socket spelling of a v4 peer


@pytest.mark.parametrize("peer", ["", "testclient", "unix:/run/gw.sock", "999.1.1.1"])
def test_unparseable_peer_is_denied(peer: str) -> None:
    with pytest.raises(VerifyFailed, match="source address not allowed"):
        check(("0.0.0.0/0",), trusted=())(peer, {})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1", "192.0.2.1"),
        (" 192.0.2.1 ", "192.0.2.1"),
        ("192.0.2.1:80", "192.0.2.1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("nonsense", None),
    ],
)
def test_parse_address(text: str, expected: str | None) -> None:
    parsed = parse_address(text)
    assert (None if parsed is None else str(parsed)) == expected


def test_build_verifier_checks_the_address_before_the_scheme(
    verifier: MakeVerifier, inbound: MakeInbound
) -> None:
    spec = {
        "scheme": "bearer",
        "secret": "t0ken",
        "ip_allow": ["192.0.2.0/24"],
        "trusted_proxies": ["10.0.0.0/8"],
    }
    verify = verifier(spec)
    good = {"Authorization": "Bearer t0ken"}
    assert verify(inbound(headers=good, client_ip="192.0.2.1")) is None
    forwarded = {**good, "X-Forwarded-For": "192.0.2.1"}
    assert verify(inbound(headers=forwarded, client_ip="10.0.0.1")) is None
    with pytest.raises(VerifyFailed, match="source address not allowed"):
        verify(inbound(headers={}, client_ip="198.51.100.1"))
    with pytest.raises(VerifyFailed, match="token mismatch"):
        verify(inbound(headers={"Authorization": "Bearer nope"}, client_ip="192.0.2.1"))

"""The SSRF guard: address classification, odd literal forms, URLs, resolver answers (DNS
rebinding simulated with an injected resolver), and the connect-time guard inside httpx."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, ip_address

import httpcore
import pytest
from immutables import Map
from pydantic import TypeAdapter

from data_plane.clients import Clients
from data_plane.delivery import Delivery
from data_plane.errors import DeliveryError, SsrfBlocked
from data_plane.modules import http
from data_plane.ssrf import (
    GuardedBackend,
    check_destination,
    parse_literal,
    refusal,
    resolve_allowed,
)
from providers.resources import Connection, Webhook
from providers.snapshot import Endpoint
from providers.step_spec import HttpStep
from tests.docs import connection, webhook

PUBLIC_V4 = "93.184.216.34"


class FakeDns:
    """Answers from a table; each lookup pops the next answer when a host has several
    (a rebinding DNS server answers differently each time)."""

    def __init__(self, table: dict[str, list[Sequence[str]]]) -> None:
        self.table = table
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.lookups.append(host)
        answers = self.table.get(host)
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers.pop(0) if len(answers) > 1 else answers[0]


# --- classification ----------------------------------------------------------------------

REFUSED = {
    "127.0.0.1": "loopback",
    "127.255.255.254": "loopback",
    "10.1.2.3": "private",
    "172.16.5.4": "private",
    "172.31.255.255": "private",
    "192.168.1.1": "private",
    "169.254.1.1": "link-local",
    "169.254.169.254": "cloud metadata",
    "100.100.100.200": "cloud metadata",
    "100.64.0.1": "not globally routable",  # carrier-grade NAT
    "0.0.0.0": "unspecified",
    "224.0.0.1": "multicast",
    "239.255.255.250": "multicast",
    "255.255.255.255": "private",
    "240.0.0.1": "private",
    "198.18.0.1": "private",
    "192.0.2.1": "private",  # documentation
    "::1": "loopback",
    "::": "unspecified",
    "fe80::1": "link-local",
    "fc00::1": "private",
    "fd12:3456::1": "private",
    "fd00:ec2::254": "cloud metadata",
    "fec0::1": "site-local",
    "ff02::1": "multicast",
    "ff0e::1": "multicast",
    "2001:db8::1": "private",
    "::127.0.0.1": "reserved",  # IPv4-compatible (deprecated)
    "::ffff:127.0.0.1": "IPv4-mapped 127.0.0.1 (loopback)",
    "::ffff:10.0.0.1": "IPv4-mapped 10.0.0.1 (private)",
    "::ffff:169.254.169.254": "IPv4-mapped 169.254.169.254 (cloud metadata)",
    "64:ff9b::7f00:1": "NAT64 127.0.0.1 (loopback)",
    "64:ff9b::a9fe:a9fe": "NAT64 169.254.169.254 (cloud metadata)",
    "2002:7f00:1::1": "6to4 127.0.0.1 (loopback)",
    "2002:a00:1::1": "6to4 10.0.0.1 (private)",
}
ALLOWED = ["8.8.8.8", "1.1.1.1", PUBLIC_V4, "2606:4700:4700::1111", "2001:4860:4860::8888",
           "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]


@pytest.mark.parametrize(("address", "why"), sorted(REFUSED.items()))
def test_refused_addresses(address: str, why: str) -> None:
    assert refusal(ip_address(address)) == why


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses(address: str) -> None:
    assert refusal(ip_address(address)) is None


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),  # one 32-bit number
        ("0x7f000001", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),  # a.24bit
        ("0177.0.0.1", "127.0.0.1"),  # octal
        ("0177.0.0.0x1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),  # a.b.16bit
        ("0", "0.0.0.0"),
        ("0xA9.0xFE.0xA9.0xFE", "169.254.169.254"),
        ("[::1]", "::1"),
        ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1"),
        ("::ffff:7f00:1", "::ffff:127.0.0.1"),
        ("fe80::1%25eth0", "fe80::1%eth0"),
    ],
)
def test_literal_forms(host: str, address: str) -> None:
    assert parse_literal(host) == ip_address(address)


@pytest.mark.parametrize(
    "host", ["example.com", "1.2.3.4.5", "08.0.0.1", "0x", "256.1.1.1", "1.2.3.256", "",
             "0x1.0x2.0x3.0x4.", "١٢٧.0.0.1", "[::1", "::g"],
)
def test_not_literals(host: str) -> None:
    assert parse_literal(host) is None


# --- URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://2130706433/",
        "http://0x7f.1/",
        "http://127.1:8080/x",
        "http://[::1]:8080/x",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://0.0.0.0:9000/",
        "http://10.0.0.5/",
        "https://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://100.100.100.200/latest/meta-data/",
        "http://[fe80::1%25eth0]/",
        "http://0177.0.0.1/",  # httpx refuses to parse it: refused all the same
        "ftp://example.com/",
        "http:///no-host",
    ],
)
async def test_refused_urls_without_dns(url: str) -> None:
    dns = FakeDns({})
    with pytest.raises(SsrfBlocked) as caught:
        await check_destination(url, allow_private=False, resolver=dns)
    assert caught.value.retryable is False
    assert dns.lookups == []  # literals never reach the resolver


async def test_localhost_via_the_system_resolver() -> None:
    with pytest.raises(SsrfBlocked, match=r"localhost -> .*loopback"):
        await check_destination("http://localhost:8080/", allow_private=False)


async def test_public_name_is_allowed_and_its_addresses_returned() -> None:
    dns = FakeDns({"hooks.example.com": [[PUBLIC_V4, "2606:4700:4700::1111"]]})
    checked = await check_destination("https://hooks.example.com/in", False, dns)
    assert checked == (PUBLIC_V4, "2606:4700:4700::1111")


@pytest.mark.parametrize(
    "answer",
    [["10.0.0.7"], [PUBLIC_V4, "10.0.0.7"], ["::ffff:127.0.0.1"], ["169.254.169.254"],
     ["fd00:ec2::254"], ["0.0.0.0"]],
)
async def test_public_looking_name_resolving_inside_is_refused(answer: list[str]) -> None:
    dns = FakeDns({"innocent.example.com": [answer]})
    with pytest.raises(SsrfBlocked) as caught:
        await check_destination("https://innocent.example.com/secret-path?token=t0k", False, dns)
    message = str(caught.value)
    assert message.startswith("innocent.example.com: innocent.example.com -> ")
    assert "SSRF guard" in message
    # The path and query of a URL can be credentials: never in a message.
    assert "secret-path" not in message and "t0k" not in message


async def test_allow_private_skips_the_check() -> None:
    dns = FakeDns({})
    assert await check_destination("http://127.0.0.1:1/", True, dns) == ()
    assert await check_destination("http://internal.example/", True, dns) == ()
    assert dns.lookups == []


async def test_resolution_failure_is_retryable_not_a_block() -> None:
    with pytest.raises(DeliveryError) as caught:
        await check_destination("http://nx.example/", False, FakeDns({}))
    assert not isinstance(caught.value, SsrfBlocked)
    assert caught.value.retryable is True
    assert "gaierror" in str(caught.value)


async def test_resolution_timeout() -> None:
    async def stuck(host: str, port: int) -> list[str]:
        await asyncio.sleep(3600)
        return []

    start = time.perf_counter()
    with pytest.raises(DeliveryError, match="timed out") as caught:
        await resolve_allowed("slow.example", 80, resolver=stuck, timeout_s=0.1)
    assert time.perf_counter() - start < 1.0
    assert caught.value.retryable is True


async def test_resolver_garbage_is_refused() -> None:
    with pytest.raises(SsrfBlocked, match="non-address"):
        await resolve_allowed("odd.example", 80, resolver=FakeDns({"odd.example": [["nope"]]}))


# --- the connect-time guard --------------------------------------------------------------


class Stream(httpcore.AsyncNetworkStream):
    """A fake keep-alive socket answering 204 to each request; records what was sent."""

    def __init__(self, backend: RecordingBackend) -> None:
        self.backend = backend
        self.reply: list[bytes] = []

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.reply.pop(0) if self.reply else b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.backend.sent.append(buffer)
        if buffer.startswith(b"POST "):
            self.reply.append(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")

    async def aclose(self) -> None:
        pass

    async def start_tls(self, ssl_context: object, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        self.backend.sni.append(server_hostname)
        return self

    def get_extra_info(self, info: str) -> object:
        return None


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """Stands for the real network: records every dial, refuses those in `refuse`."""

    def __init__(self, refuse: Iterable[str] = ()) -> None:
        self.dials: list[tuple[str, int]] = []
        self.sent: list[bytes] = []
        self.sni: list[str | None] = []
        self.refuse = set(refuse)

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: object = None) -> httpcore.AsyncNetworkStream:
        self.dials.append((host, port))
        if host in self.refuse:
            raise httpcore.ConnectError("refused")
        return Stream(self)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def test_guard_dials_the_checked_address_not_the_name() -> None:
    net = RecordingBackend()
    guard = GuardedBackend(FakeDns({"hooks.example.com": [[PUBLIC_V4]]}), inner=net)
    await guard.connect_tcp("hooks.example.com", 443)
    assert net.dials == [(PUBLIC_V4, 443)]


async def test_guard_defeats_rebinding_between_connections() -> None:
    # First answer public, second answer loopback: the classic rebinding attack.
    dns = FakeDns({"rebind.example.com": [[PUBLIC_V4], ["127.0.0.1"]]})
    net = RecordingBackend()
    guard = GuardedBackend(dns, inner=net)
    await guard.connect_tcp("rebind.example.com", 80)
    with pytest.raises(SsrfBlocked):
        await guard.connect_tcp("rebind.example.com", 80)
    assert net.dials == [(PUBLIC_V4, 80)]  # loopback was never dialled


async def test_guard_tries_the_next_checked_address() -> None:
    net = RecordingBackend(refuse={PUBLIC_V4})
    dns = FakeDns({"multi.example.com": [[PUBLIC_V4, "8.8.8.8"]]})
    await GuardedBackend(dns, inner=net).connect_tcp("multi.example.com", 80)
    assert net.dials == [(PUBLIC_V4, 80), ("8.8.8.8", 80)]


async def test_guard_normalises_odd_literals_before_dialling() -> None:
    net = RecordingBackend()
    await GuardedBackend(FakeDns({}), inner=net).connect_tcp("0x8.0x8.0x8.0x8", 80)
    assert net.dials == [("8.8.8.8", 80)]
    with pytest.raises(SsrfBlocked):
        await GuardedBackend(FakeDns({}), inner=net).connect_tcp("0x7f.1", 80)
    assert len(net.dials) == 1


def _endpoint(url: str, **spec: object) -> Endpoint:
    hook = TypeAdapter(Webhook).validate_python(
        webhook("hook", secret="s3cret", connections=("api",))
    )
    conn = TypeAdapter(Connection).validate_python(
        connection("api", "acme", type="http", url=url, **spec)
    )
    return Endpoint(hook, None, Map({"api": conn}))


async def test_http_module_through_the_guard_keeps_host_and_sni() -> None:
    """End to end through httpx: the socket goes to the checked IP while the Host header,
    TLS SNI (and so certificate verification) keep the name."""
    net = RecordingBackend()
    dns = FakeDns({"hooks.example.com": [[PUBLIC_V4]]})
    ep = _endpoint("https://hooks.example.com/in")
    step = ep.webhook.spec.chain.steps[1]
    assert isinstance(step, HttpStep)
    async with Clients(ssrf_backend=GuardedBackend(dns, inner=net)) as clients:
        await http.run(step, ep, Delivery("acme", "hook", b"{}", {}, revision=1), clients)
        # A second delivery reuses the checked keep-alive connection: no new lookup.
        await http.run(step, ep, Delivery("acme", "hook", b"{}", {}, revision=1), clients)
    assert net.dials == [(PUBLIC_V4, 443)]
    assert net.sni == ["hooks.example.com"]
    assert dns.lookups == ["hooks.example.com"]
    request = b"".join(net.sent)
    assert request.startswith(b"POST /in HTTP/1.1\r\n")
    assert b"\r\nHost: hooks.example.com\r\n" in request


async def test_http_module_refuses_a_name_resolving_inside() -> None:
    net = RecordingBackend()
    dns = FakeDns({"hooks.example.com": [["10.0.0.9"]]})
    ep = _endpoint("https://hooks.example.com/T000/B000/secret")
    step = ep.webhook.spec.chain.steps[1]
    assert isinstance(step, HttpStep)
    async with Clients(ssrf_backend=GuardedBackend(dns, inner=net)) as clients:
        with pytest.raises(SsrfBlocked) as caught:
            await http.run(step, ep, Delivery("acme", "hook", b"{}", {}, revision=1), clients)
    assert net.dials == []
    assert caught.value.destination == "http:acme/api"
    assert caught.value.retryable is False
    assert "secret" not in str(caught.value)


def test_metadata_addresses_are_refused_even_if_python_thinks_them_fine() -> None:
    # 100.100.100.200 is neither private nor reserved for `ipaddress`: the list catches it.
    address = IPv4Address("100.100.100.200")
    assert not address.is_private
    assert refusal(address) == "cloud metadata"

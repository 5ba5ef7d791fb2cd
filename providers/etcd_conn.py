"""A connection to an etcd cluster with failover across its endpoints.

aetcd talks to one endpoint; a cluster is several. `EtcdConnection` keeps one client to the
current endpoint and moves to the next one when a call fails for a connection reason, so losing
one member of three changes nothing for the caller. Library errors are translated here, where
they enter our code.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

import aetcd
import aetcd.exceptions
import grpc
from aetcd import rpc
from pydantic import Field
from pydantic.dataclasses import dataclass

from providers.backoff import backoff
from providers.errors import RevisionCompacted, StoreUnavailable
from providers.store_keys import normalize_prefix
from providers.url_settings import (
    SETTINGS_CONFIG,
    NonNegativeSeconds,
    PositiveSeconds,
    query_options,
    validate,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# Keepalive pings find a dead member within seconds instead of waiting on TCP timeouts. etcd
# answers GOAWAY ENHANCE_YOUR_CALM "too_many_pings" to a client pinging more often than its
# --grpc-keepalive-min-time (default 5 s) or pinging with no call open (its policy does not
# permit that): ping every 10 s, only while a call (a watch) is open.
GRPC_OPTIONS = {
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 3_000,
    "grpc.keepalive_permit_without_calls": 0,
    "grpc.http2.max_pings_without_data": 0,
    "grpc.max_receive_message_length": 256 * 1024 * 1024,
    "grpc.max_send_message_length": 64 * 1024 * 1024,
}
_CONNECTION_ERRORS = (
    aetcd.exceptions.ConnectionFailedError,
    aetcd.exceptions.ConnectionTimeoutError,
    asyncio.TimeoutError,
    OSError,
)
# gRPC codes that mean "this member cannot answer now": try the next one.
_RETRY_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
})  # fmt: skip


# Where `EtcdSettings.from_url` reads each field.
_SOURCES = {"endpoints": "etcd URL host list", "prefix": "etcd URL path",
            "timeout_s": "?timeout", "watchdog_s": "?watchdog (or WH_WATCHDOG_S)"}


@dataclass(frozen=True, config=SETTINGS_CONFIG)
class EtcdSettings:
    endpoints: tuple[tuple[Annotated[str, Field(min_length=1)],
                           Annotated[int, Field(ge=1, le=65535)]], ...] = Field(min_length=1)
    prefix: str = "/whplane/"
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    timeout_s: PositiveSeconds = 5.0
    # How often a watcher checks that it is not behind the store without having heard of it
    # (a stuck watch): `?watchdog=S` in the URL or WH_WATCHDOG_S; 0 turns the check off.
    watchdog_s: NonNegativeSeconds = 30.0

    @classmethod
    def from_url(cls, url: str, env: Mapping[str, str] | None = None) -> EtcdSettings:
        """`etcd://HOST:PORT[,HOST:PORT...]/PREFIX[?timeout=S&watchdog=S]`; credentials from
        the environment.

        The password is read from `WH_ETCD_PASSWORD` (never from the URL, which ends up in
        process listings and logs).
        """
        env = env or {}
        parts = urlsplit(url)
        if parts.scheme != "etcd":
            raise ValueError(f"not an etcd URL (etcd://HOST:PORT[,HOST:PORT...]/PREFIX): {url!r}")
        if "@" in parts.netloc:
            raise ValueError("put etcd credentials in WH_ETCD_USERNAME / WH_ETCD_PASSWORD, "
                             "not in the URL")
        endpoints: list[tuple[str, int]] = []
        for hostport in filter(None, parts.netloc.split(",")):
            host, _, port = hostport.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"etcd endpoint {hostport!r} is not HOST:PORT")
            endpoints.append((host.strip("[]"), int(port)))
        if not endpoints:
            raise ValueError(f"etcd URL names no endpoint: {url!r}")
        options = query_options(parts.query, ("timeout", "watchdog"), "etcd URL")
        values: dict[str, Any] = {
            "endpoints": tuple(endpoints),
            "prefix": normalize_prefix(parts.path or "/whplane/"),
            "username": env.get("WH_ETCD_USERNAME") or None,
            "password": env.get("WH_ETCD_PASSWORD") or None,
        }
        if "timeout" in options:
            values["timeout_s"] = options["timeout"]
        watchdog = options.get("watchdog") or env.get("WH_WATCHDOG_S")
        if watchdog:
            values["watchdog_s"] = watchdog
        return validate(cls, values, _SOURCES)

    @property
    def url(self) -> str:
        hosts = ",".join(f"{h}:{p}" for h, p in self.endpoints)
        return f"etcd://{hosts}{self.prefix}"


class EtcdConnection:
    def __init__(self, settings: EtcdSettings) -> None:
        self.settings = settings
        self._index = random.randrange(len(settings.endpoints))
        self._client: aetcd.Client | None = None
        self._lock = asyncio.Lock()

    @property
    def endpoint(self) -> str:
        host, port = self.settings.endpoints[self._index]
        return f"{host}:{port}"

    async def client(self) -> aetcd.Client:
        async with self._lock:
            if self._client is None:
                host, port = self.settings.endpoints[self._index]
                client = aetcd.Client(
                    host=host,
                    port=port,
                    username=self.settings.username,
                    password=self.settings.password,
                    timeout=self.settings.timeout_s,
                    options=GRPC_OPTIONS,
                )
                try:
                    await asyncio.wait_for(client.connect(), self.settings.timeout_s)
                except BaseException:
                    await _close_quietly(client)
                    raise
                self._client = client
            return self._client

    async def failover(self) -> None:
        """Drop the current client and move to the next endpoint."""
        async with self._lock:
            old, self._client = self._client, None
            self._index = (self._index + 1) % len(self.settings.endpoints)
        if old is not None:
            await _close_quietly(old)

    async def call(self, fn: Callable[[aetcd.Client], Awaitable[T]],
                   paged: bool = False) -> T:
        """Run `fn` against the cluster, trying each endpoint once on connection errors.

        `fn` gets twice the settings' timeout, unless it is `paged`: a read of many pages, each
        with its own deadline (a million resources take longer than any one call should), and
        the caller bounds the whole."""
        last: BaseException | None = None
        # Every endpoint once, plus a couple of short retries: a member that just came back
        # refuses the first connection attempts for a moment.
        for attempt in range(len(self.settings.endpoints) + 2):
            if attempt >= len(self.settings.endpoints):
                await asyncio.sleep(backoff(attempt - len(self.settings.endpoints), 0.2, 1.0))
            try:
                client = await self.client()
                if paged:
                    return await fn(client)
                return await asyncio.wait_for(fn(client), self.settings.timeout_s * 2)
            except aetcd.exceptions.RevisionCompactedError as exc:
                raise RevisionCompacted(exc.compacted_revision) from exc
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _RETRY_CODES:
                    raise  # etcd answered: a refusal, not a connection problem
                last = exc
                log.debug("etcd %s failed: %s", self.endpoint, describe(exc))
                await self.failover()
            except _CONNECTION_ERRORS as exc:
                last = exc
                log.debug("etcd %s failed: %s", self.endpoint, describe(exc))
                await self.failover()
        raise StoreUnavailable(f"etcd unreachable at {self.settings.url}: {describe(last)}")

    async def close(self) -> None:
        async with self._lock:
            old, self._client = self._client, None
        if old is not None:
            await _close_quietly(old)


def prefix_range_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with `prefix`."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


async def range_prefix(
    client: aetcd.Client, prefix: bytes, timeout_s: float, page: int = 20_000
) -> tuple[Any, list[Any]]:
    """(header of the first page, every key-value under `prefix`), all at one revision."""
    return await range_keys(client, prefix, prefix_range_end(prefix), timeout_s, page)


async def range_keys(
    client: aetcd.Client, start: bytes, end: bytes, timeout_s: float, page: int = 20_000,
    revision: int = 0,
) -> tuple[Any, list[Any]]:
    """(header of the first page, every key-value in [start, end)), all at one revision.

    Paged, so a large range stays within gRPC message limits; pages after the first are
    read at the first page's revision, so the result is one consistent view.
    """
    header: Any = None
    kvs: list[Any] = []
    async for resp in range_pages(client, start, end, timeout_s, page, revision):
        if header is None:
            header = resp.header
        kvs.extend(resp.kvs)
    return header, kvs


async def range_pages(
    client: aetcd.Client, start: bytes, end: bytes, timeout_s: float, page: int = 20_000,
    revision: int = 0, page_bytes: int = 0,
) -> AsyncIterator[Any]:
    """The Range responses covering [start, end), one page each, all at the revision of the
    first: a reader done with a page drops it before the next arrives.

    The next page is asked for as soon as a page arrives, so the store reads it while the
    caller works on this one. With `page_bytes`, pages after the first hold about that many
    bytes: etcd counts every key left in the range to answer each page, so a million keys
    in pages of 20,000 cost it sixty counts of the whole range (14 s here, 5 s in pages of
    200,000). A page over the client's receive limit is asked for again, smaller.
    """

    def call(key: bytes, limit: int, at: int) -> Any:
        req = rpc.RangeRequest(key=key, range_end=end, limit=limit, revision=at)
        return client.kvstub.Range(req, timeout=timeout_s, metadata=client.metadata)

    async def fetch(first: Any, key: bytes, limit: int, at: int) -> Any:
        while True:
            try:
                return await first
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or limit <= 1:
                    raise
                limit = max(1, limit // 8)
                first = call(key, limit, at)

    resp = await fetch(call(start, page, revision), start, page, revision)
    at = resp.header.revision
    per_key = 0  # bytes per key, from the first page (measuring each page costs 10 ms at 40k)
    while True:
        nxt: asyncio.Future[Any] | None = None
        if resp.more and resp.kvs:
            page = len(resp.kvs)
            if page_bytes:
                per_key = per_key or max(1, resp.ByteSize() // page)
                page = max(1000, min(MAX_PAGE, page_bytes // per_key, page * PAGE_GROWTH))
            key = resp.kvs[-1].key + b"\0"
            # Made now, the call goes out at the next turn of the event loop, taken here:
            # the store answers it while the caller works on this page.
            nxt = asyncio.ensure_future(fetch(call(key, page, at), key, page, at))
            await asyncio.sleep(0)
        try:
            yield resp
        except BaseException:
            if nxt is not None:
                nxt.cancel()
            raise
        if nxt is None:
            return
        resp = None
        resp = await nxt


# Keys per page at most, however small: the answer must stay under the client's receive limit
# (GRPC_OPTIONS) with room to spare.
MAX_PAGE = 500_000
# Each page of a full read at most this many times the one before: the store answers the next
# page while the caller works on this one, so a caller that starts on a small page while the
# store reads all the rest would wait for it (0.4 s of a 100k read); doubling keeps both busy,
# in a handful of pages (each of which costs the store a count of the keys left).
PAGE_GROWTH = 2
# Bytes per page of a full read: a few pages for a million resources, far under that limit.
FULL_READ_PAGE_BYTES = 64 * 1024 * 1024


def describe(exc: BaseException | None) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    if exc is None:
        return "unknown error"
    return str(exc) or type(exc).__name__


async def _close_quietly(client: aetcd.Client) -> None:
    try:
        await asyncio.wait_for(client.close(), 2.0)
    except Exception as exc:  # closing a broken channel may fail in many ways; nothing to do
        log.debug("closing etcd client: %s", describe(exc))

"""Outbound clients shared by every delivery, owned by the gateway's (or worker's) lifespan.

    async with Clients() as clients:          # or: clients = Clients(); ...; await clients.aclose()
        await run_chain(endpoint, delivery, clients)

HTTP: `data_plane.http_pool.HttpPool`, a client of its own per request in flight (`http_slot`):
at most `max_connections` requests to a Connection at once (its own `max_connections`) and in
all, so one slow destination cannot take the whole process's share. Guarded clients dial
through `ssrf.GuardedBackend`; none follows redirects or honours proxy settings from the
environment.

Redis: one `redis.asyncio.Redis` per (URL, credentials, timeout), at most `max_redis_clients`,
least recently used evicted. An evicted client may still be serving a step, so it is closed
after a grace period rather than under that step's feet.

Every other destination (rabbitmq, postgres, nats, ...): one client per Connection and
module, `pooled()`, created lazily on the first delivery, replaced (the old one closed after a
grace period) when the Connection's resolved spec changes, at most `max_pooled` kept (least
recently used closed), all closed by `aclose()`. Before a pooled client is created, every host
its URL names is resolved and checked by the SSRF guard unless the Connection has
`allow_private: true`, and the client dials the checked address (`Target.host`), never the name
again: a DNS answer that changes later cannot move it to a refused address.

Also here, because every module needs them and they are about reaching destinations: the
lookup of a step's Connection (`connection`, `connection_spec`), one circuit breaker per
Connection (`circuits`), the per-module delivery metrics (`metrics`) and the mapping of
redis-py errors onto `DeliveryError` (`redis_failure`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from data_plane.circuit import Circuits
from data_plane.errors import DeliveryError, SsrfBlocked, destination_of
from data_plane.http_pool import HttpPool
from data_plane.module_metrics import ModuleMetrics
from data_plane.redis_batch import StreamAppender
from data_plane.ssrf import GuardedBackend, Resolver, resolve_allowed
from providers.resources import GLOBAL, HttpConnectionSpec, RedisConnectionSpec
from providers.snapshot import Endpoint

if TYPE_CHECKING:
    import httpx

    from data_plane.relay.store import RelayStore

log = logging.getLogger(__name__)

_S = TypeVar("_S", HttpConnectionSpec, RedisConnectionSpec)
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Conn:
    """A step's Connection as a module sees it."""

    key: str  # "namespace/name", or "name" for a global one: pools, circuits, metric labels
    spec: Any  # the resolved Connection spec (references replaced by their values)
    destination: str  # the step's destination label for errors ("postgres:acme/db")


@dataclass(frozen=True, slots=True)
class Target:
    """Where a pooled client dials: `host` is the checked address (the name itself with
    `allow_private`), `name` the host as the URL writes it (for TLS server names)."""

    host: str
    port: int
    name: str


@dataclass(slots=True)
class _Pooled:
    spec: Any
    opening: asyncio.Task[Any]
    close: Callable[[Any], Awaitable[None]]
    grace_s: float


class Clients:
    """The outbound clients of one process. `max_connections` caps the HTTP requests in flight
    and the sockets they keep open, `max_keepalive_connections` the idle ones kept for reuse,
    `max_destinations` the destinations whose slots are kept, `redis_pool_size` the sockets of
    each Redis client; `ssrf_backend` replaces the guard (a custom resolver, tests)."""

    def __init__(
        self,
        *,
        max_connections: int = 512,
        max_keepalive_connections: int = 128,
        keepalive_expiry_s: float = 30.0,
        max_destinations: int = 4096,
        max_redis_clients: int = 256,
        redis_pool_size: int = 64,
        max_pooled: int = 1024,
        ssrf_backend: GuardedBackend | None = None,
        resolver: Resolver | None = None,
        circuits: Circuits | None = None,
    ) -> None:
        self._http = HttpPool(max_connections=max_connections,
                              max_idle=max_keepalive_connections,
                              idle_expiry_s=keepalive_expiry_s,
                              max_destinations=max_destinations, guard=ssrf_backend)
        self._resolver = resolver  # of the non-HTTP modules' guard; None: the system's
        # The gateway's own relay buffers (data_plane/relay): `relay` steps write there, not
        # to a Connection; the gateway sets it when it has Redis.
        self.relay_store: RelayStore | None = None
        self._redis: OrderedDict[tuple[str, str | None, str | None, float], aioredis.Redis] = (
            OrderedDict()
        )
        self._appenders: dict[tuple[str, str | None, str | None, float], StreamAppender] = {}
        self._max_redis = max_redis_clients
        self._redis_pool_size = redis_pool_size
        self._retiring: set[asyncio.Task[None]] = set()
        self._file_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._pooled: OrderedDict[tuple[str, str], _Pooled] = OrderedDict()
        self._max_pooled = max_pooled
        self.circuits = circuits if circuits is not None else Circuits()
        self.metrics = ModuleMetrics(self.circuits)
        self._closed = False

    # -- HTTP ------------------------------------------------------------------------------

    def http_slot(self, destination: str, max_connections: int, *, verify_tls: bool,
                  allow_private: bool) -> contextlib.AbstractAsyncContextManager[httpx.AsyncClient]:
        """A client for one request to `destination`, at most `max_connections` at once
        (data_plane/http_pool.py). SSRF-guarded unless `allow_private`."""
        self._check_open()
        return self._http.slot(destination, max_connections, verify_tls=verify_tls,
                               allow_private=allow_private)

    # -- Redis -----------------------------------------------------------------------------

    def redis(self, spec: RedisConnectionSpec) -> aioredis.Redis:
        """The shared client for this Redis URL and credentials (connects lazily)."""
        key = (spec.url, spec.username, spec.password, spec.timeout_s)
        client = self._redis.get(key)
        if client is not None:
            self._redis.move_to_end(key)
            return client
        self._check_open()
        credentials = {
            k: v for k, v in (("username", spec.username), ("password", spec.password)) if v
        }
        pool = aioredis.BlockingConnectionPool.from_url(
            spec.url,
            max_connections=self._redis_pool_size,
            timeout=spec.timeout_s,  # waiting for a free pooled connection
            socket_timeout=spec.timeout_s,
            socket_connect_timeout=spec.timeout_s,
            # One immediate retry revives a pooled connection the server dropped; anything
            # slower is the delivery retry policy's job, not the client's.
            retry=Retry(NoBackoff(), 1),
            **credentials,
        )
        client = self._redis[key] = aioredis.Redis.from_pool(pool)
        if len(self._redis) > self._max_redis:
            evicted_key, evicted = self._redis.popitem(last=False)
            appender = self._appenders.pop(evicted_key, None)
            # Long enough for a command it already started: pool wait + connect + reply.
            self._retire(evicted, grace_s=3 * evicted_key[3], appender=appender)
        return client

    def stream_appender(self, spec: RedisConnectionSpec) -> StreamAppender:
        """Stream appends to the shared client for `spec`, group-committed (redis_batch.py)."""
        client = self.redis(spec)
        key = (spec.url, spec.username, spec.password, spec.timeout_s)
        appender = self._appenders.get(key)
        if appender is None or appender.client is not client:
            appender = self._appenders[key] = StreamAppender(client, spec.timeout_s)
        return appender

    def _retire(self, client: aioredis.Redis, grace_s: float,
                appender: StreamAppender | None = None) -> None:
        self._later(_close_later(client, grace_s, appender))

    def _later(self, closing: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(closing)
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    # -- pooled clients of the other modules -----------------------------------------------

    async def pooled(
        self,
        kind: str,
        conn: Conn,
        factory: Callable[[tuple[Target, ...]], Awaitable[_T]],
        close: Callable[[_T], Awaitable[None]],
        *,
        default_port: int,
        url: str | None = None,
    ) -> _T:
        """The client of `kind` (a module name) for `conn`, created by `factory` on first use.

        `factory` gets the checked targets of the hosts in `url` (default: the spec's `url`)
        and must bound its own I/O; it runs at most once at a time per Connection, within the
        spec's `timeout_s`, shielded from a caller's cancellation (other deliveries wait for
        the same client). `close` closes a client: when the Connection changes, on eviction
        and on `aclose()`. A failed creation is not kept: the next delivery tries again.
        """
        key = (kind, conn.key)
        entry = self._pooled.get(key)
        if entry is not None and (entry.spec is conn.spec or entry.spec == conn.spec):
            self._pooled.move_to_end(key)
        else:
            self._check_open()
            if entry is not None:  # the Connection changed: new client, old one retired
                self._retire_pooled(entry)
            opening = asyncio.get_running_loop().create_task(
                self._open(conn, factory, default_port, url), name=f"open {kind} {conn.key}"
            )
            grace_s = 3 * float(getattr(conn.spec, "timeout_s", 10))
            entry = self._pooled[key] = _Pooled(
                conn.spec, opening, cast(Callable[[Any], Awaitable[None]], close), grace_s
            )
            opening.add_done_callback(partial(self._opened, key))
            if len(self._pooled) > self._max_pooled:
                _, evicted = self._pooled.popitem(last=False)
                self._retire_pooled(evicted)
        return cast(_T, await asyncio.shield(entry.opening))

    def retain(self, live: Callable[[str], bool]) -> None:
        """Retire the pooled clients of Connections that are gone (`live(key)` is False for
        them), after their grace period: called with each new snapshot, so a deleted
        Connection's client does not keep its sockets open until evicted."""
        for key in [key for key in self._pooled if not live(key[1])]:
            self._retire_pooled(self._pooled.pop(key))

    def discard(self, kind: str, conn: Conn) -> None:
        """Drop the pooled client of `kind` for `conn` (a module found it broken for good):
        the next delivery creates a new one."""
        entry = self._pooled.pop((kind, conn.key), None)
        if entry is not None:
            self._retire_pooled(entry)

    async def _open(
        self,
        conn: Conn,
        factory: Callable[[tuple[Target, ...]], Awaitable[_T]],
        default_port: int,
        url: str | None,
    ) -> _T:
        spec = conn.spec
        async with asyncio.timeout(float(spec.timeout_s)):
            targets = await self.targets(
                url or spec.url, default_port, allow_private=spec.allow_private,
                destination=conn.destination,
            )  # fmt: skip
            return await factory(targets)

    def _opened(self, key: tuple[str, str], task: asyncio.Task[Any]) -> None:
        entry = self._pooled.get(key)
        if entry is not None and entry.opening is task and (
            task.cancelled() or task.exception() is not None
        ):
            del self._pooled[key]

    def _retire_pooled(self, entry: _Pooled) -> None:
        self._later(_close_pooled_later(entry, entry.grace_s))

    async def targets(
        self, url: str, default_port: int, *, allow_private: bool, destination: str
    ) -> tuple[Target, ...]:
        """Every host of `url` (`scheme://[user@]host[:port][,host[:port]...]/...`), resolved
        and checked by the SSRF guard unless `allow_private`."""
        hosts = url_hosts(url, default_port)
        if not hosts:
            raise DeliveryError("the connection's URL names no host", destination=destination,
                                retryable=False)
        if allow_private:
            return tuple(Target(host, port, host) for host, port in hosts)
        out = []
        for host, port in hosts:
            try:
                addresses = await resolve_allowed(host, port, resolver=self._resolver)
            except SsrfBlocked as exc:
                raise SsrfBlocked(exc.reason, destination=destination) from None
            except DeliveryError as exc:
                raise DeliveryError(exc.reason, destination=destination) from None
            out.append(Target(addresses[0], port, host))
        return tuple(out)

    # -- files -----------------------------------------------------------------------------

    def file_lock(self, path: str) -> asyncio.Lock:
        """The lock serialising appends to `path`; lives as long as someone holds it."""
        lock = self._file_locks.get(path)
        if lock is None:
            lock = self._file_locks[path] = asyncio.Lock()
        return lock

    # -- lifespan --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("Clients is closed")

    async def aclose(self) -> None:
        """Close every client. Idempotent; the object cannot be used afterwards."""
        self._closed = True
        rds, self._redis = list(self._redis.values()), OrderedDict()
        appenders, self._appenders = list(self._appenders.values()), {}
        pooled, self._pooled = list(self._pooled.values()), OrderedDict()
        retiring, self._retiring = list(self._retiring), set()
        for task in retiring:
            task.cancel()  # _close_later closes its client right away when cancelled
        await asyncio.gather(*(b.aclose() for b in appenders), return_exceptions=True)
        results = await asyncio.gather(
            self._http.aclose(),
            *(c.aclose() for c in rds),
            *(_close_pooled_later(p, 0) for p in pooled),
            *retiring,
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, Exception):
                log.warning("closing an outbound client failed: %s", type(result).__name__)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def _close_later(client: aioredis.Redis, grace_s: float,
                       appender: StreamAppender | None = None) -> None:
    try:
        await asyncio.sleep(grace_s)
    finally:
        with contextlib.suppress(Exception):
            if appender is not None:
                await appender.aclose()
            await client.aclose()


async def _close_pooled_later(entry: _Pooled, grace_s: float) -> None:
    """Close a pooled client once deliveries that already hold it had time to finish; one
    still being created is cancelled (or closed once created, if it was past the point)."""
    try:
        if grace_s > 0:
            await asyncio.sleep(grace_s)
    finally:
        if not entry.opening.done():
            entry.opening.cancel()
        with contextlib.suppress(BaseException):
            client = await entry.opening
            async with asyncio.timeout(5):
                await entry.close(client)


# `scheme://[userinfo@]hostlist[/...]`: hosts are separated by ',' (kafka, nats clusters).
_AUTHORITY = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#@]*@)?([^/?#]*)")


def url_hosts(url: str, default_port: int) -> list[tuple[str, int]]:
    """(host, port) of every host a URL's authority names, IPv6 literals unbracketed."""
    match = _AUTHORITY.match(url)
    if match is None:
        return []
    out = []
    for part in match.group(1).split(","):
        part = part.strip()
        if not part:
            continue
        if part.startswith("["):
            host, _, rest = part[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port = part.partition(":")
        if not host:
            continue
        if port and not port.isdigit():
            raise DeliveryError("the connection's URL has an invalid port", destination=host,
                                retryable=False)
        out.append((host, int(port) if port else default_port))
    return out


# --- shared by the modules ---------------------------------------------------------------


def connection(step: Any, endpoint: Endpoint, spec_type: type[_T]) -> Conn:
    """The Connection `step` names, as a `Conn`; a missing one or one of another type than
    the module needs is a config problem (not retryable)."""
    destination = destination_of(step, endpoint.connections)
    conn = endpoint.connections.get(step.connection)
    if conn is None:
        raise DeliveryError(f"connection {step.connection!r} is not in the config",
                            destination=destination, retryable=False)
    if not isinstance(conn.spec, spec_type):
        raise DeliveryError(
            f"connection {step.connection!r} is of type {conn.spec.type!r}, "
            f"which the {step.module} module cannot use",
            destination=destination, retryable=False,
        )  # fmt: skip
    return Conn(connection_key(conn), conn.spec, destination)


def connection_key(conn: Any) -> str:
    """A Connection's identity: "namespace/name", or "name" for a global one."""
    namespace = conn.metadata.namespace
    if namespace is None or namespace == GLOBAL:
        return str(conn.metadata.name)
    return f"{namespace}/{conn.metadata.name}"


def connection_spec(step: Any, endpoint: Endpoint, spec_type: type[_S]) -> tuple[_S, str]:
    """The spec of the Connection `step` names, and the step's destination label."""
    conn = connection(step, endpoint, spec_type)
    return conn.spec, conn.destination


# Redis answers with these when it cannot serve right now but will later.
_TRANSIENT_REPLIES = ("OOM", "LOADING", "BUSY", "READONLY", "MASTERDOWN", "TRYAGAIN",
                      "CLUSTERDOWN", "NOREPLICAS")


REDIS_ERRORS = (redis_errors.RedisError, OSError)
"""What a Redis command can fail with; OSError covers socket errors redis-py lets through."""


def redis_failure(exc: Exception, destination: str) -> DeliveryError:
    """The DeliveryError for a failed Redis command. Redis replies carry no secrets, but are
    cut short anyway: they can quote the command."""
    if isinstance(exc, redis_errors.AuthenticationError | redis_errors.AuthorizationError):
        return DeliveryError(
            f"Redis refused the credentials ({type(exc).__name__})",
            destination=destination,
            retryable=False,
        )
    if isinstance(exc, redis_errors.TimeoutError | redis_errors.ConnectionError | OSError):
        return DeliveryError(f"Redis {type(exc).__name__}", destination=destination)
    if isinstance(exc, redis_errors.ResponseError):
        reply = str(exc).split("\n", 1)[0][:120]
        return DeliveryError(
            f"Redis replied: {reply}",
            destination=destination,
            retryable=reply.startswith(_TRANSIENT_REPLIES),
        )
    return DeliveryError(f"Redis {type(exc).__name__}", destination=destination)

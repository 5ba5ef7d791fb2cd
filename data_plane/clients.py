"""Outbound clients shared by every delivery, owned by the gateway's (or worker's) lifespan.

    async with Clients() as clients:          # or: clients = Clients(); ...; await clients.aclose()
        await run_chain(endpoint, delivery, clients)

HTTP: one pooled `httpx.AsyncClient` per (verify_tls, SSRF-guarded) pair, so at most four,
each capped at `max_connections` sockets in all. A Connection's own `max_connections` caps the
requests in flight to it (a semaphore per connection; one HTTP/1.1 request holds one socket),
so one slow destination cannot take the whole pool. Guarded clients dial through
`ssrf.GuardedBackend`; none follows redirects or honours proxy settings from the environment.

Redis: one `redis.asyncio.Redis` per (URL, credentials, timeout), at most `max_redis_clients`,
least recently used evicted. An evicted client may still be serving a step, so it is closed
after a grace period rather than under that step's feet.

Also here, because every module needs them and they are about reaching destinations: the
lookup of a step's Connection (`connection_spec`) and the mapping of redis-py errors onto
`DeliveryError` (`redis_failure`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import OrderedDict
from types import TracebackType
from typing import Any, Self, TypeVar

import httpcore
import httpx
import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from data_plane.errors import DeliveryError, destination_of
from data_plane.ssrf import GuardedBackend
from providers.resources import HttpConnectionSpec, RedisConnectionSpec
from providers.snapshot import Endpoint

log = logging.getLogger(__name__)

USER_AGENT = "whplane"
_S = TypeVar("_S", HttpConnectionSpec, RedisConnectionSpec)


class Clients:
    """The outbound clients of one process. `max_connections` caps the sockets of each HTTP
    pool, `max_destinations` the per-connection semaphores kept, `redis_pool_size` the sockets
    of each Redis client; `ssrf_backend` replaces the guard (a custom resolver, tests)."""

    def __init__(
        self,
        *,
        max_connections: int = 512,
        max_keepalive_connections: int = 128,
        keepalive_expiry_s: float = 30.0,
        max_destinations: int = 4096,
        max_redis_clients: int = 256,
        redis_pool_size: int = 64,
        ssrf_backend: GuardedBackend | None = None,
    ) -> None:
        self._limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive_connections,
            keepalive_expiry=keepalive_expiry_s,
        )
        self._guard = ssrf_backend if ssrf_backend is not None else GuardedBackend()
        self._http: dict[tuple[bool, bool], httpx.AsyncClient] = {}
        self._slots: OrderedDict[tuple[str, int], asyncio.Semaphore] = OrderedDict()
        self._max_destinations = max_destinations
        self._redis: OrderedDict[tuple[str, str | None, str | None, float], aioredis.Redis] = (
            OrderedDict()
        )
        self._max_redis = max_redis_clients
        self._redis_pool_size = redis_pool_size
        self._retiring: set[asyncio.Task[None]] = set()
        self._file_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._closed = False

    # -- HTTP ------------------------------------------------------------------------------

    def http(self, *, verify_tls: bool, allow_private: bool) -> httpx.AsyncClient:
        """The shared client for this TLS setting; SSRF-guarded unless `allow_private`."""
        key = (verify_tls, allow_private)
        client = self._http.get(key)
        if client is None:
            self._check_open()
            guard = None if allow_private else self._guard
            client = httpx.AsyncClient(
                transport=_transport(verify_tls, self._limits, guard),
                headers={"User-Agent": USER_AGENT},
                follow_redirects=False,
                trust_env=False,
            )
            self._http[key] = client
        return client

    def http_slots(self, destination: str, max_connections: int) -> asyncio.Semaphore:
        """The semaphore capping requests in flight to one destination."""
        key = (destination, max_connections)
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = asyncio.Semaphore(max_connections)
            if len(self._slots) > self._max_destinations:
                # Holders keep their semaphore; only new requests get a fresh one.
                self._slots.popitem(last=False)
        else:
            self._slots.move_to_end(key)
        return slots

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
            (_, _, _, timeout_s), evicted = self._redis.popitem(last=False)
            # Long enough for a command it already started: pool wait + connect + reply.
            self._retire(evicted, grace_s=3 * timeout_s)
        return client

    def _retire(self, client: aioredis.Redis, grace_s: float) -> None:
        task = asyncio.get_running_loop().create_task(_close_later(client, grace_s))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

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
        http, self._http = list(self._http.values()), {}
        rds, self._redis = list(self._redis.values()), OrderedDict()
        retiring, self._retiring = list(self._retiring), set()
        for task in retiring:
            task.cancel()  # _close_later closes its client right away when cancelled
        results = await asyncio.gather(
            *(c.aclose() for c in http),
            *(c.aclose() for c in rds),
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


async def _close_later(client: aioredis.Redis, grace_s: float) -> None:
    try:
        await asyncio.sleep(grace_s)
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()


class _GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport, its connection pool dialling through a GuardedBackend.

    httpx offers no public hook for an httpcore network backend, so the pool httpx built is
    swapped for an identical one that has it; request and exception mapping stay httpx's. If a
    future httpx keeps its pool elsewhere this fails at startup, never silently unguarded.
    """

    def __init__(self, verify_tls: bool, limits: httpx.Limits, backend: GuardedBackend) -> None:
        super().__init__(verify=verify_tls, limits=limits, trust_env=False)
        if not isinstance(getattr(self, "_pool", None), httpcore.AsyncConnectionPool):
            raise RuntimeError("unsupported httpx version: cannot install the SSRF guard")
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify_tls, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )


def _transport(
    verify_tls: bool, limits: httpx.Limits, guard: GuardedBackend | None
) -> httpx.AsyncBaseTransport:
    if guard is None:
        return httpx.AsyncHTTPTransport(verify=verify_tls, limits=limits, trust_env=False)
    return _GuardedTransport(verify_tls, limits, guard)


# --- shared by the modules ---------------------------------------------------------------


def connection_spec(step: Any, endpoint: Endpoint, spec_type: type[_S]) -> tuple[_S, str]:
    """The spec of the Connection `step` names, and the step's destination label.

    A missing or mistyped connection is a config problem: retrying cannot fix it.
    """
    destination = destination_of(step, endpoint.connections)
    conn = endpoint.connections.get(step.connection)
    if conn is None:
        raise DeliveryError(
            f"connection {step.connection!r} is not in the config",
            destination=destination,
            retryable=False,
        )
    if not isinstance(conn.spec, spec_type):
        raise DeliveryError(
            f"connection {step.connection!r} is of type {conn.spec.type!r}, "
            f"which the {step.module} module cannot use",
            destination=destination,
            retryable=False,
        )
    return conn.spec, destination


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

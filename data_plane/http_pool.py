"""Outbound HTTP connections: one single-connection client per request in flight.

httpcore's connection pool looks at every connection it holds, and at every request waiting,
each time a request starts or ends: with many connections in one pool (one destination with
32 requests in flight, or a thousand destinations sharing a pool) a request costs more than
the delivery around it. Measured here, client CPU per request to one loopback destination:
409 us with 1 request in flight, 745 us with 10, 1,709 us with 32 on one shared pool; 397 us
and 421 us at 10 and 32 with a client of its own per request in flight.

So a request takes a *slot* of its destination: an idle client of that destination if one is
left (its connection kept alive), else a new one. At most `max_connections` per destination
(the Connection's own cap) and `max_connections` in all are in flight; at most `max_idle`
clients wait idle, each for `idle_expiry_s` at most, closed oldest first beyond that. All
clients share one TLS context per `verify_tls` (making one reads the CA bundle: 14 ms).

Unless `allow_private`, a client dials through the SSRF guard (`ssrf.GuardedBackend`): the
address dialled is the address checked. No client follows redirects or reads proxy settings
from the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import OrderedDict
from collections.abc import AsyncIterator

import httpcore
import httpx

from data_plane.ssrf import GuardedBackend

USER_AGENT = "whplane"


class _Destination:
    """The slots of one destination: its cap, and its idle clients (the last one used on top:
    its connection is the least likely to have been closed by the server)."""

    __slots__ = ("allow_private", "idle", "retired", "slots", "verify_tls")

    def __init__(self, max_connections: int, verify_tls: bool, allow_private: bool) -> None:
        self.slots = asyncio.Semaphore(max_connections)
        self.idle: list[httpx.AsyncClient] = []
        self.verify_tls, self.allow_private = verify_tls, allow_private
        self.retired = False  # dropped from the pool: clients coming back are closed


class HttpPool:
    def __init__(
        self,
        *,
        max_connections: int = 512,
        max_idle: int = 128,
        idle_expiry_s: float = 30.0,
        max_destinations: int = 4096,
        guard: GuardedBackend | None = None,
    ) -> None:
        self._max_connections = max_connections
        self._max_idle = max_idle
        self._idle_expiry_s = idle_expiry_s
        self._max_destinations = max_destinations
        self._guard = guard if guard is not None else GuardedBackend()
        self._in_flight = asyncio.Semaphore(max_connections)
        self._busy = 0  # clients lent out
        self._destinations: OrderedDict[tuple[str, int, bool, bool], _Destination] = (
            OrderedDict())
        # Every idle client, least recently returned first, with its destination and when.
        self._idle: OrderedDict[httpx.AsyncClient, tuple[_Destination, float]] = OrderedDict()
        self._tls: dict[bool, ssl.SSLContext] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    @contextlib.asynccontextmanager
    async def slot(self, destination: str, max_connections: int, *, verify_tls: bool,
                   allow_private: bool) -> AsyncIterator[httpx.AsyncClient]:
        """A client for one request to `destination` (a Connection's identity), waiting
        while `max_connections` requests to it are in flight. Give it a deadline: a slot
        is waited for as long as it takes."""
        dest = self._destination(destination, max_connections, verify_tls, allow_private)
        # The destination's cap first: requests queued behind one busy destination must not
        # hold places every other destination needs.
        async with dest.slots, self._in_flight:
            client = self._take(dest)
            self._busy += 1
            try:
                yield client
            finally:
                self._busy -= 1
                self._give_back(dest, client)

    def stats(self) -> dict[str, int]:
        return {"busy": self._busy, "idle": len(self._idle),
                "destinations": len(self._destinations)}

    async def aclose(self) -> None:
        """Close every idle client, and each lent one as it comes back. Idempotent."""
        self._closed = True
        for dest in self._destinations.values():
            dest.retired = True
        self._destinations.clear()
        idle, self._idle = list(self._idle), OrderedDict()
        closing, self._closing = list(self._closing), set()
        await asyncio.gather(*(c.aclose() for c in idle), *closing, return_exceptions=True)

    # -- inside ---------------------------------------------------------------------------

    def _destination(self, destination: str, max_connections: int, verify_tls: bool,
                     allow_private: bool) -> _Destination:
        if self._closed:
            raise RuntimeError("the HTTP pool is closed")
        key = (destination, max_connections, verify_tls, allow_private)
        dest = self._destinations.get(key)
        if dest is None:
            dest = self._destinations[key] = _Destination(max_connections, verify_tls,
                                                          allow_private)
            if len(self._destinations) > self._max_destinations:
                # Holders keep their slot; its client is closed when it comes back.
                _, old = self._destinations.popitem(last=False)
                self._retire(old)
        else:
            self._destinations.move_to_end(key)
        return dest

    def _take(self, dest: _Destination) -> httpx.AsyncClient:
        self._expire(time.monotonic())
        if dest.idle:
            client = dest.idle.pop()
            del self._idle[client]
            return client
        # Idle clients of other destinations count toward the sockets this process holds.
        while self._idle and self._busy + len(self._idle) >= self._max_connections:
            self._close_oldest()
        return self._client(dest.verify_tls, dest.allow_private)

    def _give_back(self, dest: _Destination, client: httpx.AsyncClient) -> None:
        if dest.retired or self._closed or client.is_closed:
            self._close(client)
            return
        dest.idle.append(client)
        self._idle[client] = (dest, time.monotonic())
        while len(self._idle) > self._max_idle:
            self._close_oldest()

    def _expire(self, now: float) -> None:
        while self._idle:
            _, since = next(iter(self._idle.values()))
            if now - since < self._idle_expiry_s:
                return
            self._close_oldest()

    def _close_oldest(self) -> None:
        client, (dest, _) = self._idle.popitem(last=False)
        dest.idle.remove(client)
        self._close(client)

    def _retire(self, dest: _Destination) -> None:
        dest.retired = True
        for client in dest.idle:
            del self._idle[client]
            self._close(client)
        dest.idle.clear()

    def _close(self, client: httpx.AsyncClient) -> None:
        task = asyncio.get_running_loop().create_task(client.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _client(self, verify_tls: bool, allow_private: bool) -> httpx.AsyncClient:
        tls = self._tls.get(verify_tls)
        if tls is None:
            tls = self._tls[verify_tls] = httpx.create_ssl_context(verify=verify_tls,
                                                                   trust_env=False)
        # One connection: it is kept alive between the requests of this slot, closed by the
        # pool (above), not by httpcore's own expiry, which only runs when the client is used.
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1,
                              keepalive_expiry=self._idle_expiry_s)
        transport: httpx.AsyncBaseTransport = (
            httpx.AsyncHTTPTransport(verify=tls, limits=limits, trust_env=False)
            if allow_private else _GuardedTransport(tls, limits, self._guard))
        return httpx.AsyncClient(transport=transport, headers={"User-Agent": USER_AGENT},
                                 follow_redirects=False, trust_env=False)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport, its connection pool dialling through a GuardedBackend.

    httpx offers no public hook for an httpcore network backend, so the pool httpx built is
    swapped for an identical one that has it; request and exception mapping stay httpx's. If a
    future httpx keeps its pool elsewhere this fails at startup, never silently unguarded.
    """

    def __init__(self, tls: ssl.SSLContext, limits: httpx.Limits,
                 backend: GuardedBackend) -> None:
        super().__init__(verify=tls, limits=limits, trust_env=False)
        if not isinstance(getattr(self, "_pool", None), httpcore.AsyncConnectionPool):
            raise RuntimeError("unsupported httpx version: cannot install the SSRF guard")
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=tls,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )

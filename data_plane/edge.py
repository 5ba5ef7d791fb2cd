"""The gateway's edge: what a connection may cost before anything about it is known.

uvicorn's httptools protocol (what `uvicorn[standard]` runs) enforces none of this: a request
head of any size is buffered (h11 stops at 16 KiB but parses several times slower), neither a
head nor a body has a deadline, and the keep-alive timeout is armed only after a response, so a
connection that never sends a byte is held forever. Its `limit_concurrency` counts connections,
so idle or trickling ones would refuse everybody else. `EdgeProtocol` is that protocol plus:

- at most `max_connections` per process and `max_connections_per_ip` per peer (an IPv6 peer
  counts by its /64); a connection over either gets an immediate 503 and is closed;
- `keepalive_timeout_s`: a connection with no request under way, fresh or between requests,
  is closed;
- `header_timeout_s` from the first byte of a request to the end of its head, and
  `max_header_bytes` for that head: 408 or 431, connection closed;
- `body_timeout_s` from the end of the head to the end of the body: 408, connection closed;
  the app sees the request as disconnected.

A WebSocket (the relay's `/connect/.../ws`) leaves all of this behind once upgraded: no HTTP
deadline applies to it (the WebSocket protocol's own pings watch it), and it keeps its place
in the connection budget until it closes. On shutdown `EdgeGuard.draining` is set, so that
long-lived answers (relay streams and long polls) can end instead of holding the shutdown up.

A webhook POST is offered a direct answer (`DIRECT_REPLY` in its scope's `extensions`): the
whole response in one write, with the bookkeeping uvicorn's `send` does for a complete response
but without two ASGI messages, a header list validated name by name and two writes (a third of
a small webhook's cost on top of the app). The answer is the app's own bytes, built from values
it controls; a request that cannot take it (writes paused, answered already) falls back to
`send`. Every other answer of the `/webhook/` prefix leaves head and body in one write too.

A deadline is armed only when a read leaves a request unfinished, so a request that arrives in
one read (nearly every webhook) costs no timer at all. Edge answers carry `X-Whplane-Revision`
like every gateway answer.

The client address is the socket's peer, always: uvicorn's proxy-header middleware is stripped
off if it was configured, so that `X-Forwarded-For` is judged only where a webhook names its
`trusted_proxies` (data_plane/verify/ip_allow.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from ipaddress import IPv6Address, IPv6Network
from typing import Any

from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

log = logging.getLogger(__name__)

# What the deadline is about when it is the idle one (between requests, or before the first).
_IDLE = object()
# Descriptors kept free for everything else the process opens (store, Redis, outbound HTTP).
_RESERVED_FDS = 256
# The hot path's route (data_plane/ingest.py), whose answers leave head and body in one write.
WEBHOOK_PREFIX = "/webhook/"
# The scope extension of a direct answer, `{"reply": reply}` (ASGI extensions are dicts) with
# `reply(status, head, body, close) -> bool`: see `_DirectReply`.
DIRECT_REPLY = "whplane.direct_reply"

@dataclass(frozen=True, slots=True)
class EdgeLimits:
    max_connections: int = 4096
    max_connections_per_ip: int = 1024  # 0: no per-peer cap
    max_header_bytes: int = 65536
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keepalive_timeout_s: float = 5.0


class EdgeGuard:
    """One process's connection budget, shared by all its connections."""

    def __init__(self, limits: EdgeLimits, revision: Callable[[], int] | None = None) -> None:
        self.limits = limits
        self.max_connections = _within_fd_limit(limits.max_connections)
        self.revision = revision
        # One entry per peer with an open connection: bounded by max_connections.
        self._peers: dict[str, int] = {}
        self.open = 0
        self.refused = 0
        self.head_timeouts = 0
        self.body_timeouts = 0
        self.heads_too_large = 0
        self.draining = asyncio.Event()
        # uvicorn's default headers (date, server), rendered once per list: it makes a new
        # one each second, with the new date.
        self._defaults_of: object = None
        self._defaults = b""

    def default_headers(self, headers: list[tuple[bytes, bytes]]) -> bytes:
        if headers is not self._defaults_of:
            self._defaults = b"".join(b"%s: %s\r\n" % (n.lower(), v) for n, v in headers)
            self._defaults_of = headers
        return self._defaults

    def admit(self, peer: str | None) -> bool:
        if self.open >= self.max_connections:
            self.refused += 1
            return False
        cap = self.limits.max_connections_per_ip
        if peer is not None and cap:
            held = self._peers.get(peer, 0)
            if held >= cap:
                self.refused += 1
                return False
            self._peers[peer] = held + 1
        self.open += 1
        return True

    def release(self, peer: str | None) -> None:
        self.open -= 1
        if peer is not None and self.limits.max_connections_per_ip:
            held = self._peers.get(peer, 0) - 1
            if held > 0:
                self._peers[peer] = held
            else:
                self._peers.pop(peer, None)

    def stats(self) -> dict[str, int]:
        return {"open_connections": self.open, "peers": len(self._peers),
                "max_connections": self.max_connections, "refused": self.refused,
                "head_timeouts": self.head_timeouts, "body_timeouts": self.body_timeouts,
                "heads_too_large": self.heads_too_large}  # fmt: skip


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above; `http=` for `uvicorn.run`.

    The limits come from the app's `edge` attribute (an `EdgeGuard`), so each process of a
    multi-worker gateway builds its own from its settings.

    It overrides no parser callback: after each read it looks at where the request stands
    (uvicorn starts a new `scope` at each request and a `cycle` for it once its head is
    complete), which keeps the per-request cost to a few attribute reads.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        app = self.app
        while isinstance(app, ProxyHeadersMiddleware):
            app = app.app
        self.app = app
        guard = getattr(app, "edge", None)
        self.guard: EdgeGuard = guard if isinstance(guard, EdgeGuard) else EdgeGuard(EdgeLimits())
        self._head_of: object = None  # the scope whose head is being counted
        self._head_bytes = 0
        self._tail = b""
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_for: object = None  # the scope or cycle the deadline is about, or _IDLE
        self._idle_from = 0.0  # when the connection last became idle (loop time)
        self._peer: str | None = None
        self._admitted = False
        self._answered = False
        self._joined: _JoinedWrites | None = None

    # -- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._peer = peer_key(self.client[0]) if self.client else None
        if not self.guard.admit(self._peer):
            self._answer(503, "too many connections", retry_after=1)
            return
        self._admitted = True
        self._idle_from = self.loop.time()
        self._arm(self.guard.limits.keepalive_timeout_s, self._idle_expired, _IDLE)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._admitted:
            self._admitted = False
            self.guard.release(self._peer)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._answered:
            return
        limits = self.guard.limits
        budget = limits.max_header_bytes - self._head_bytes
        if len(data) > budget and not self._in_body():
            # Checked before the parser sees the bytes: it would buffer a head of any size.
            if b"\r\n\r\n" not in self._tail + data[:budget]:
                self._head_too_large()
                return
        super().data_received(data)
        if self._answered:  # upgraded to a WebSocket by that read: no longer ours
            return

        scope, cycle = self.scope, self.cycle
        if scope is None:
            return  # blank lines on a fresh connection: its idle deadline stands
        if cycle is None or cycle.scope is not scope:  # a head under way
            if self._head_of is not scope:
                self._head_of, self._head_bytes = scope, 0
            self._head_bytes += len(data)
            self._tail = data[-3:]  # the end of the head may straddle two reads
            if self._deadline_for is not scope:
                self._arm(limits.header_timeout_s, self._head_expired, scope)
            return
        if self._head_bytes:
            self._head_bytes, self._tail = 0, b""
        if cycle.more_body:  # a body under way (or the rest of one answered early)
            if self._deadline_for is not cycle:
                self._arm(limits.body_timeout_s, self._body_expired, cycle)
        elif not cycle.response_complete:  # all read, the app is on it
            if self._deadline is not None and self._deadline_for is not _IDLE:
                self._disarm()
        elif self._deadline is None:
            # Between requests: bytes that start no request (blank lines) leave the idle time
            # counting from the last answer, so they cannot hold the connection open.
            self._arm(limits.keepalive_timeout_s, self._idle_expired, _IDLE)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        # Not while a 100-continue is owed: the client waits for it before sending the body.
        scope = self.scope
        if (cycle is not None and cycle.scope is scope and not cycle.waiting_for_100_continue
                and scope["path"].startswith(WEBHOOK_PREFIX)):
            if scope["method"] == "POST" and not cycle.access_log:
                scope["extensions"] = {DIRECT_REPLY: {"reply": _DirectReply(cycle, self.guard)}}
                return
            if self._joined is None:
                self._joined = _JoinedWrites(self.transport)
            self._joined.hold_next = True
            cycle.transport = self._joined  # type: ignore[assignment]

    def on_response_complete(self) -> None:
        if self._joined is not None:
            self._joined.flush()  # a response without a body (to HEAD) leaves its head held
        # uvicorn's, without its keep-alive timer: it arms one per response and cancels it at
        # the next read (a few microseconds a request). The idle deadline is armed once and,
        # when it fires, measures the idle time from `_idle_from` (see `_idle_expired`).
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_from = self.loop.time()
        if self._deadline is None:
            self._arm(self.guard.limits.keepalive_timeout_s, self._idle_expired, _IDLE)

    def handle_websocket_upgrade(self) -> None:
        # Without this, the upgrade request's read would arm a head deadline that writes a
        # 408 into the WebSocket later, and the connection would never leave the budget
        # (its connection_lost goes to the WebSocket protocol, not to us).
        self._disarm()
        self._answered = True
        super().handle_websocket_upgrade()
        if not self._admitted:
            return
        self._admitted = False
        ws = self.transport.get_protocol()
        lost = ws.connection_lost
        guard, peer = self.guard, self._peer

        def connection_lost(exc: Exception | None) -> None:
            try:
                lost(exc)
            finally:
                guard.release(peer)

        ws.connection_lost = connection_lost  # type: ignore[method-assign]

    def shutdown(self) -> None:
        self.guard.draining.set()
        super().shutdown()

    def _in_body(self) -> bool:
        cycle = self.cycle
        return cycle is not None and cycle.scope is self.scope and cycle.more_body

    # -- deadlines ----------------------------------------------------------------------------

    def _arm(self, seconds: float, expired: Callable[[], None], about: object) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(seconds, expired)
        self._deadline_for = about

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._deadline_for = None

    def _idle_expired(self) -> None:
        self._deadline = self._deadline_for = None
        if self.transport.is_closing():
            return
        keepalive = self.guard.limits.keepalive_timeout_s
        if self._busy():  # a request came since, and is being answered: look again later
            self._arm(keepalive, self._idle_expired, _IDLE)
            return
        idle = self.loop.time() - self._idle_from
        if idle < keepalive:  # it answered something since this was armed
            self._arm(keepalive - idle, self._idle_expired, _IDLE)
            return
        self.transport.close()

    def _head_expired(self) -> None:
        self._deadline = None
        if self._busy():  # an answer to the request before is under way: not in its middle
            self._deadline = self.loop.call_later(self.guard.limits.header_timeout_s,
                                                  self._head_expired)
            return
        self.guard.head_timeouts += 1
        limit = self.guard.limits.header_timeout_s
        self._answer(408, f"request head not received within {limit:g}s")

    def _body_expired(self) -> None:
        self._deadline = None
        cycle = self.cycle
        if self.pipeline:  # queued behind a request still being answered: we stopped reading
            self._deadline = self.loop.call_later(self.guard.limits.body_timeout_s,
                                                  self._body_expired)
            return
        if cycle is not None and cycle.response_started:
            self.transport.close()  # answered already (a 413, say): just end it
            return
        self.guard.body_timeouts += 1
        limit = self.guard.limits.body_timeout_s
        self._answer(408, f"request body not received within {limit:g}s")
        if cycle is not None:
            # The app waiting for the rest of the body sees a disconnect and stops.
            cycle.disconnected = True
            cycle.message_event.set()

    def _busy(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    # -- answers ------------------------------------------------------------------------------

    def _head_too_large(self) -> None:
        self.guard.heads_too_large += 1
        if self._busy():  # pipelined behind a request still being answered: not in its middle
            self._answered = True
            self._disarm()
            self.transport.close()
            return
        self._answer(431, f"request head over {self.guard.limits.max_header_bytes} bytes")

    def _answer(self, status: int, error: str, retry_after: int | None = None) -> None:
        self._answered = True
        self._disarm()
        body = json.dumps({"error": error}).encode()
        head = [
            b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode()),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n",
        ]
        if retry_after is not None:
            head.append(b"retry-after: %d\r\n" % retry_after)
        if self.guard.revision is not None:
            head.append(b"x-whplane-revision: %d\r\n" % self.guard.revision())
        if not self.transport.is_closing():
            self.transport.write(b"".join(head) + b"\r\n" + body)
            self.transport.close()


class _DirectReply:
    """A complete answer to one request, written at once: what uvicorn's `send` does for a
    `http.response.start` with a content-length and one `http.response.body`, for a response
    whose header lines the app rendered itself (from values it controls: no validation).

    `head` holds the app's header lines, each ending in CRLF; `close` says that one of them
    is `connection: close`. False, with nothing written, when the answer must go through
    `send` after all: writes paused (`send` waits for the client to read), the client gone,
    or a response already started."""

    __slots__ = ("cycle", "guard")

    def __init__(self, cycle: RequestResponseCycle, guard: EdgeGuard) -> None:
        self.cycle, self.guard = cycle, guard

    def __call__(self, status: int, head: bytes, body: bytes, close: bool) -> bool:
        cycle = self.cycle
        if cycle.response_started or cycle.disconnected or cycle.flow.write_paused:
            return False
        cycle.response_started = cycle.response_complete = True
        cycle.waiting_for_100_continue = False
        keep_alive = cycle.keep_alive and not close
        transport = cycle.transport
        transport.write(b"".join((
            STATUS_LINE[status], self.guard.default_headers(cycle.default_headers), head,
            b"" if keep_alive or close else b"connection: close\r\n", b"\r\n", body,
        )))  # fmt: skip
        cycle.message_event.set()  # a receive() under way learns the request is over
        if not keep_alive:
            cycle.keep_alive = False
            transport.close()
        cycle.on_response()
        return True


class _JoinedWrites:
    """The transport as a webhook's response cycle sees it: the response head is held back
    and leaves with the body that follows it, in one write. Two writes cost a second syscall
    and a second segment, and wake the client for a head without its body; they were the
    largest single cost of a small webhook answer."""

    __slots__ = ("_held", "hold_next", "transport")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.hold_next = False  # the next write is a response head
        self._held = b""

    def write(self, data: bytes) -> None:
        if self.hold_next:
            self.hold_next = False
            self._held = data
            return
        if self._held:
            data, self._held = self._held + data, b""
        self.transport.write(data)

    def flush(self) -> None:
        self.hold_next = False
        if self._held:
            data, self._held = self._held, b""
            self.transport.write(data)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def peer_key(host: str) -> str:
    """What the per-peer cap counts by: the IPv4 address, or the IPv6 /64 (one site's share)."""
    if ":" not in host:
        return host
    try:
        address = IPv6Address(host.partition("%")[0])
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(IPv6Network((address, 64), strict=False))


def _within_fd_limit(wanted: int) -> int:
    """Past the open-files limit accept() fails for everyone: raise the soft limit toward the
    hard one if needed (as Go's runtime does), and stay below whatever it ends up being."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        needed = wanted + _RESERVED_FDS
        if soft != resource.RLIM_INFINITY and soft < needed:
            raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    except (ImportError, OSError, ValueError):
        return wanted
    if soft == resource.RLIM_INFINITY or soft - _RESERVED_FDS >= wanted:
        return wanted
    allowed = max(soft - _RESERVED_FDS, 1)
    log.warning("max_connections %d lowered to %d: the open-files limit is %d", wanted,
                allowed, soft)
    return allowed

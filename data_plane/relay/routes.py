"""The connector routes, as plain ASGI (HTTP and WebSocket):

    GET  /connect/{namespace}/{channel}/ws     WebSocket: messages out, acks and nacks in
    GET  /connect/{namespace}/{channel}/sse    Server-Sent Events: messages out
    GET  /connect/{namespace}/{channel}/poll   long poll: ?session=ID&max=N&wait=S
    POST /connect/{namespace}/{channel}/ack    acks and nacks (SSE and poll), SSE heartbeats

The path is judged on its raw bytes, before any percent-decoding: namespace and channel must
follow the resource name rule, so `..`, `/`, `%2f`, NUL and anything else is a 400 before
anything is looked up. Then the bearer token: a wrong token, no token, an unknown channel or
namespace all get the same 401 and nothing else. Tokens are read from the Authorization
header only, never from the URL (URLs end up in logs).

Heartbeats: every `heartbeat_s` (the connector's `?heartbeat=`, 1 to 60 s, default 10) the
gateway sends one when it sent nothing else (a `heartbeat` frame, an SSE comment); a
WebSocket connector sends frames as often, an SSE connector POSTs an empty ack naming its
session. A session that hears nothing from its connector for 3 heartbeats is closed and
what it held is released. A long poll is its own heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from data_plane.relay import sse, wire
from data_plane.relay.channels import Channel
from data_plane.relay.hub import RelayHub, TooManySessions
from data_plane.relay.session import Session, nack
from data_plane.relay.store import Taken
from providers.model import NAME_RE

log = logging.getLogger(__name__)

CONNECT_PREFIX = "/connect/"
TRANSPORTS = ("ws", "sse", "poll")
DEFAULT_WINDOW = 10
DEFAULT_HEARTBEAT_S = 10.0
MISSED_HEARTBEATS = 3
MAX_POLL_WAIT_S = 30.0
MAX_ACK_BODY = 256 * 1024
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
_UNKNOWN = "_unknown"


class _Bad(Exception):
    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status, self.error = status, error


class _Ended(Exception):
    """The connection is over (disconnect, missed heartbeats): not an error."""


def parse_path(scope: Scope) -> tuple[str, str, str]:
    """(namespace, channel, operation) of a /connect/ path, or _Bad(400)."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    parts = raw.split(b"?", 1)[0].split(b"/")
    if len(parts) != 5 or parts[:2] != [b"", b"connect"]:
        raise _Bad(400, "expected /connect/NAMESPACE/CHANNEL/ws|sse|poll|ack")
    try:
        ns, channel, op = (p.decode("ascii") for p in parts[2:])
    except UnicodeDecodeError:
        raise _Bad(400, "invalid namespace or channel name") from None
    if not NAME_RE.match(ns) or not NAME_RE.match(channel) or "\n" in ns + channel:
        raise _Bad(400, "invalid namespace or channel name: lower-case letters, digits and "
                        "'-', 1-63 characters")
    if op not in (*TRANSPORTS, "ack"):
        raise _Bad(404, f"unknown operation {op[:20]!r}: ws, sse, poll or ack")
    return ns, channel, op


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def _query(scope: Scope) -> dict[str, str]:
    parsed = parse_qs(scope.get("query_string", b"").decode("latin-1"), max_num_fields=20)
    return {k: v[0] for k, v in parsed.items()}


def _number(query: dict[str, str], name: str, default: float, low: float, high: float) -> float:
    text = query.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise _Bad(400, f"{name} must be a number") from None
    if not low <= value <= high:
        raise _Bad(400, f"{name} must be between {low:g} and {high:g}")
    return value


class RelayRoutes:
    """`/connect/...`; `hub` is None when the gateway has no Redis (every request: 503)."""

    def __init__(self, hub: RelayHub | None, ready: Callable[[], bool],
                 draining: asyncio.Event | None = None) -> None:
        self.hub = hub
        self.ready = ready
        # Set when the server starts shutting down: streams and polls end then instead of
        # holding the shutdown up (the connector reconnects to another gateway).
        self.draining = draining if draining is not None else asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = scope["type"] == "websocket"
        try:
            ns, name, op = parse_path(scope)
            if websocket != (op == "ws"):
                raise _Bad(400, "ws is a WebSocket route; sse, poll and ack are HTTP")
            method = scope.get("method", "GET")
            if not websocket and method != ("POST" if op == "ack" else "GET"):
                raise _Bad(405, f"{op} takes {'POST' if op == 'ack' else 'GET'}")
            channel = self._authorize(scope, ns, name)
            query = _query(scope)
            if op == "ack":
                await self._ack(scope, receive, send, channel)
            elif op == "poll":
                await self._poll(scope, receive, send, channel, query)
            else:
                hub = self._hub()
                window = int(_number(query, "window", DEFAULT_WINDOW, 1, 1000))
                heartbeat_s = _number(query, "heartbeat", DEFAULT_HEARTBEAT_S, 1, 60)
                try:
                    session = hub.open(channel, op, window)
                except TooManySessions as exc:
                    raise _Bad(503, str(exc)) from None
                try:
                    if websocket:
                        await self._ws(WebSocket(scope, receive, send), session, heartbeat_s)
                    else:
                        await self._sse(receive, send, session, heartbeat_s)
                finally:
                    hub.close(session)
        except _Bad as bad:
            await _refuse(scope, receive, send, bad)
        except _Ended:
            pass

    def _hub(self) -> RelayHub:
        if self.hub is None:
            raise _Bad(503, "the relay needs Redis (WH_REDIS_URL)")
        if not self.ready():
            raise _Bad(503, "not ready: no config loaded yet")
        return self.hub

    def _authorize(self, scope: Scope, ns: str, name: str) -> Channel:
        hub = self._hub()
        channel = hub.channels.authorize(ns, name, _bearer(scope))
        if channel is None:
            known = ns if ns in hub.channels.namespaces() else _UNKNOWN
            hub.metrics.unauthorized.labels(known).inc()
            raise _Bad(401, "unauthorized")
        return channel

    # -- WebSocket ------------------------------------------------------------------------

    async def _ws(self, ws: WebSocket, session: Session, heartbeat_s: float) -> None:
        await ws.accept()
        await ws.send_text(json.dumps(_hello(session, heartbeat_s)))

        async def sender() -> None:
            while True:
                taken = await session.next(heartbeat_s)
                if not taken:
                    await ws.send_text('{"type":"heartbeat"}')
                for t in taken:
                    await ws.send_text(json.dumps(wire.message(t, session.channel.name)))

        async def receiver() -> None:
            while True:
                frame = await ws.receive()
                if frame["type"] == "websocket.disconnect":
                    raise _Ended
                session.seen()
                try:
                    settlement = wire.settlement(json.loads(frame.get("text") or
                                                            frame.get("bytes") or b""))
                except (ValueError, wire.BadFrame) as exc:
                    await ws.close(1003, f"bad frame: {str(exc)[:80]}")
                    raise _Ended from None
                await _settle(session, settlement)

        try:
            await _race(sender(), receiver(), _watchdog(session, heartbeat_s),
                        _until(self.draining))
        except (_Ended, WebSocketDisconnect, OSError, RuntimeError):
            return  # the connector went away (RuntimeError: sending on a closed socket)
        except _Silent:
            with contextlib.suppress(OSError, RuntimeError):
                await ws.close(4000, "heartbeat timeout")

    # -- Server-Sent Events ---------------------------------------------------------------

    async def _sse(self, receive: Receive, send: Send, session: Session,
                   heartbeat_s: float) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),  # proxies must pass events on at once
        ]})  # fmt: skip
        hello = json.dumps(_hello(session, heartbeat_s))
        retry_ms = int(heartbeat_s * 100)  # reconnect soon: nothing is lost meanwhile

        async def body(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        async def stream() -> None:
            await body(sse.encode(hello, event="hello", retry_ms=retry_ms))
            while True:
                taken = await session.next(heartbeat_s)
                if not taken:
                    await body(sse.comment("heartbeat"))
                for t in taken:
                    data = json.dumps(wire.message(t, session.channel.name))
                    await body(sse.encode(data, event="message", id=t.entry_id))

        try:
            await _race(stream(), _disconnected(receive), _watchdog(session, heartbeat_s),
                        _until(self.draining))
        except (_Ended, _Silent, OSError):
            pass
        with contextlib.suppress(OSError, RuntimeError):  # the client is gone already
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    # -- long poll ------------------------------------------------------------------------

    async def _poll(self, scope: Scope, receive: Receive, send: Send, channel: Channel,
                    query: dict[str, str]) -> None:
        hub = self._hub()
        session_id = query.get("session", "")
        if not SESSION_ID.fullmatch(session_id):
            raise _Bad(400, "session must be 8-64 letters, digits, '-' or '_'")
        window = int(_number(query, "max", DEFAULT_WINDOW, 1, 1000))
        wait_s = _number(query, "wait", 20, 0, MAX_POLL_WAIT_S)
        session = Session(hub.store, channel, "poll", window, session_id)
        found: list[Taken] = []

        async def take() -> None:
            found.extend(await session.next(wait_s))

        try:
            await _race(take(), _disconnected(receive), _until(self.draining))
        except _Ended:
            if not self.draining.is_set():
                return  # gone: what it took comes back after the visibility timeout
        await JSONResponse({
            "session": session.id, "visibility_timeout_s": session.visibility_s,
            "messages": [wire.message(t, channel.name) for t in found],
        })(scope, receive, send)  # fmt: skip

    # -- acks -----------------------------------------------------------------------------

    async def _ack(self, scope: Scope, receive: Receive, send: Send, channel: Channel) -> None:
        hub = self._hub()
        body = await _read_body(receive, MAX_ACK_BODY)
        try:
            obj = json.loads(body)
            settlement = wire.settlement(obj)
        except (ValueError, wire.BadFrame) as exc:
            raise _Bad(400, f"bad ack: {str(exc)[:120]}") from None
        session_id = obj.get("session")
        session = hub.sessions.get(session_id) if isinstance(session_id, str) else None
        if session is not None and session.channel.name == channel.name and (
                session.channel.namespace == channel.namespace):
            acked, dead = await _settle(session, settlement)
        else:  # a poll session, or an SSE session served by another gateway process
            acked = await hub.store.ack(channel.namespace, channel.name, list(settlement.acks))
            dead = 0
            for entry_id, error in settlement.nacks:
                dead += await nack(hub.store, channel, entry_id, error)
        await JSONResponse({"acked": acked, "dead_lettered": dead})(scope, receive, send)


class _Silent(Exception):
    """The connector missed its heartbeats."""


def _hello(session: Session, heartbeat_s: float) -> dict[str, Any]:
    return {"type": "hello", "session": session.id, "window": session.window,
            "heartbeat_s": heartbeat_s,
            "visibility_timeout_s": session.visibility_s}


async def _settle(session: Session, settlement: wire.Settlement) -> tuple[int, int]:
    try:
        return await session.settle(settlement)
    except Exception as exc:  # Redis: unsettled messages come back, at worst a duplicate
        log.warning("relay %s/%s: settling failed: %r", session.channel.namespace,
                    session.channel.name, exc)
        return 0, 0


async def _watchdog(session: Session, heartbeat_s: float) -> None:
    timeout = MISSED_HEARTBEATS * heartbeat_s
    while True:
        await asyncio.sleep(heartbeat_s / 2)
        if time.monotonic() - session.last_seen > timeout:
            log.info("relay %s/%s: session %s missed its heartbeats, closing",
                     session.channel.namespace, session.channel.name, session.id)
            raise _Silent


async def _until(event: asyncio.Event) -> None:
    await event.wait()
    raise _Ended


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Ended


async def _race(*coros: Any) -> None:
    """Run until the first one ends (returns or raises); cancel the rest; re-raise."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        exc = task.exception()
        if exc is not None:
            raise exc


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Ended
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _Bad(413, f"ack body over {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _refuse(scope: Scope, receive: Receive, send: Send, bad: _Bad) -> None:
    headers = {"www-authenticate": 'Bearer realm="whplane-relay"'} if bad.status == 401 else {}
    if bad.status == 503:
        headers["retry-after"] = "5"
    response = JSONResponse({"error": bad.error}, bad.status, headers=headers)
    if scope["type"] != "websocket":
        await response(scope, receive, send)
        return
    ws = WebSocket(scope, receive, send)
    if "websocket.http.response" in scope.get("extensions", {}):
        await ws.send_denial_response(response)
    else:
        await ws.close(1008)

"""The connector (`whplane connect`): on a machine nobody can reach, pull a channel's webhooks
from a gateway and forward each to a local URL; acknowledge it only after a 2xx.

One connection at a time, over WebSocket (default), Server-Sent Events or long poll; when it
ends or stalls, reconnect with exponential backoff and full jitter (a server's SSE `retry:`
raises the base). Messages are forwarded one after the other, in the order they came, through
one pooled HTTP client; the gateway never has more than the in-flight window unacknowledged
with this connection. A local failure is reported (nack), so the gateway retries the message
later or, after `max_attempts`, dead-letters it. A message that arrives again while its first
copy is still queued here is skipped; one that arrives again later is forwarded again, with
the same `X-Whplane-Delivery` id, so the receiver can drop the duplicate.

Heartbeats: the connector sends one every `heartbeat_s` (a WebSocket frame, an empty ack
POST naming the SSE session; a poll is one by itself) and gives up on a connection that
brought nothing, not even a heartbeat, for `MISSED_HEARTBEATS` of them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus, WebSocketException

from data_plane.relay.sse import Comment, Event, Retry, SSEParser
from providers.backoff import backoff
from providers.model import NAME_RE

log = logging.getLogger(__name__)

Transport = Literal["ws", "sse", "poll"]
MISSED_HEARTBEATS = 3
HEALTHY_S = 30.0  # a connection that lasted this long resets the backoff
MAX_FRAME_BYTES = 128 * 1024 * 1024  # a 64 MiB webhook, base64-encoded, with room to spare
ACK_BATCH = 64
# Never forwarded: they describe the hop from the sender to the gateway.
_HOP_BY_HOP = frozenset({
    "host", "content-length", "connection", "keep-alive", "transfer-encoding", "te",
    "trailer", "upgrade", "expect", "proxy-authorization", "proxy-connection",
})  # fmt: skip


class Unauthorized(Exception):
    """The gateway refused the token (401): retrying cannot help."""


class Stalled(Exception):
    """Nothing arrived for MISSED_HEARTBEATS heartbeats."""


@dataclass(frozen=True, slots=True)
class ConnectorSettings:
    gateway: str
    namespace: str
    channel: str
    forward: str
    token: str = field(repr=False)
    transport: Transport = "ws"
    window: int = 10
    heartbeat_s: float = 10.0
    forward_timeout_s: float = 10.0
    connect_timeout_s: float = 10.0
    poll_wait_s: float = 20.0
    backoff_base_s: float = 0.5
    max_backoff_s: float = 30.0

    def __post_init__(self) -> None:
        for what, name in (("namespace", self.namespace), ("channel", self.channel)):
            if not NAME_RE.match(name) or "\n" in name:
                raise ValueError(f"{what} {name!r} is not a valid name: lower-case letters, "
                                 "digits and '-', 1-63 characters")
        if urlsplit(self.gateway).scheme not in ("http", "https"):
            raise ValueError("the gateway URL must start with http:// or https://")
        if urlsplit(self.forward).scheme not in ("http", "https"):
            raise ValueError("the forward URL must start with http:// or https://")
        if not self.token or any(c.isspace() for c in self.token):
            raise ValueError("the token must be non-empty, without spaces")
        if not 1 <= self.window <= 1000:
            raise ValueError("window must be between 1 and 1000")
        if not 1 <= self.heartbeat_s <= 60:
            raise ValueError("heartbeat must be between 1 and 60 seconds")

    def url(self, op: str) -> str:
        return f"{self.gateway.rstrip('/')}/connect/{self.namespace}/{self.channel}/{op}"


@dataclass
class ConnectorStats:
    connections: int = 0
    delivered: int = 0
    failed: int = 0
    skipped_duplicates: int = 0


class Connector:
    def __init__(self, settings: ConnectorSettings,
                 http: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        # One pooled client for everything: forwarding (a new session per message would cost a
        # TCP and TLS handshake each), SSE, polls and acks. No proxies from the environment.
        self.http = http or httpx.AsyncClient(
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=8),
            timeout=httpx.Timeout(settings.forward_timeout_s,
                                  connect=settings.connect_timeout_s),
            follow_redirects=False, trust_env=False,
        )  # fmt: skip
        self.stats = ConnectorStats()
        self._retry_base_s = settings.backoff_base_s

    async def aclose(self) -> None:
        await self.http.aclose()

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, forward, reconnect, until `stop` is set. Raises Unauthorized."""
        s = self.settings
        attempt = 0
        sessions = {"ws": self._ws, "sse": self._sse, "poll": self._poll}
        while not stop.is_set():
            started = time.monotonic()
            try:
                await _until_stopped(sessions[s.transport](), stop)
                if stop.is_set():
                    return
                log.info("connection to %s ended; reconnecting", s.gateway)
            except Unauthorized:
                raise
            except Exception as exc:
                log.warning("connection to %s lost: %s; reconnecting", s.gateway, _kind(exc))
            if time.monotonic() - started > HEALTHY_S:
                attempt = 0
            delay = backoff(attempt, self._retry_base_s, s.max_backoff_s)
            attempt += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    # -- forwarding -----------------------------------------------------------------------

    async def forward(self, message: dict[str, Any]) -> str | None:
        """POST one message to the local URL; None once it answered 2xx, else why not."""
        headers = {k: v for k, v in dict(message.get("headers") or {}).items()
                   if k.lower() not in _HOP_BY_HOP and not k.lower().startswith("x-whplane-")}
        headers["X-Whplane-Delivery"] = str(message["delivery"])
        headers["X-Whplane-Attempt"] = str(message.get("attempt", 1))
        headers["X-Whplane-Webhook"] = f"{message.get('namespace')}/{message.get('webhook')}"
        try:
            body = base64.b64decode(message.get("body", ""), validate=True)
            response = await self.http.post(self.settings.forward, content=body,
                                            headers=headers)
        except httpx.HTTPError as exc:
            error = _kind(exc)
        except ValueError:
            error = "undecodable body"
        else:
            if 200 <= response.status_code < 300:
                self.stats.delivered += 1
                return None
            error = f"HTTP {response.status_code}"
        self.stats.failed += 1
        log.warning("forwarding %s (attempt %s) failed: %s", message.get("delivery"),
                    message.get("attempt"), error)
        return error

    async def _forward_all(self, inbox: Inbox,
                           settle: Callable[[list[str], list[dict[str, str]]], Awaitable[None]],
                           ) -> None:
        """Forward what arrives, in order; settle in batches (as soon as nothing waits)."""
        acks: list[str] = []
        nacks: list[dict[str, str]] = []
        while True:
            message = await inbox.get()
            error = await self.forward(message)
            if error is None:
                acks.append(message["id"])
            else:
                nacks.append({"id": message["id"], "error": error})
            if inbox.empty() or len(acks) + len(nacks) >= ACK_BATCH:
                await settle(acks, nacks)
                for entry_id in acks:
                    inbox.done(entry_id)
                for nack in nacks:
                    inbox.done(nack["id"])
                acks, nacks = [], []

    # -- WebSocket ------------------------------------------------------------------------

    async def _ws(self) -> None:
        s = self.settings
        url = s.url("ws").replace("http", "ws", 1)
        query = f"?window={s.window}&heartbeat={s.heartbeat_s:g}"
        try:
            ws = await ws_connect(url + query, additional_headers=self._auth(),
                                  open_timeout=s.connect_timeout_s, ping_interval=None,
                                  max_size=MAX_FRAME_BYTES, close_timeout=5)
        except InvalidStatus as exc:
            if exc.response.status_code == 401:
                raise Unauthorized from None
            raise
        async with ws:
            self._connected("WebSocket")
            inbox = Inbox(s.window)
            heard = _Heard()

            async def settle(acks: list[str], nacks: list[dict[str, str]]) -> None:
                if acks:
                    await ws.send(json.dumps({"type": "ack", "ids": acks}))
                for nack in nacks:
                    await ws.send(json.dumps({"type": "nack", **nack}))

            await _race(self._ws_read(ws, inbox, heard), self._forward_all(inbox, settle),
                        _heartbeat(lambda: ws.send('{"type":"heartbeat"}'), heard,
                                   s.heartbeat_s))

    async def _ws_read(self, ws: ClientConnection, inbox: Inbox, heard: _Heard) -> None:
        async for frame in ws:
            heard.now()
            obj = json.loads(frame)
            if obj.get("type") == "message":
                await self._receive(obj, inbox)
            elif obj.get("type") == "hello":
                log.debug("session %s: %s", obj.get("session"), obj)

    # -- Server-Sent Events ---------------------------------------------------------------

    async def _sse(self) -> None:
        s = self.settings
        timeout = httpx.Timeout(s.connect_timeout_s, read=MISSED_HEARTBEATS * s.heartbeat_s)
        params: dict[str, str | int] = {"window": s.window, "heartbeat": f"{s.heartbeat_s:g}"}
        headers = {**self._auth(), "Accept": "text/event-stream"}
        async with self.http.stream("GET", s.url("sse"), params=params, headers=headers,
                                    timeout=timeout) as response:
            _check(response)
            self._connected("Server-Sent Events")
            inbox = Inbox(s.window)
            hello: asyncio.Future[str] = asyncio.get_running_loop().create_future()

            async def read() -> None:
                parser = SSEParser()
                # A read timeout of MISSED_HEARTBEATS heartbeats: a stalled stream raises.
                async for chunk in response.aiter_bytes():
                    for item in parser.feed(chunk):
                        await self._sse_item(item, inbox, hello)
                raise ConnectionError("the gateway ended the stream")

            async def post(body: dict[str, Any]) -> None:
                body["session"] = await hello
                answer = await self.http.post(s.url("ack"), json=body, headers=self._auth())
                _check(answer)

            acker = _Acker(lambda acks, nacks: post({"type": "ack", "ids": acks,
                                                      "nacks": nacks}))

            async def beat() -> None:
                while True:
                    await asyncio.sleep(s.heartbeat_s)
                    await post({"type": "heartbeat"})

            await _race(read(), self._forward_all(inbox, acker.add), acker.run(), beat())

    async def _sse_item(self, item: Any, inbox: Inbox, hello: asyncio.Future[str]) -> None:
        if isinstance(item, Event):
            obj = json.loads(item.data)
            if item.event == "message":
                await self._receive(obj, inbox)
            elif item.event == "hello" and not hello.done():
                hello.set_result(str(obj["session"]))
        elif isinstance(item, Retry):
            self._retry_base_s = max(self.settings.backoff_base_s, item.milliseconds / 1000)
        elif isinstance(item, Comment):
            pass  # a heartbeat: the read that brought it reset the read timeout

    # -- long poll ------------------------------------------------------------------------

    async def _poll(self) -> None:
        s = self.settings
        session = secrets.token_hex(8)

        async def post(acks: list[str], nacks: list[dict[str, str]]) -> None:
            answer = await self.http.post(
                s.url("ack"), headers=self._auth(),
                json={"type": "ack", "session": session, "ids": acks, "nacks": nacks})
            _check(answer)

        acker = _Acker(post)
        await _race(self._poll_loop(session, acker), acker.run())

    async def _poll_loop(self, session: str, acker: _Acker) -> None:
        s = self.settings
        timeout = httpx.Timeout(s.connect_timeout_s,
                                read=s.poll_wait_s + MISSED_HEARTBEATS * s.heartbeat_s)
        params: dict[str, str | int] = {"session": session, "max": s.window,
                                        "wait": f"{s.poll_wait_s:g}"}
        first = True
        while True:
            response = await self.http.get(s.url("poll"), params=params, headers=self._auth(),
                                           timeout=timeout)
            _check(response)
            if first:
                self._connected("long poll")
                first = False
            for message in response.json()["messages"]:
                error = await self.forward(message)
                if error is None:
                    await acker.add([message["id"]], [])
                else:
                    await acker.add([], [{"id": message["id"], "error": error}])

    # -- shared ---------------------------------------------------------------------------

    async def _receive(self, message: dict[str, Any], inbox: Inbox) -> None:
        if not await inbox.put(message):
            self.stats.skipped_duplicates += 1

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.token}"}

    def _connected(self, how: str) -> None:
        self.stats.connections += 1
        log.info("connected to %s over %s: forwarding %s/%s to %s", self.settings.gateway, how,
                 self.settings.namespace, self.settings.channel, self.settings.forward)


class _Acker:
    """Acks and nacks posted in the background, batched, so that forwarding the next message
    never waits for the gateway to answer the last ack (SSE and long poll)."""

    def __init__(self, post: Callable[[list[str], list[dict[str, str]]], Awaitable[None]]
                 ) -> None:
        self._post = post
        self._acks: list[str] = []  # bounded by the window: nothing more is unacknowledged
        self._nacks: list[dict[str, str]] = []
        self._wake = asyncio.Event()

    async def add(self, acks: list[str], nacks: list[dict[str, str]]) -> None:
        self._acks.extend(acks)
        self._nacks.extend(nacks)
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._acks or self._nacks:
                acks, self._acks = self._acks[:ACK_BATCH], self._acks[ACK_BATCH:]
                nacks, self._nacks = self._nacks[:ACK_BATCH], self._nacks[ACK_BATCH:]
                await self._post(acks, nacks)


class Inbox:
    """Messages received and not yet settled, in order; a message already here is not
    queued twice (the gateway re-sends what it thinks was lost)."""

    def __init__(self, window: int) -> None:
        # The gateway sends at most `window` unacknowledged messages; the bound only guards
        # against one that does not.
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=2 * window)
        self._held: set[str] = set()

    async def put(self, message: dict[str, Any]) -> bool:
        entry_id = str(message["id"])
        if entry_id in self._held:
            return False
        self._held.add(entry_id)
        await self._queue.put(message)
        return True

    async def get(self) -> dict[str, Any]:
        return await self._queue.get()

    def empty(self) -> bool:
        return self._queue.empty()

    def done(self, entry_id: str) -> None:
        self._held.discard(entry_id)


class _Heard:
    def __init__(self) -> None:
        self.at = time.monotonic()

    def now(self) -> None:
        self.at = time.monotonic()


async def _heartbeat(send: Callable[[], Awaitable[None]], heard: _Heard,
                     every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        if time.monotonic() - heard.at > MISSED_HEARTBEATS * every_s:
            raise Stalled(f"nothing from the gateway for {MISSED_HEARTBEATS * every_s:g}s")
        await send()


def _check(response: httpx.Response) -> None:
    if response.status_code == 401:
        raise Unauthorized
    if response.status_code != 200:
        raise ConnectionError(f"the gateway answered HTTP {response.status_code}")


async def _race(*coros: Any) -> None:
    """Run until the first one ends; cancel the rest; re-raise what ended it."""
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


async def _until_stopped(session: Awaitable[None], stop: asyncio.Event) -> None:
    async def stopped() -> None:
        await stop.wait()

    await _race(session, stopped())


def _kind(exc: BaseException) -> str:
    """What went wrong, without URLs or headers (the token travels in one)."""
    if isinstance(exc, Stalled | ConnectionError):
        return str(exc)
    if isinstance(exc, InvalidStatus):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, WebSocketException | httpx.HTTPError | OSError):
        cause = exc.__cause__ or exc.__context__
        suffix = f" ({type(cause).__name__})" if cause is not None else ""
        return f"{type(exc).__name__}{suffix}"
    return type(exc).__name__

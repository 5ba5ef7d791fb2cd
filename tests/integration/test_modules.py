"""Delivery modules against real servers: a small HTTP/1.1 server started here on 127.0.0.1,
the shared Redis (`redis_server`), a private one that gets stopped (`redis_own`), real files."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from immutables import Map
from pydantic import TypeAdapter

from cli.servers import LOOPBACK, RedisServer, free_port
from data_plane.chain import run_chain
from data_plane.clients import Clients
from data_plane.delivery import Delivery
from data_plane.errors import DeliveryError, SsrfBlocked
from data_plane.modules import MODULES
from providers.resources import Connection, Webhook
from providers.snapshot import Endpoint
from tests.docs import connection

_WEBHOOK = TypeAdapter(Webhook)
_CONNECTION = TypeAdapter(Connection)
MARGIN_S = 0.5


# --- a minimal HTTP/1.1 server ----------------------------------------------------------


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HttpServer:
    """Answers by path: /status/NNN, /hang (never answers), /slow (0.2 s then 200); anything
    else 200. Keeps connections alive and records every request."""

    port: int = 0
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    in_flight: int = 0
    max_in_flight: int = 0

    @property
    def base(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while request := await self._read(reader):
                self.requests.append(request)
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                try:
                    status = await self._status(request.target)
                finally:
                    self.in_flight -= 1
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\nok".encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _status(self, target: str) -> int:
        if target.endswith("/hang"):
            await asyncio.sleep(3600)
        if target.endswith("/slow"):
            await asyncio.sleep(0.2)
        if "/status/" in target:
            return int(target.rsplit("/", 1)[1])
        return 200

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> Request | None:
        head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
        if not head:
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return Request(method, target, headers, body)


@pytest.fixture
async def http_server() -> AsyncIterator[HttpServer]:
    state = HttpServer()
    server = await asyncio.start_server(state.handle, LOOPBACK, 0)
    state.port = server.sockets[0].getsockname()[1]
    async with server:
        yield state
        server.close()


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    async with Clients() as c:
        yield c


# --- building endpoints ------------------------------------------------------------------


def endpoint(steps: list[dict[str, Any]], conns: dict[str, dict[str, Any]] | None = None,
             **chain: Any) -> Endpoint:
    hook = _WEBHOOK.validate_python({
        "apiVersion": "whplane/v1", "kind": "Webhook",
        "metadata": {"name": "hook", "namespace": "acme"},
        "spec": {"verify": {"scheme": "none"}, "chain": {"steps": steps, **chain}},
    })
    return Endpoint(hook, None, Map({
        name: _CONNECTION.validate_python(connection(name, "acme", **spec))
        for name, spec in (conns or {}).items()
    }))


def http_endpoint(url: str, step: dict[str, Any] | None = None, **spec: Any) -> Endpoint:
    return endpoint([{"module": "http", "connection": "api", **(step or {})}],
                    {"api": {"type": "http", "url": url, **spec}})


def delivery(body: bytes = b'{"event":"push"}', **kw: Any) -> Delivery:
    headers = kw.pop("headers", {"content-type": "application/json"})
    return Delivery("acme", "hook", body, headers, revision=7, **kw)


async def run_step(ep: Endpoint, d: Delivery, clients: Clients) -> None:
    step = ep.webhook.spec.chain.steps[0]
    await MODULES[step.module](step, ep, d, clients)


# --- http --------------------------------------------------------------------------------


async def test_http_delivers_with_merged_headers(http_server: HttpServer,
                                                 clients: Clients) -> None:
    ep = http_endpoint(
        http_server.base + "/hooks",
        {"config": {"method": "PUT", "path": "/in?x=1", "headers": {"X-Step": "s"},
                    "forward_headers": ["content-type", "x-github-event", "authorization",
                                        "content-length", "x-absent"]}},
        allow_private=True,
        headers={"Authorization": "Bearer conn-token", "X-Step": "from-connection"},
    )
    d = delivery(headers={"content-type": "application/json", "x-github-event": "push",
                          "authorization": "Bearer sender-token", "content-length": "999"},
                 attempt=2)
    await run_step(ep, d, clients)
    [request] = http_server.requests
    assert (request.method, request.target, request.body) == ("PUT", "/hooks/in?x=1", d.body)
    h = request.headers
    assert h["content-type"] == "application/json"
    assert h["x-github-event"] == "push"
    assert h["authorization"] == "Bearer conn-token"  # the connection's, not the sender's
    assert h["x-step"] == "s"  # the step's beats the connection's
    assert h["content-length"] == str(len(d.body))  # never forwarded
    assert h["x-whplane-delivery"] == d.id
    assert h["x-whplane-attempt"] == "3"
    assert "x-absent" not in h


async def test_same_url_refused_without_allow_private(http_server: HttpServer,
                                                      clients: Clients) -> None:
    ep = http_endpoint(http_server.base + "/hooks")
    with pytest.raises(SsrfBlocked) as caught:
        await run_step(ep, delivery(), clients)
    assert caught.value.retryable is False
    assert caught.value.destination == "http:acme/api"
    assert "loopback" in str(caught.value)
    assert http_server.connections == 0


async def test_localhost_name_refused_too(http_server: HttpServer, clients: Clients) -> None:
    ep = http_endpoint(f"http://localhost:{http_server.port}/hooks")
    with pytest.raises(SsrfBlocked):
        await run_step(ep, delivery(), clients)
    assert http_server.connections == 0


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(500, True), (502, True), (503, True), (429, True), (408, True),
     (400, False), (401, False), (404, False), (422, False), (302, False)],
)
async def test_http_status_classification(status: int, retryable: bool,
                                          http_server: HttpServer, clients: Clients) -> None:
    ep = http_endpoint(f"{http_server.base}/status/{status}", allow_private=True)
    with pytest.raises(DeliveryError) as caught:
        await run_step(ep, delivery(), clients)
    assert caught.value.retryable is retryable
    assert str(caught.value) == f"http:acme/api: HTTP {status}"


async def test_any_2xx_is_success(http_server: HttpServer, clients: Clients) -> None:
    for status in (200, 201, 202, 204):
        await run_step(http_endpoint(f"{http_server.base}/status/{status}", allow_private=True),
                       delivery(), clients)
    assert http_server.connections == 1  # one pooled keep-alive connection for all four


async def test_hanging_server_is_cut_by_the_step_timeout(http_server: HttpServer,
                                                         clients: Clients) -> None:
    ep = http_endpoint(http_server.base + "/hang", {"timeout_s": 0.3}, allow_private=True,
                       timeout_s=30)
    start = time.perf_counter()
    with pytest.raises(DeliveryError) as caught:
        await run_step(ep, delivery(), clients)
    assert time.perf_counter() - start < 0.3 + MARGIN_S
    assert caught.value.retryable is True
    assert "timed out" in str(caught.value) or "Timeout" in str(caught.value)


async def test_connection_timeout_applies_without_a_step_timeout(
    http_server: HttpServer, clients: Clients
) -> None:
    ep = http_endpoint(http_server.base + "/hang", allow_private=True, timeout_s=0.3)
    start = time.perf_counter()
    with pytest.raises(DeliveryError):
        await run_step(ep, delivery(), clients)
    assert time.perf_counter() - start < 0.3 + MARGIN_S


async def test_connection_refused_is_retryable(clients: Clients) -> None:
    ep = http_endpoint(f"http://{LOOPBACK}:{free_port()}/", allow_private=True)
    with pytest.raises(DeliveryError) as caught:
        await run_step(ep, delivery(), clients)
    assert caught.value.retryable is True
    assert "ConnectError" in str(caught.value)


async def test_max_connections_caps_requests_in_flight(http_server: HttpServer,
                                                       clients: Clients) -> None:
    ep = http_endpoint(http_server.base + "/slow", allow_private=True, max_connections=2)
    await asyncio.gather(*(run_step(ep, delivery(), clients) for _ in range(5)))
    assert len(http_server.requests) == 5
    assert http_server.max_in_flight == 2


async def test_missing_connection_is_a_config_problem(clients: Clients) -> None:
    ep = endpoint([{"module": "http", "connection": "gone"}])
    with pytest.raises(DeliveryError, match="'gone' is not in the config") as caught:
        await run_step(ep, delivery(), clients)
    assert caught.value.retryable is False


async def test_http_step_on_a_redis_connection_is_a_config_problem(clients: Clients) -> None:
    ep = endpoint([{"module": "http", "connection": "r"}],
                  {"r": {"type": "redis", "url": "redis://127.0.0.1:1/0"}})
    with pytest.raises(DeliveryError, match="of type 'redis'") as caught:
        await run_step(ep, delivery(), clients)
    assert caught.value.retryable is False


# --- redis_stream ------------------------------------------------------------------------


def redis_endpoint(module: str, url: str, **config: Any) -> Endpoint:
    return endpoint([{"module": module, "connection": "events", "config": config}],
                    {"events": {"type": "redis", "url": url, "timeout_s": 2}})


@pytest.fixture
async def rds(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def test_redis_stream_xadd(redis_server: RedisServer, rds: aioredis.Redis,
                                 clients: Clients) -> None:
    stream = f"t:{uuid.uuid4().hex}"
    d = delivery(body=b"\x00\xffbinary", headers={"content-type": "application/octet-stream"})
    await run_step(redis_endpoint("redis_stream", redis_server.url, stream=stream), d, clients)
    [(_, fields)] = await rds.xrange(stream)  # type: ignore[misc]
    assert fields == {
        b"id": d.id.encode(),
        b"namespace": b"acme",
        b"webhook": b"hook",
        b"body": b"\x00\xffbinary",
        b"headers": b'{"content-type":"application/octet-stream"}',
        b"received_at": repr(d.received_at).encode(),
    }


async def test_redis_stream_maxlen_trims(redis_server: RedisServer, rds: aioredis.Redis,
                                         clients: Clients) -> None:
    stream = f"t:{uuid.uuid4().hex}"
    ep = redis_endpoint("redis_stream", redis_server.url, stream=stream, maxlen=10)
    for _ in range(300):
        await run_step(ep, delivery(), clients)
    # Approximate trimming drops whole macro-nodes (100 entries by default), never below 10.
    assert 10 <= await rds.xlen(stream) < 300


async def test_redis_stream_wrong_type_is_permanent(redis_server: RedisServer,
                                                    rds: aioredis.Redis,
                                                    clients: Clients) -> None:
    key = f"t:{uuid.uuid4().hex}"
    await rds.set(key, "a string")
    with pytest.raises(DeliveryError, match="WRONGTYPE") as caught:
        await run_step(redis_endpoint("redis_stream", redis_server.url, stream=key),
                       delivery(), clients)
    assert caught.value.retryable is False
    assert caught.value.destination == "redis_stream:acme/events"


async def test_redis_down_is_retryable(redis_own: RedisServer, clients: Clients) -> None:
    ep = redis_endpoint("redis_stream", redis_own.url, stream="s")
    await run_step(ep, delivery(), clients)  # a pooled connection now exists
    redis_own.stop()
    with pytest.raises(DeliveryError) as caught:
        await run_step(ep, delivery(), clients)
    assert caught.value.retryable is True
    assert "ConnectionError" in str(caught.value)
    redis_own.start()
    await run_step(ep, delivery(), clients)  # the shared client recovers by itself


async def test_redis_wrong_password_is_permanent(redis_server: RedisServer,
                                                 rds: aioredis.Redis, clients: Clients) -> None:
    user = f"t-{uuid.uuid4().hex[:12]}"
    await rds.acl_setuser(user, enabled=True, passwords=["+right-pass"], keys=["*"],
                          commands=["+@all"])
    try:
        def ep(password: str) -> Endpoint:
            return endpoint(
                [{"module": "redis_stream", "connection": "r", "config": {"stream": "s"}}],
                {"r": {"type": "redis", "url": redis_server.url, "username": user,
                       "password": password}},
            )

        await run_step(ep("right-pass"), delivery(), clients)
        with pytest.raises(DeliveryError) as caught:
            await run_step(ep("wrong-pass"), delivery(), clients)
    finally:
        await rds.acl_deluser(user)
    assert caught.value.retryable is False
    assert "credentials" in str(caught.value)
    assert "wrong-pass" not in str(caught.value)


# --- redis_publish -----------------------------------------------------------------------


async def test_redis_publish_reaches_a_subscriber(redis_server: RedisServer,
                                                  rds: aioredis.Redis, clients: Clients) -> None:
    channel = f"t:{uuid.uuid4().hex}"
    async with rds.pubsub() as pubsub:
        await pubsub.subscribe(channel)
        await pubsub.get_message(timeout=1.0)  # the subscribe confirmation
        text, binary = delivery(body='{"héllo":1}'.encode()), delivery(body=b"\xff\xfe")
        ep = redis_endpoint("redis_publish", redis_server.url, channel=channel)
        await run_step(ep, text, clients)
        await run_step(ep, binary, clients)
        received: list[dict[str, Any]] = []
        while len(received) < 2:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2.0)
            assert message is not None, "no message within 2s"
            received.append(json.loads(message["data"]))
    first, second = received
    assert first == {"id": text.id, "namespace": "acme", "webhook": "hook",
                     "received_at": text.received_at,
                     "headers": {"content-type": "application/json"},
                     "body": '{"héllo":1}', "body_encoding": "utf-8"}
    assert second["body_encoding"] == "base64"
    assert base64.b64decode(second["body"]) == b"\xff\xfe"


async def test_redis_publish_without_subscribers_is_fine(redis_server: RedisServer,
                                                         clients: Clients) -> None:
    ep = redis_endpoint("redis_publish", redis_server.url, channel=f"t:{uuid.uuid4().hex}")
    await run_step(ep, delivery(), clients)


async def test_redis_clients_are_bounded(redis_server: RedisServer) -> None:
    base = redis_server.url.rsplit("/", 1)[0]
    async with Clients(max_redis_clients=2) as clients:
        for db in (1, 2, 3, 1, 2, 3):
            ep = redis_endpoint("redis_stream", f"{base}/{db}", stream="bounded")
            await run_step(ep, delivery(), clients)
        start = time.perf_counter()
    # Evicted clients wait out a grace period before closing; aclose does not wait for it.
    assert time.perf_counter() - start < 1.0


# --- file --------------------------------------------------------------------------------


async def test_file_appends_json_lines(tmp_path: Path, clients: Clients) -> None:
    path = tmp_path / "hooks.jsonl"
    ep = endpoint([{"module": "file", "config": {"path": str(path)}}])
    deliveries = [delivery(body=f'{{"n":{i}}}\n\u2028'.encode()) for i in range(50)]
    deliveries.append(delivery(body=b"\x00\xff" * 5000))
    await asyncio.gather(*(run_step(ep, d, clients) for d in deliveries))
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    records = [json.loads(line) for line in lines[:-1]]
    assert sorted(r["id"] for r in records) == sorted(d.id for d in deliveries)
    by_id = {r["id"]: r for r in records}
    assert by_id[deliveries[0].id]["body"] == '{"n":0}\n\u2028'
    assert base64.b64decode(by_id[deliveries[-1].id]["body"]) == b"\x00\xff" * 5000


async def test_file_in_a_missing_directory_creates_it(tmp_path: Path, clients: Clients) -> None:
    target = tmp_path / "new" / "dir" / "x.jsonl"
    await run_step(endpoint([{"module": "file", "config": {"path": str(target)}}]), delivery(),
                   clients)
    assert json.loads(target.read_text())["webhook"] == "hook"


async def test_file_that_cannot_be_written_is_a_config_problem(tmp_path: Path,
                                                               clients: Clients) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    ep = endpoint([{"module": "file", "config": {"path": str(blocker / "x.jsonl")}}])
    with pytest.raises(DeliveryError) as caught:
        await run_step(ep, delivery(), clients)
    assert caught.value.retryable is False


# --- log ---------------------------------------------------------------------------------


async def test_log_line(caplog: pytest.LogCaptureFixture, clients: Clients) -> None:
    caplog.set_level(logging.DEBUG, logger="data_plane.modules.log")
    d = delivery(body=b'{"secret":"s"}\nFORGED line')
    await run_step(endpoint([{"module": "log"}]), d, clients)
    await run_step(endpoint([{"module": "log",
                              "config": {"level": "warning", "include_body": True}}]), d, clients)
    plain, with_body = caplog.records
    assert plain.levelno == logging.INFO
    assert plain.getMessage() == f"webhook namespace=acme webhook=hook id={d.id} size=26"
    assert plain.__dict__["whplane"] == {"namespace": "acme", "webhook": "hook", "id": d.id, "size": 26}
    assert with_body.levelno == logging.WARNING
    assert "\n" not in with_body.getMessage()  # the body cannot forge a second log line
    assert with_body.__dict__["whplane"]["body"] == '{"secret":"s"}\nFORGED line'


# --- a whole chain over real destinations ------------------------------------------------


async def test_chain_over_real_modules(http_server: HttpServer, redis_server: RedisServer,
                                       rds: aioredis.Redis, tmp_path: Path,
                                       clients: Clients) -> None:
    stream = f"t:{uuid.uuid4().hex}"
    path = tmp_path / "out.jsonl"
    ep = endpoint(
        [{"module": "log"},
         {"module": "http", "connection": "api"},
         {"module": "redis_stream", "connection": "events", "config": {"stream": stream}},
         {"module": "file", "config": {"path": str(path)}}],
        {"api": {"type": "http", "url": http_server.base, "allow_private": True},
         "events": {"type": "redis", "url": redis_server.url}},
        mode="parallel",
    )
    d = delivery()
    result = await run_chain(ep, d, clients)
    assert result.ok, result.error
    assert [s.module for s in result.steps] == ["log", "http", "redis_stream", "file"]
    assert len(http_server.requests) == 1
    assert await rds.xlen(stream) == 1
    assert json.loads(path.read_text())["id"] == d.id

    # The same chain with the HTTP destination failing: the others still ran (parallel), the
    # result carries the HTTP failure.
    failing = endpoint(
        [{"module": "http", "connection": "api"}, {"module": "file",
                                                   "config": {"path": str(path)}}],
        {"api": {"type": "http", "url": f"{http_server.base}/status/503",
                 "allow_private": True}},
        continue_on_error=True,
    )
    result = await run_chain(failing, delivery(), clients)
    assert not result.ok and result.error is not None and result.error.retryable
    assert str(result.error) == "step 0 (http) to http:acme/api failed: HTTP 503"
    assert [s.ok for s in result.steps] == [False, True]


async def test_unsendable_header_is_a_config_problem(http_server: HttpServer,
                                                     clients: Clients) -> None:
    ep = http_endpoint(http_server.base, allow_private=True,
                       headers={"X-Token": "s3cret\r\nX-Injected: 1"})
    with pytest.raises(DeliveryError, match="not sendable") as caught:
        await run_step(ep, delivery(), clients)
    assert caught.value.retryable is False
    assert "s3cret" not in str(caught.value)
    assert http_server.requests == []

"""`s3` (moto, read back with boto3), `websocket` and `zeromq` (peers are sockets in the test,
from the websockets and pyzmq libraries), and `clickhouse` against a stand-in speaking its HTTP
interface: no ClickHouse server runs here (no wheel ships one; Debian's is years old). Through
a real gateway process: test_modules_gateway.py."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from cli.servers import LOOPBACK, free_port
from data_plane.clients import Clients
from data_plane.errors import DeliveryError, SsrfBlocked
from data_plane.modules.s3 import object_key
from tests.module_kit import delivery, endpoint, run_step


def s3_client(endpoint_url: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def objects(s3: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


# --- s3 ----------------------------------------------------------------------------------


async def test_s3_one_object_per_delivery(aws_endpoint: str) -> None:
    s3 = s3_client(aws_endpoint)
    bucket = f"b{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    ep = endpoint({"module": "s3", "connection": "dest"},
                  {"type": "s3", "url": f"s3://{bucket}/in?endpoint={aws_endpoint}",
                   "allow_private": True, "access_key_id": "test", "secret_access_key": "test"})
    d = delivery(b'{"event":"push"}')
    async with Clients() as clients:
        await run_step(ep, d, clients)
        await run_step(ep, d.next_attempt(), clients)  # a retry writes the same object
    day = datetime.fromtimestamp(d.received_at, UTC)
    key = f"in/acme/hook/{day:%Y/%m/%d}/{d.id}.json"
    assert objects(s3, bucket) == [key]
    got = s3.get_object(Bucket=bucket, Key=key)
    doc = json.loads(got["Body"].read())
    assert (doc["id"], doc["body"], got["ContentType"]) == (
        d.id, '{"event":"push"}', "application/json")


def test_s3_key_without_prefix() -> None:
    d = delivery(received_at=0.0)
    assert object_key("", d) == f"acme/hook/1970/01/01/{d.id}.json"


@pytest.mark.parametrize("url", ["s3://B/x?endpoint=ftp://h", "s3://b", "s3://bucket?regoin=x"])
async def test_s3_bad_url_is_not_retried(url: str) -> None:
    ep = endpoint({"module": "s3", "connection": "dest"},
                  {"type": "s3", "url": url, "allow_private": True,
                   "access_key_id": "k", "secret_access_key": "s"})
    async with Clients() as clients:
        with pytest.raises(DeliveryError) as caught:
            await run_step(ep, delivery(), clients)
    assert not caught.value.retryable and caught.value.destination == "s3:acme/dest"


async def test_s3_loopback_endpoint_refused_without_allow_private(aws_endpoint: str) -> None:
    ep = endpoint({"module": "s3", "connection": "dest"},
                  {"type": "s3", "url": f"s3://bucket?endpoint={aws_endpoint}",
                   "access_key_id": "k", "secret_access_key": "s"})
    async with Clients() as clients:
        with pytest.raises(SsrfBlocked):
            await run_step(ep, delivery(), clients)


# --- websocket ---------------------------------------------------------------------------


@pytest.fixture
async def ws_peer() -> AsyncIterator[tuple[str, list[Any]]]:
    from websockets.asyncio.server import serve

    received: list[Any] = []

    async def handler(ws: Any) -> None:
        received.append(("headers", dict(ws.request.headers)))
        async for message in ws:
            received.append(message)

    async with serve(handler, LOOPBACK, 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://{LOOPBACK}:{port}/hooks", received


async def test_websocket_one_text_message_per_delivery(ws_peer: tuple[str, list[Any]]) -> None:
    url, received = ws_peer
    ep = endpoint({"module": "websocket", "connection": "dest"},
                  {"type": "websocket", "url": url, "allow_private": True,
                   "headers": {"Authorization": "{$WS_TOKEN}", "X-Team": "a"}})
    d = delivery(b'{"event":"push"}')
    async with Clients() as clients:
        await run_step(ep, d, clients)
        await run_step(ep, delivery(b"\xff\x00"), clients)  # the same connection
    # The step returned after the peer's pong: both messages are there already.
    (_, headers), first, second = received
    assert headers["x-team"] == "a"
    assert isinstance(first, str) and json.loads(first)["id"] == d.id
    assert json.loads(first)["body"] == '{"event":"push"}'
    assert json.loads(second)["body_encoding"] == "base64"


async def test_websocket_peer_down_is_retryable() -> None:
    ep = endpoint({"module": "websocket", "connection": "dest"},
                  {"type": "websocket", "url": f"ws://{LOOPBACK}:{free_port()}/",
                   "allow_private": True, "timeout_s": 2})
    async with Clients() as clients:
        with pytest.raises(DeliveryError) as caught:
            await run_step(ep, delivery(), clients)
    assert caught.value.retryable and str(caught.value).startswith("websocket:acme/dest: ")


# --- zeromq ------------------------------------------------------------------------------


@pytest.fixture
def zmq_context() -> Iterator[Any]:
    import zmq

    context = zmq.Context()
    yield context
    context.destroy(linger=0)


async def test_zeromq_push_to_a_pull_peer(zmq_context: Any) -> None:
    import zmq

    pull = zmq_context.socket(zmq.PULL)
    port = pull.bind_to_random_port(f"tcp://{LOOPBACK}")
    ep = endpoint({"module": "zeromq", "connection": "dest", "config": {"socket": "push"}},
                  {"type": "zeromq", "url": f"tcp://{LOOPBACK}:{port}", "allow_private": True})
    d = delivery()
    async with Clients() as clients:
        await run_step(ep, d, clients)
    assert pull.poll(5000)
    assert json.loads(pull.recv())["id"] == d.id


async def test_zeromq_push_without_peer_times_out_retryable() -> None:
    ep = endpoint({"module": "zeromq", "connection": "dest", "config": {"socket": "push"}},
                  {"type": "zeromq", "url": f"tcp://{LOOPBACK}:{free_port()}",
                   "allow_private": True, "timeout_s": 0.5})
    async with Clients() as clients:
        with pytest.raises(DeliveryError, match="no peer took") as caught:
            await run_step(ep, delivery(), clients)
    assert caught.value.retryable


async def test_zeromq_pub_to_a_sub_peer(zmq_context: Any) -> None:
    import zmq

    sub = zmq_context.socket(zmq.SUB)
    port = sub.bind_to_random_port(f"tcp://{LOOPBACK}")
    sub.setsockopt(zmq.SUBSCRIBE, b"acme/hook")
    ep = endpoint({"module": "zeromq", "connection": "dest", "config": {"socket": "pub"}},
                  {"type": "zeromq", "url": f"tcp://{LOOPBACK}:{port}", "allow_private": True})
    async with Clients() as clients:
        # PUB drops what is sent before the subscription reached it: send until one arrives.
        for _ in range(50):
            await run_step(ep, delivery(), clients)
            if sub.poll(100):
                break
    topic, body = sub.recv_multipart()
    assert topic == b"acme/hook" and json.loads(body)["namespace"] == "acme"


# --- clickhouse (a stand-in for its HTTP interface) ------------------------------------------


@pytest.fixture
async def clickhouse_standin() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """Answers 200 to every query and records it: query string, headers, body."""
    seen: list[dict[str, Any]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while not reader.at_eof():
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                target = head[0].split(" ")[1]
                headers = {k.lower(): v.strip() for k, _, v in
                           (line.partition(":") for line in head[1:] if line)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                seen.append({"params": parse_qs(urlsplit(target).query), "headers": headers,
                             "body": body})
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://{LOOPBACK}:{port}/?database=events", seen


async def test_clickhouse_creates_the_table_once_and_inserts_a_row(
    clickhouse_standin: tuple[str, list[dict[str, Any]]],
) -> None:
    url, seen = clickhouse_standin
    ep = endpoint({"module": "clickhouse", "connection": "dest", "config": {"table": "hooks"}},
                  {"type": "clickhouse", "url": url, "allow_private": True,
                   "username": "u", "password": "{$CH_PASSWORD}"})
    d = delivery(b'{"event":"push"}')
    async with Clients() as clients:
        await run_step(ep, d, clients)
        await run_step(ep, delivery(), clients)
    create, first, _second = seen
    assert create["params"]["query"][0].startswith("CREATE TABLE IF NOT EXISTS `hooks`")
    assert first["params"]["query"][0].startswith("INSERT INTO `hooks` (id, namespace")
    assert first["params"]["database"] == ["events"]
    assert first["params"]["insert_deduplication_token"] == [d.id]
    assert first["headers"]["x-clickhouse-user"] == "u"
    row = json.loads(first["body"])
    assert (row["id"], json.loads(row["payload"])) == (d.id, {"event": "push"})


async def test_clickhouse_down_is_retryable() -> None:
    ep = endpoint({"module": "clickhouse", "connection": "dest", "config": {"table": "t"}},
                  {"type": "clickhouse", "url": f"http://{LOOPBACK}:{free_port()}/",
                   "allow_private": True, "timeout_s": 2})
    async with Clients() as clients:
        with pytest.raises(DeliveryError) as caught:
            await run_step(ep, delivery(), clients)
    assert caught.value.retryable and str(caught.value).startswith("clickhouse:acme/dest: ")

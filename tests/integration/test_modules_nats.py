"""`nats` against a real NATS server with JetStream (127.0.0.1:4222, or NATS_URL), read back
with a few lines of the NATS text protocol over a plain socket (an independent client, not
nats-py): core publishes with headers, JetStream publishes acknowledged and deduplicated by
delivery id, failures classified, and the real gateway process."""

from __future__ import annotations

import base64
import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from cli.servers import free_port
from data_plane.clients import Clients
from data_plane.errors import DeliveryError, SsrfBlocked
from tests.module_kit import Gateway, connection_doc, delivery, endpoint, run_step, webhook_doc


class RawNats:
    """The NATS client protocol by hand: CONNECT, SUB, PUB, and reading MSG/HMSG."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port or 4222), timeout=10)
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

    def _pong(self) -> None:
        while (line := self._line()) != b"PONG":
            if line == b"PING":  # the server checks on us when we were quiet for a while
                self.sock.sendall(b"PONG\r\n")
            # A server may send INFO at any time (2.15 does right after CONNECT; 2.9 did not).
            elif line != b"+OK" and not line.startswith(b"INFO "):
                raise AssertionError(f"unexpected {line!r}")

    def request(self, subject: str, payload: dict[str, Any]) -> dict[str, Any]:
        inbox = f"_INBOX.{uuid.uuid4().hex}"
        self.subscribe(inbox)
        data = json.dumps(payload).encode()
        self.sock.sendall(f"PUB {subject} {inbox} {len(data)}\r\n".encode() + data + b"\r\n")
        _, _, body = self.next_message()
        return json.loads(body)  # type: ignore[no-any-return]

    def next_message(self) -> tuple[str, dict[str, str], bytes]:
        """(subject, headers, payload) of the next message."""
        while True:
            line = self._line()
            if line == b"PING":
                self.sock.sendall(b"PONG\r\n")
                continue
            fields = line.split()
            if fields[0] == b"MSG":
                size = int(fields[-1])
                data = self._exactly(size + 2)[:-2]
                return fields[1].decode(), {}, data
            if fields[0] == b"HMSG":
                head, total = int(fields[-2]), int(fields[-1])
                data = self._exactly(total + 2)[:-2]
                return fields[1].decode(), _headers(data[:head]), data[head:]
            if fields[0] not in (b"+OK", b"INFO"):
                raise AssertionError(f"unexpected {line!r}")

    def close(self) -> None:
        self.sock.close()

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, "the server closed the connection"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            assert chunk, "the server closed the connection"
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data


def _headers(block: bytes) -> dict[str, str]:
    lines = block.decode().split("\r\n")[1:]
    return dict(line.split(": ", 1) for line in lines if line)


@pytest.fixture
def raw(nats_url: str) -> Iterator[RawNats]:
    client = RawNats(nats_url)
    yield client
    client.close()


@pytest.fixture
def subject() -> str:
    return f"wh.test.{uuid.uuid4().hex[:8]}"


@pytest.fixture
def stream(raw: RawNats, subject: str) -> Iterator[str]:
    name = f"WH_TEST_{uuid.uuid4().hex[:8].upper()}"
    created = raw.request(f"$JS.API.STREAM.CREATE.{name}", {
        "name": name, "subjects": [subject], "storage": "memory", "duplicate_window": 60_000_000_000})
    assert "error" not in created, created
    yield name
    raw.request(f"$JS.API.STREAM.DELETE.{name}", {})


def step(subject: str, jetstream: bool = False) -> dict[str, Any]:
    return {"module": "nats", "connection": "dest",
            "config": {"subject": subject, "jetstream": jetstream}}


async def test_core_publish_with_headers(nats_url: str, raw: RawNats, subject: str) -> None:
    raw.subscribe(subject)
    ep = endpoint(step(subject), {"type": "nats", "url": nats_url, "allow_private": True})
    d = delivery(b'{"event":"push"}')
    async with Clients() as clients:
        await run_step(ep, d, clients)
        await run_step(ep, delivery(b"second", headers={}), clients)  # the pooled client
    got_subject, headers, body = raw.next_message()
    assert (got_subject, body) == (subject, b'{"event":"push"}')
    assert headers == {"Nats-Msg-Id": d.id, "Whplane-Namespace": "acme",
                       "Whplane-Webhook": "hook", "Content-Type": "application/json"}
    assert raw.next_message()[2] == b"second"


async def test_jetstream_acknowledged_once_per_delivery(nats_url: str, raw: RawNats,
                                                        subject: str, stream: str) -> None:
    ep = endpoint(step(subject, jetstream=True),
                  {"type": "nats", "url": nats_url, "allow_private": True})
    d = delivery(b'{"n":1}')
    async with Clients() as clients:
        await run_step(ep, d, clients)
        await run_step(ep, d.next_attempt(), clients)  # a retry: the stream drops the repeat
        await run_step(ep, delivery(b'{"n":2}'), clients)
    info = raw.request(f"$JS.API.STREAM.INFO.{stream}", {})
    assert info["state"]["messages"] == 2
    first = raw.request(f"$JS.API.STREAM.MSG.GET.{stream}", {"seq": 1})["message"]
    assert base64.b64decode(first["data"]) == b'{"n":1}'
    assert f"Nats-Msg-Id: {d.id}" in base64.b64decode(first["hdrs"]).decode()


async def test_jetstream_without_a_stream_is_not_retried(nats_url: str) -> None:
    ep = endpoint(step(f"wh.nostream.{uuid.uuid4().hex[:8]}", jetstream=True),
                  {"type": "nats", "url": nats_url, "allow_private": True, "timeout_s": 3})
    async with Clients() as clients:
        with pytest.raises(DeliveryError) as caught:
            await run_step(ep, delivery(), clients)
    assert not caught.value.retryable, caught.value


async def test_down_is_retryable_and_never_shows_the_token() -> None:
    ep = endpoint(step("a.b"), {"type": "nats", "url": f"nats://127.0.0.1:{free_port()}",
                                "token": "s3cret-token", "allow_private": True, "timeout_s": 2})
    async with Clients() as clients:
        with pytest.raises(DeliveryError) as caught:
            await run_step(ep, delivery(), clients)
    assert caught.value.retryable, caught.value
    assert str(caught.value).startswith("nats:acme/dest: ")
    assert "s3cret-token" not in str(caught.value)
    # A server that refuses is given up on, not dialled again until the step times out.
    assert "NoServersError" in str(caught.value), caught.value


async def test_loopback_refused_without_allow_private(nats_url: str) -> None:
    ep = endpoint(step("a.b"), {"type": "nats", "url": nats_url})
    async with Clients() as clients:
        with pytest.raises(SsrfBlocked):
            await run_step(ep, delivery(), clients)


def test_gateway_delivers_to_jetstream(tmp_path: Path, nats_url: str, raw: RawNats,
                                       subject: str, stream: str) -> None:
    docs = [
        connection_doc("dest", {"type": "nats", "url": nats_url, "allow_private": True}),
        webhook_doc("to-nats", [step(subject, jetstream=True)]),
    ]
    with Gateway(tmp_path, docs) as gw:
        answer = gw.post("to-nats", {"n": 1})
        assert answer.status_code == 200, answer.text
    deadline = time.monotonic() + 5
    while raw.request(f"$JS.API.STREAM.INFO.{stream}", {})["state"]["messages"] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first = raw.request(f"$JS.API.STREAM.MSG.GET.{stream}", {"seq": 1})["message"]
    assert json.loads(base64.b64decode(first["data"])) == {"n": 1}
    assert answer.json()["id"] in base64.b64decode(first["hdrs"]).decode()

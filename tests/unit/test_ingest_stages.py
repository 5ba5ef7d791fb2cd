"""The ingest stages against a stand-in gateway (anything that is an `IngestHost`): admission
counts only requests past their body, exactly N of them; request ids; JSON detection; the
text log keeps one event per line."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from immutables import Map
from pydantic import TypeAdapter
from starlette.types import Message

from data_plane.clients import Clients
from data_plane.compiled import CompiledCache
from data_plane.ingest import Ingest, IngestHost
from data_plane.logs import TextFormatter
from data_plane.metrics import GatewayMetrics
from data_plane.queue import DeliveryQueue
from providers.resources import Namespace, Webhook
from providers.snapshot import Endpoint, Snapshot

SECRET = "unit-secret"


def webhook(**limits: Any) -> Webhook:
    return TypeAdapter(Webhook).validate_python({
        "apiVersion": "whplane/v1", "kind": "Webhook",
        "metadata": {"name": "gh", "namespace": "acme"},
        "spec": {"verify": {"scheme": "github", "secret": SECRET}, "limits": limits,
                 "chain": {"steps": [{"module": "log"}]}},
    })  # fmt: skip


@dataclass
class Holder:
    current: Snapshot
    ready: bool = True


@dataclass
class Host:
    """Just what the hot path needs; a real `Gateway` has the same members."""

    holder: Holder
    clients: Clients
    compiled: CompiledCache = field(default_factory=CompiledCache)
    metrics: GatewayMetrics = field(default_factory=lambda: GatewayMetrics.create({}))
    queue: DeliveryQueue | None = None
    n: int = 0

    def ids(self) -> str:
        self.n += 1
        return f"id-{self.n}"

    async def rate_limited(
        self, ns: str, name: str, hook: Webhook, namespace: Namespace | None
    ) -> float | None:
        return None

    async def first_time(self, ns: str, name: str, key: str, window_s: float) -> bool:
        return True

    async def forget(self, ns: str, name: str, key: str) -> None:
        return None


@pytest.fixture
async def host() -> AsyncIterator[Host]:
    hook = webhook(max_json_depth=3)
    snap = Snapshot(revision=7, _endpoints={("acme", "gh"): Endpoint(hook, None, Map())})
    clients = Clients()
    yield Host(Holder(snap), clients)
    await clients.aclose()


def scope(headers: dict[str, str] | None = None) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/webhook/acme/gh", "query_string": b"",
            "client": ("127.0.0.1", 1), "scheme": "http", "root_path": "",
            "headers": [(k.encode(), v.encode()) for k, v in (headers or {}).items()]}


def signed(body: bytes, ctype: str | None = "application/json", **extra: str) -> dict[str, str]:
    sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    out = {"x-hub-signature-256": sig, **extra}
    if ctype is not None:
        out["content-type"] = ctype
    return out


class Call:
    """One request through the ASGI interface; `answer` holds status, headers and body."""

    def __init__(self, ingest: Ingest, headers: dict[str, str], body: bytes,
                 gate: asyncio.Event | None = None) -> None:
        self.ingest, self.headers, self.body, self.gate = ingest, headers, body, gate
        self.status = 0
        self.answer_headers: dict[bytes, bytes] = {}
        self.answer = b""

    async def receive(self) -> Message:
        if self.gate is not None:  # a sender trickling its body
            await self.gate.wait()
        return {"type": "http.request", "body": self.body, "more_body": False}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.answer_headers = dict(message["headers"])
        else:
            self.answer += message.get("body", b"")

    async def run(self) -> Call:
        await self.ingest(scope(self.headers), self.receive, self.send)
        return self


async def test_exactly_n_are_admitted(host: IngestHost) -> None:
    ingest = Ingest(host, max_concurrent=1)
    ok = await Call(ingest, signed(b"{}"), b"{}").run()
    assert ok.status == 200, ok.answer  # before: a limit of 1 refused everything
    ingest.working = 1  # one being handled: the next is one too many
    busy = await Call(ingest, signed(b"{}"), b"{}").run()
    assert busy.status == 503 and busy.answer_headers[b"retry-after"] == b"1"


async def test_a_body_being_read_holds_no_slot(host: IngestHost) -> None:
    ingest = Ingest(host, max_concurrent=1)
    gate = asyncio.Event()
    slow = asyncio.create_task(Call(ingest, signed(b"{}"), b"{}", gate).run())
    await asyncio.sleep(0.01)
    assert ingest.working == 0
    assert (await Call(ingest, signed(b"{}"), b"{}").run()).status == 200
    gate.set()
    assert (await slow).status == 200 and ingest.working == 0


@pytest.mark.parametrize(("given", "kept"), [
    ("req-42.a_b:c/d+e=f@g", True),
    ("r" * 128, True),
    ("r" * 129, False),
    ("x] INFO control_plane.audit [admin", False),
    ("caf\xe9", False),
])  # fmt: skip
async def test_request_ids(host: IngestHost, given: str, kept: bool) -> None:
    call = Call(Ingest(host, 10), {}, b"{}")
    await call.ingest({**scope(), "headers": [(b"x-request-id", given.encode("latin-1"))]},
                      call.receive, call.send)
    echoed = call.answer_headers[b"x-request-id"].decode()
    assert (echoed == given) is kept and len(echoed) <= 128


@pytest.mark.parametrize(("body", "ctype", "status"), [
    (b"[[[[]]]]", "application/JSON", 400),
    (b"[[[[]]]]", "application/cloudevents+json", 400),
    (b"[[[[]]]]", None, 400),
    (b"\r\n {{{{}}}}", None, 400),
    (b"[[[]]]", None, 200),
    (b"[[[[]]]]", "text/plain", 200),
    (b"x=[[[[", None, 200),
])  # fmt: skip
async def test_json_depth_applies_to_any_json(
    host: IngestHost, body: bytes, ctype: str | None, status: int
) -> None:
    call = await Call(Ingest(host, 10), signed(body, ctype), body).run()
    assert call.status == status, call.answer


def test_the_text_log_keeps_one_event_per_line() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("test_ingest_stages.forge")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        forged = "2030-01-01 00:00:00,000 INFO control_plane.audit deleted acme"
        logger.warning("a\n%s", forged)
        logger.warning("b\x85%s\u2028%s\x1b[2J", forged, forged)
        try:
            raise ValueError("c\n" + forged)
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert not any(line.startswith("2030") for line in lines), lines
    assert all(line[:1].isdigit() or line.startswith("    ") for line in lines), lines
    assert "\\n2030" in lines[0] and "\\x85" in lines[1] and "\\x1b" in lines[1]
    assert json.dumps(lines)  # plain text all through

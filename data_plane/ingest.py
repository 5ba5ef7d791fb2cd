"""`POST /webhook/{namespace}/{name}`: the hot path, as a plain ASGI app.

One snapshot is read at the start and used to the end; its revision goes out in
`X-Whplane-Revision` on every answer. Order of checks: method and load, lookup, declared size,
body (read as a stream and cut at the limit), verification, rate limits (after verification,
so unsigned floods cannot use up a sender's limit), payload checks, then delivery: the chain
in `sync` mode, or a durable enqueue in `async` mode (202 only once Redis holds it).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from data_plane.chain import run_chain
from data_plane.delivery import Delivery
from data_plane.logs import request_id as request_id_var
from data_plane.queue import Backpressure
from data_plane.verify import Answer, Inbound, VerifyFailed

if TYPE_CHECKING:
    from data_plane.gateway import Gateway

log = logging.getLogger(__name__)

Scope = dict[str, Any]
_PATH = re.compile(r"^/webhook/([a-z0-9][a-z0-9-]{0,62})/([a-z0-9][a-z0-9-]{0,62})/?$")
_JSON_TOKENS = re.compile(rb'["{}\[\]\\]')
# Never copied into a queued delivery: credentials, not content.
_PRIVATE_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "x-gitlab-token", "host",
    "content-length", "connection", "transfer-encoding", "keep-alive",
})  # fmt: skip


class TooLarge(Exception):
    pass


class Ingest:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        rid = _header(scope, b"x-request-id") or self.gw.ids()
        token = request_id_var.set(rid)
        started = time.perf_counter()
        self.gw.inflight += 1
        try:
            await self._handle(scope, receive, send, rid, started)
        finally:
            self.gw.inflight -= 1
            request_id_var.reset(token)

    async def _handle(self, scope: Scope, receive: Any, send: Any, rid: str, t0: float) -> None:
        gw = self.gw
        snap = gw.holder.current
        reply = _Reply(send, rid, snap.revision)
        if not gw.holder.ready:
            await reply.json(503, {"error": "not ready: no config loaded yet"}, retry_after=1)
            return
        if scope["method"] != "POST":  # before the lookup: a GET must not reveal names
            gw.metrics.request("_unknown", "bad_method")
            await reply.json(405, {"error": "use POST"}, extra=[(b"allow", b"POST")])
            return
        if gw.inflight >= gw.settings.max_concurrent_requests:
            gw.metrics.request("_unknown", "overloaded")
            await reply.json(503, {"error": "overloaded"}, retry_after=1)
            return
        m = _PATH.match(scope["path"])
        endpoint = snap.endpoint(m.group(1), m.group(2)) if m else None
        if endpoint is None:
            gw.metrics.request("_unknown", "not_found")
            await reply.json(404, {"error": "no such webhook"})
            return
        ns, name = m.group(1), m.group(2)  # type: ignore[union-attr]
        hook = endpoint.webhook

        def outcome(label: str) -> None:
            gw.metrics.request(ns, label)

        compiled = gw.compiled.get(hook)
        if compiled.verifier is None:
            outcome("misconfigured")
            await reply.json(500, {"error": f"webhook misconfigured: {compiled.error}"})
            return

        limits = hook.spec.limits
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            outcome("too_large")
            await reply.json(413, {"error": f"body over {limits.max_body_bytes} bytes"})
            return

        try:
            body = await _read_body(receive, limits.max_body_bytes)
        except TooLarge:
            outcome("too_large")
            await reply.json(413, {"error": f"body over {limits.max_body_bytes} bytes"})
            return

        headers = _headers(scope)
        inbound = Inbound(
            method="POST",
            # Only Twilio signs the URL: skip building it for everyone else.
            url=_url(scope, headers) if hook.spec.verify.scheme == "twilio" else "",
            headers=headers,
            body=body,
            client_ip=_client_ip(scope),
            now=time.time(),
        )
        try:
            answer = compiled.verifier(inbound)
        except VerifyFailed as exc:
            outcome("unauthorized")
            gw.metrics.verify_failures.labels(ns, hook.spec.verify.scheme).inc()
            log.info("verification failed for %s/%s: %s", ns, name, exc.reason)
            await reply.json(401, {"error": "verification failed"})
            return
        if answer is not None:  # a handshake the sender expects an answer to
            outcome("challenge")
            await reply.raw(answer)
            return

        # After verification: unsigned floods must not use up a legitimate sender's limit.
        retry_after = (
            await gw.rate_limited(ns, name, hook, endpoint.namespace)
            if limits.rate_per_second is not None
            or (endpoint.namespace is not None
                and endpoint.namespace.spec.limits.rate_per_second is not None)
            else None
        )
        if retry_after is not None:
            outcome("rate_limited")
            await reply.json(429, {"error": "rate limit exceeded"}, retry_after=retry_after)
            return

        is_json = "json" in headers.get("content-type", "")
        if is_json and _too_deep(body, limits.max_json_depth):
            outcome("bad_request")
            await reply.json(400, {"error": f"JSON nested deeper than {limits.max_json_depth}"})
            return
        if compiled.payload_check is not None:
            try:
                compiled.payload_check(body)
            except VerifyFailed as exc:
                outcome("bad_request")
                await reply.json(422, {"error": f"payload rejected: {exc.reason}"})
                return

        delivery_spec = hook.spec.delivery
        dedupe_key = None
        if delivery_spec.idempotency_header:
            dedupe_key = headers.get(delivery_spec.idempotency_header.lower())
            window = delivery_spec.idempotency_window_s
            if dedupe_key and not await gw.first_time(ns, name, dedupe_key, window):
                outcome("duplicate")
                await reply.json(200, {"status": "duplicate", "delivery": dedupe_key})
                return

        forwarded = {k: v for k, v in headers.items() if k not in _PRIVATE_HEADERS}
        if hook.spec.verify.scheme == "api_key":
            forwarded.pop(hook.spec.verify.name.lower(), None)
        delivery = Delivery(ns, name, body, forwarded, snap.revision, id=gw.ids(), request_id=rid)

        if delivery_spec.mode == "async":
            if gw.queue is None:
                outcome("unavailable")
                await reply.json(503, {"error": "async delivery needs Redis (WH_REDIS_URL)"},
                                 retry_after=5)
                return
            try:
                await gw.queue.enqueue(delivery)
            except Exception as exc:
                if dedupe_key:  # not queued: the sender's retry must not look like a repeat
                    await gw.forget(ns, name, dedupe_key)
                if isinstance(exc, Backpressure):
                    outcome("overloaded")
                    await reply.json(503, {"error": "backlog full"},
                                     retry_after=max(1, round(exc.retry_after_s)))
                    return
                outcome("unavailable")  # Redis down: nothing queued, so the sender retries
                log.warning("enqueue failed for %s/%s: %s", ns, name, exc)
                await reply.json(503, {"error": "queue unavailable"}, retry_after=5)
                return
            outcome("queued")
            gw.metrics.took("async", time.perf_counter() - t0)
            await reply.body(202, b'{"id":"%s"}' % delivery.id.encode())
            return

        result = await run_chain(endpoint, delivery, gw.clients)
        if result.ok:
            outcome("delivered")
            gw.metrics.delivery(ns, "sync", "ok")
            gw.metrics.took("sync", time.perf_counter() - t0)
            await reply.body(200, b'{"id":"%s","status":"delivered"}' % delivery.id.encode())
            return
        outcome("failed")
        if dedupe_key:
            await gw.forget(ns, name, dedupe_key)
        gw.metrics.delivery(ns, "sync", "failed")
        log.warning("sync delivery failed for %s/%s: %s", ns, name, result.error)
        await reply.json(502, {"id": delivery.id, "error": str(result.error)})


class _Reply:
    __slots__ = ("revision", "rid", "send")

    def __init__(self, send: Any, rid: str, revision: int) -> None:
        self.send, self.rid, self.revision = send, rid, revision

    async def json(
        self,
        status: int,
        body: Mapping[str, Any],
        retry_after: float | None = None,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        headers = extra or []
        if retry_after is not None:
            headers.append((b"retry-after", str(max(1, round(retry_after))).encode()))
        await self._send(status, json.dumps(body).encode(), b"application/json", headers)

    async def body(self, status: int, body: bytes) -> None:
        await self._send(status, body, b"application/json", [])

    async def raw(self, answer: Answer) -> None:
        await self._send(answer.status, answer.body, answer.content_type.encode(), [])

    async def _send(
        self, status: int, body: bytes, ctype: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        await self.send({
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", ctype),
                (b"content-length", str(len(body)).encode()),
                (b"x-whplane-revision", str(self.revision).encode()),
                (b"x-request-id", self.rid.encode()),
                *headers,
            ],
        })  # fmt: skip
        await self.send({"type": "http.response.body", "body": body})


async def _read_body(receive: Any, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise TooLarge  # nothing to answer to; the caller's reply goes nowhere
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return str(v.decode("latin-1"))
    return None


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in scope["headers"]:
        key, value = k.decode("latin-1").lower(), v.decode("latin-1")
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def _url(scope: Scope, headers: Mapping[str, str]) -> str:
    host = headers.get("host") or "localhost"
    query = scope.get("query_string", b"").decode("latin-1")
    return f"{scope.get('scheme', 'http')}://{host}{scope.get('root_path', '')}{scope['path']}" + (
        f"?{query}" if query else ""
    )


def _client_ip(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


def _too_deep(body: bytes, limit: int) -> bool:
    """Whether a JSON text nests deeper than `limit` (strings skipped)."""
    if body.count(b"{") + body.count(b"[") <= limit:
        return False  # cannot be deeper than the number of openers: no scan needed
    depth = 0
    in_string = False
    skip_to = 0  # an escape covers exactly the next byte
    for m in _JSON_TOKENS.finditer(body):
        if m.start() < skip_to:
            continue
        tok = m.group()
        if in_string:
            if tok == b"\\":
                skip_to = m.end() + 1
            elif tok == b'"':
                in_string = False
        elif tok == b'"':
            in_string = True
        elif tok in (b"{", b"["):
            depth += 1
            if depth > limit:
                return True
        elif tok in (b"}", b"]"):
            depth -= 1
    return False

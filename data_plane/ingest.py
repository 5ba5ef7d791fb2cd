"""`POST /webhook/{namespace}/{name}`: the hot path, as a plain ASGI app.

One snapshot is read at the start and used to the end. Every answer carries
`X-Whplane-Revision`: before the lookup, the snapshot's revision; once the webhook is found, its
endpoint's (`providers.snapshot.Endpoint.revision`). The two differ only when the snapshot
refused the latest version of the webhook, its Namespace or one of its connections and kept an
older one in force: a gateway that refused what revision N changed must not answer "N" with the
version before it, or a client (and `rollout status` users checking answers) would believe it
got N. The endpoint then names the newest revision that wrote a version it actually holds. The
stages, in order: admit (ready, method, load),
lookup, read the body (declared size first, then a stream cut at the limit), verify, rate
limits (after verification, so unsigned floods cannot use up a sender's limit), payload checks,
then deliver: the chain in `sync` mode, or a durable enqueue in `async` mode (202 only once
Redis holds it). A stage that refuses raises `_Refused`, answered in one place.

`max_concurrent_requests` counts requests from the end of their body read to their answer.
Reading a body is the part an anonymous sender controls the length of; it is bounded at the
connection layer instead (data_plane/edge.py: a deadline, per-peer and per-process caps), so
trickling senders cannot use up the budget signed senders are served from.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Protocol

from starlette.types import Receive, Scope, Send

from data_plane.chain import run_chain, run_instant
from data_plane.clients import Clients
from data_plane.compiled import CompiledWebhook
from data_plane.delivery import Delivery
from data_plane.edge import DIRECT_REPLY, WEBHOOK_PREFIX
from data_plane.errors import DestinationFull
from data_plane.logs import request_id as request_id_var
from data_plane.metrics import GatewayMetrics
from data_plane.queue import Backpressure, DeliveryQueue
from data_plane.verify import Answer, Inbound, VerifyFailed
from providers.resources import Namespace, Webhook
from providers.snapshot import Endpoint, Snapshot
from providers.verify_spec import ApiKey

log = logging.getLogger(__name__)

_PREFIX_LENGTH = len(WEBHOOK_PREFIX)
_JSON_TOKENS = re.compile(rb'["{}\[\]\\]')
_JSON_START = re.compile(rb"[ \t\r\n]*[\[{]")
# A caller's X-Request-Id is kept only if it is short and cannot forge anything in a log line
# or a header; otherwise the request gets a fresh one.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
_URL_SCHEMES = frozenset({"twilio", "api_key"})
# Payload schema checks of larger bodies run in a worker thread (one thread hop costs ~50 us).
_THREADED_CHECK_BYTES = 64 * 1024
_UNKNOWN = "_unknown"  # the metrics namespace of requests refused before the lookup
# Never copied into a queued delivery: credentials, not content.
_PRIVATE_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "x-gitlab-token", "host",
    "content-length", "connection", "transfer-encoding", "keep-alive",
})  # fmt: skip
_CLOSE = (b"connection", b"close")
_NO_EXTENSIONS: Mapping[str, Any] = MappingProxyType({})
_NO_HEADERS: tuple[tuple[bytes, bytes], ...] = ()


class DirectReply(Protocol):
    def __call__(self, status: int, head: bytes, body: bytes, close: bool) -> bool: ...


class Snapshots(Protocol):
    @property
    def current(self) -> Snapshot: ...
    @property
    def ready(self) -> bool: ...


class Compiler(Protocol):
    def get(self, webhook: Webhook) -> CompiledWebhook: ...


class IngestHost(Protocol):
    """What the hot path uses of the gateway (`data_plane.gateway.Gateway` is one)."""

    @property
    def holder(self) -> Snapshots: ...
    @property
    def compiled(self) -> Compiler: ...
    @property
    def metrics(self) -> GatewayMetrics: ...
    @property
    def clients(self) -> Clients: ...
    @property
    def queue(self) -> DeliveryQueue | None: ...

    def ids(self) -> str: ...

    async def rate_limited(
        self, ns: str, name: str, hook: Webhook, namespace: Namespace | None
    ) -> float | None: ...

    async def first_time(self, ns: str, name: str, key: str, window_s: float) -> bool: ...

    async def forget(self, ns: str, name: str, key: str) -> None: ...


class _Refused(Exception):
    """A stage's refusal: the answer to send and the outcome to count."""

    __slots__ = ("body", "extra", "namespace", "outcome", "retry_after", "status")

    def __init__(
        self,
        status: int,
        error: str,
        outcome: str,
        namespace: str = _UNKNOWN,
        retry_after: float | None = None,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.status, self.body, self.outcome = status, {"error": error}, outcome
        self.namespace, self.retry_after, self.extra = namespace, retry_after, extra


class _Gone(Exception):
    """The sender went away (or the edge cut a late body): nobody to answer."""


class _Request:
    """What the stages learn about one request, in the order they learn it."""

    __slots__ = ("body", "compiled", "endpoint", "headers", "hook", "name", "ns", "rid",
                 "scope", "snap")  # fmt: skip

    def __init__(self, scope: Scope, headers: dict[str, str], rid: str, snap: Snapshot) -> None:
        self.scope, self.headers, self.rid, self.snap = scope, headers, rid, snap
        self.ns = self.name = ""
        self.endpoint: Endpoint
        self.hook: Webhook
        self.compiled: CompiledWebhook
        self.body = b""


class Ingest:
    def __init__(self, host: IngestHost, max_concurrent: int) -> None:
        self.host = host
        self.max_concurrent = max_concurrent
        self.working = 0  # requests past their body read, not yet answered

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # One coroutine for the stages that need no await of their own: each level of
        # coroutine costs about as much as a stage's checks.
        t0 = time.perf_counter()
        # Read once: the request id, the declared length and the verifier all come from it.
        headers = _headers(scope)
        rid = _request_id(headers) or self.host.ids()
        token = request_id_var.set(rid)
        snap = self.host.holder.current
        direct = scope.get("extensions", _NO_EXTENSIONS).get(DIRECT_REPLY)
        reply = _Reply(send, rid, snap.revision, direct["reply"] if direct is not None else None)
        req = _Request(scope, headers, rid, snap)
        try:
            self._admit(scope)
            self._lookup(req)
            reply.revision = req.endpoint.revision
            await self._read_body(req, receive)
            if self.working >= self.max_concurrent:
                raise _Refused(503, "overloaded", "overloaded", retry_after=1)
            self.working += 1
            try:
                answer = self._verify(req)
                if answer is not None:  # a handshake the sender expects an answer to
                    self.host.metrics.request(req.ns, "challenge")
                    await reply.raw(answer)
                    return
                # Each stage awaits only when it has something to wait for.
                limits, namespace = req.hook.spec.limits, req.endpoint.namespace
                if limits.rate_per_second is not None or (
                    namespace is not None and namespace.spec.limits.rate_per_second is not None
                ):
                    await self._limit(req)
                if self._payload_needs_check(req):
                    await self._check_payload(req)
                await self._deliver(req, reply, t0)
            finally:
                self.working -= 1
        except _Refused as refused:
            self.host.metrics.request(refused.namespace, refused.outcome)
            await reply.json(refused.status, refused.body, refused.retry_after, refused.extra)
        except _Gone:
            self.host.metrics.request(req.ns or _UNKNOWN, "disconnected")
        finally:
            request_id_var.reset(token)

    # -- stages -------------------------------------------------------------------------------

    def _admit(self, scope: Scope) -> None:
        if not self.host.holder.ready:
            raise _Refused(503, "not ready: no config loaded yet", "unavailable", retry_after=1)
        if scope["method"] != "POST":  # before the lookup: a GET must not reveal names
            raise _Refused(405, "use POST", "bad_method", extra=[(b"allow", b"POST")])
        # Shed early, before reading a body that could not be handled anyway.
        if self.working >= self.max_concurrent:
            raise _Refused(503, "overloaded", "overloaded", retry_after=1)

    def _lookup(self, req: _Request) -> None:
        # No pattern to match first: every name the snapshot holds is a valid one, so finding
        # nothing is the only check a path needs (the router checked the prefix).
        ns, _, name = req.scope["path"][_PREFIX_LENGTH:].partition("/")
        if name.endswith("/"):
            name = name[:-1]
        endpoint = req.snap.endpoint(ns, name) if "/" not in name else None
        if endpoint is None:
            raise _Refused(404, "no such webhook", "not_found")
        req.ns, req.name = ns, name
        req.endpoint, req.hook = endpoint, endpoint.webhook
        req.compiled = self.host.compiled.get(req.hook)
        if req.compiled.verifier is None:
            # The reason is the operator's business: the log and /status have it.
            log.warning("webhook %s/%s misconfigured: %s", req.ns, req.name, req.compiled.error)
            raise _Refused(500, "webhook misconfigured", "misconfigured", req.ns)

    async def _read_body(self, req: _Request, receive: Receive) -> None:
        limit = req.hook.spec.limits.max_body_bytes
        declared = req.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            # The body stays unread: close rather than leave it to be read and thrown away.
            raise _Refused(413, f"body over {limit} bytes", "too_large", req.ns, extra=[_CLOSE])
        message = await receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            body = message.get("body", b"")  # the usual case: all of it arrived with the head
        else:
            body = await _read_rest(receive, message, limit)
        if len(body) > limit:
            raise _Refused(413, f"body over {limit} bytes", "too_large", req.ns, extra=[_CLOSE])
        req.body = body

    def _verify(self, req: _Request) -> Answer | None:
        scope, verify, headers = req.scope, req.hook.spec.verify, req.headers
        inbound = Inbound(
            method="POST",
            # Only these sign (or carry a key in) the URL: skip building it for everyone else.
            url=_url(scope, headers) if verify.scheme in _URL_SCHEMES and _reads_url(verify)
            else "",
            headers=headers,
            body=req.body,
            client_ip=_client_ip(scope),
            now=time.time(),
        )
        assert req.compiled.verifier is not None  # checked by the lookup
        try:
            return req.compiled.verifier(inbound)
        except VerifyFailed as exc:
            self.host.metrics.verify_failures.inc(req.ns, verify.scheme)
            log.info("verification failed for %s/%s: %s", req.ns, req.name, exc.reason)
            raise _Refused(401, "verification failed", "unauthorized", req.ns) from None

    async def _limit(self, req: _Request) -> None:
        hook, namespace = req.hook, req.endpoint.namespace
        retry_after = await self.host.rate_limited(req.ns, req.name, hook, namespace)
        if retry_after is not None:
            raise _Refused(429, "rate limit exceeded", "rate_limited", req.ns,
                           retry_after=retry_after)

    @staticmethod
    def _payload_needs_check(req: _Request) -> bool:
        # Counting openers is the cheap test: no deeper than their number, no need to look.
        body = req.body
        return (req.compiled.payload_check is not None
                or body.count(b"{") + body.count(b"[") > req.hook.spec.limits.max_json_depth)

    async def _check_payload(self, req: _Request) -> None:
        depth, body = req.hook.spec.limits.max_json_depth, req.body
        if body.count(b"{") + body.count(b"[") > depth and _looks_like_json(
            req.headers.get("content-type"), body
        ) and _too_deep(body, depth):
            raise _Refused(400, f"JSON nested deeper than {depth}", "bad_request", req.ns)
        check = req.compiled.payload_check
        if check is not None:
            try:
                if len(body) > _THREADED_CHECK_BYTES:
                    # Linear (RE2, bounded schemas), but a large body still takes milliseconds
                    # of pure Python: keep them off the loop every other request shares.
                    await asyncio.to_thread(check, body)
                else:
                    check(body)
            except VerifyFailed as exc:
                raise _Refused(422, f"payload rejected: {exc.reason}", "bad_request",
                               req.ns) from None

    async def _deliver(self, req: _Request, reply: _Reply, t0: float) -> None:
        host, ns, name = self.host, req.ns, req.name
        spec = req.hook.spec.delivery
        dedupe_key = None
        if spec.idempotency_header:
            dedupe_key = req.headers.get(spec.idempotency_header.lower())
            window = spec.idempotency_window_s
            if dedupe_key and not await host.first_time(ns, name, dedupe_key, window):
                host.metrics.request(ns, "duplicate")
                await reply.json(200, {"status": "duplicate", "delivery": dedupe_key})
                return

        forwarded = {k: v for k, v in req.headers.items() if k not in _PRIVATE_HEADERS}
        verify = req.hook.spec.verify
        if isinstance(verify, ApiKey) and verify.location == "header":
            forwarded.pop(verify.name.lower(), None)
        delivery = Delivery(ns, name, req.body, forwarded, req.snap.revision, id=host.ids(),
                            request_id=req.rid)
        if spec.mode == "async":
            await self._enqueue(req, delivery, dedupe_key)
            host.metrics.request(ns, "queued")
            host.metrics.took("async", time.perf_counter() - t0)
            await reply.body(202, b'{"id":"%s","status":"queued"}' % delivery.id.encode())
            return

        if req.compiled.instant:
            result = await run_instant(req.endpoint, delivery, host.clients)
        else:
            result = await run_chain(req.endpoint, delivery, host.clients)
        if result.ok:
            host.metrics.delivered(ns, time.perf_counter() - t0)
            await reply.body(200, b'{"id":"%s","status":"delivered"}' % delivery.id.encode())
            return
        if dedupe_key:
            await host.forget(ns, name, dedupe_key)
        host.metrics.delivery(ns, "sync", "failed")
        full = result.error.__cause__ if result.error is not None else None
        if isinstance(full, DestinationFull):
            # Not broken, at its bound (a relay channel's buffer): the sender retries later.
            host.metrics.request(ns, "overloaded")
            log.warning("sync delivery %s refused for %s/%s: %s", delivery.id, ns, name,
                        result.error)
            await reply.json(503, {"id": delivery.id, "status": "refused",
                                   "error": "destination full", "request_id": req.rid},
                             retry_after=full.retry_after_s)
            return
        host.metrics.request(ns, "failed")
        # The sender learns that it failed, never where or why: destinations, addresses and
        # the SSRF guard's verdicts are the operator's (this log line, with the request id).
        log.warning("sync delivery %s failed for %s/%s: %s", delivery.id, ns, name, result.error)
        await reply.json(502, {"id": delivery.id, "status": "failed", "error": "delivery failed",
                               "request_id": req.rid})

    async def _enqueue(self, req: _Request, delivery: Delivery, dedupe_key: str | None) -> None:
        queue = self.host.queue
        if queue is None:
            raise _Refused(503, "async delivery needs Redis (WH_REDIS_URL)", "unavailable",
                           req.ns, retry_after=5)
        try:
            await queue.enqueue(delivery)
        except Exception as exc:
            if dedupe_key:  # not queued: the sender's retry must not look like a repeat
                await self.host.forget(req.ns, req.name, dedupe_key)
            if isinstance(exc, Backpressure):
                raise _Refused(503, "backlog full", "overloaded", req.ns,
                               retry_after=max(1, round(exc.retry_after_s))) from None
            log.warning("enqueue failed for %s/%s: %s", req.ns, req.name, exc)
            # Redis down: nothing queued, so the sender retries.
            raise _Refused(503, "queue unavailable", "unavailable", req.ns,
                           retry_after=5) from None


class _Reply:
    """The answer to one request: through the edge's direct reply when it offers one (see
    data_plane/edge.py), else as two ASGI messages."""

    __slots__ = ("direct", "revision", "rid", "send")

    def __init__(self, send: Send, rid: str, revision: int, direct: DirectReply | None) -> None:
        self.send, self.rid, self.revision, self.direct = send, rid, revision, direct

    async def json(
        self,
        status: int,
        body: Mapping[str, Any],
        retry_after: float | None = None,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        headers = list(extra) if extra else []
        if retry_after is not None:
            headers.append((b"retry-after", str(max(1, round(retry_after))).encode()))
        await self._send(status, json.dumps(body).encode(), b"application/json", headers)

    async def body(self, status: int, body: bytes) -> None:
        if not self._direct(status, body, b"application/json", _NO_HEADERS):
            await self._asgi(status, body, b"application/json", _NO_HEADERS)

    async def raw(self, answer: Answer) -> None:
        await self._send(answer.status, answer.body, answer.content_type.encode(), [])

    async def _send(
        self, status: int, body: bytes, ctype: bytes, headers: Sequence[tuple[bytes, bytes]]
    ) -> None:
        if not self._direct(status, body, ctype, headers):
            await self._asgi(status, body, ctype, headers)

    def _direct(
        self, status: int, body: bytes, ctype: bytes, headers: Sequence[tuple[bytes, bytes]]
    ) -> bool:
        direct = self.direct
        if direct is None:
            return False
        # Every value here is ours: a status, numbers, a content type of the code, a request
        # id that matched _REQUEST_ID (or was made here).
        head = b"content-type: %s\r\ncontent-length: %d\r\nx-whplane-revision: %d\r\n" \
            b"x-request-id: %s\r\n" % (ctype, len(body), self.revision, self.rid.encode())
        if headers:
            head += b"".join(b"%s: %s\r\n" % header for header in headers)
        return direct(status, head, body, _CLOSE in headers)

    async def _asgi(
        self, status: int, body: bytes, ctype: bytes, headers: Sequence[tuple[bytes, bytes]]
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


async def _read_rest(receive: Receive, first: Mapping[str, Any], limit: int) -> bytes:
    """The rest of a body that did not come whole in the first message, cut past `limit`."""
    message = first
    chunks: list[bytes] = []
    size = 0
    while True:
        if message["type"] == "http.disconnect":
            raise _Gone
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"".join(chunks) + chunk  # over the limit: the caller answers 413
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
        message = await receive()


def _request_id(headers: Mapping[str, str]) -> str | None:
    value = headers.get("x-request-id")
    if value is None:
        return None
    first = value.partition(", ")[0]  # the first one, if the header came more than once
    return first if _REQUEST_ID.fullmatch(first) else None


def _headers(scope: Scope) -> dict[str, str]:
    raw = scope["headers"]
    if not isinstance(raw, list | tuple):  # ASGI allows any iterable: it is read twice here
        raw = list(raw)
    out = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}
    if len(out) == len(raw):
        return out
    out = {}  # a header came more than once: its values joined, in order
    for k, v in raw:
        key, value = k.decode("latin-1").lower(), v.decode("latin-1")
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def _reads_url(verify: Any) -> bool:
    """Whether the scheme needs the request URL: Twilio signs it, an `in: query` key is in it."""
    scheme: str = verify.scheme
    return scheme == "twilio" or (scheme == "api_key" and verify.location == "query")


def _url(scope: Scope, headers: Mapping[str, str]) -> str:
    host = headers.get("host") or "localhost"
    query = scope.get("query_string", b"").decode("latin-1")
    return f"{scope.get('scheme', 'http')}://{host}{scope.get('root_path', '')}{scope['path']}" + (
        f"?{query}" if query else ""
    )


def _client_ip(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


def _looks_like_json(content_type: str | None, body: bytes) -> bool:
    """JSON by its declared type (any case, `+json` too), or undeclared and opening like it."""
    if content_type is None:
        return _JSON_START.match(body) is not None
    return "json" in content_type.lower()


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

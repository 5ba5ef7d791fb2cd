"""Fuzzing a real gateway process (cli/processes.py GatewayProcess, `file:` config) with raw HTTP
over sockets: random methods, paths, header names, values and sizes, content types, bodies,
signatures (valid, garbage, missing, stale), Content-Length and chunked bodies, malformed and
truncated framing.

Properties:
- never an answer >= 500 (the config holds nothing that may legitimately fail: no async
  delivery without Redis, no outbound HTTP);
- a well-formed request always gets one whole answer (status line, headers, Content-Length
  bytes of body), and a webhook answer carries X-Whplane-Revision;
- a webhook with a verification scheme never answers 2xx to a request without its signature;
- a malformed or truncated request may be answered 4xx or closed, but the gateway stays up
  and answers the next request; one whose body's end is unknown is never delivered (2xx);
- on a kept-alive connection, a request (whose body may hold another request) and a health
  check get exactly two answers, the second the health check's: no request smuggling;
- the gateway's log holds no unhandled exception.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import jwt
import pytest
import yaml
from hypothesis import given, note
from hypothesis import strategies as st

from cli.processes import GatewayProcess
from tests.fuzz.budget import budget, count

SECRET = "fuzz-gateway-secret-of-32-bytes-or-more"
STD_KEY = b"standard-webhooks-fuzz-key-32-by"
STD_SECRET = "whsec_" + base64.b64encode(STD_KEY).decode()
ENV = {"GH_SECRET": SECRET, "STD_SECRET": STD_SECRET, "WH_LOG_LEVEL": "info"}


def _hook(name: str, verify: dict[str, object], ns: str = "acme", **spec: object) -> dict[str, object]:
    return {"apiVersion": "whplane/v1", "kind": "Webhook",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"verify": verify, "chain": {"steps": [{"module": "log"}]},
                     "limits": {"max_body_bytes": 65536, "max_json_depth": 16}, **spec}}


S = "{$GH_SECRET}"
HOOKS = {
    "gh": _hook("gh", {"scheme": "github", "secret": S}),
    "gl": _hook("gl", {"scheme": "gitlab", "secret": S}),
    "hm": _hook("hm", {"scheme": "hmac", "secret": S, "header": "X-Signature",
                       "prefix": "sha256=", "timestamp_header": "X-Timestamp"}),
    "hm64": _hook("hm64", {"scheme": "hmac", "secret": S, "encoding": "base64",
                           "algorithm": "sha512"}),
    "key": _hook("key", {"scheme": "api_key", "secret": S}),
    "qkey": _hook("qkey", {"scheme": "api_key", "secret": S, "in": "query", "name": "key"}),
    "bas": _hook("bas", {"scheme": "basic", "username": "hooks", "secret": S}),
    "bear": _hook("bear", {"scheme": "bearer", "secret": [S, "{$vault:acme/x#y:other}"]}),
    "jw": _hook("jw", {"scheme": "jwt", "secret": S, "audience": "whplane"}),
    "std": _hook("std", {"scheme": "standard", "secret": "{$STD_SECRET}"}),
    "slack": _hook("slack", {"scheme": "slack", "secret": S}),
    "stripe": _hook("stripe", {"scheme": "stripe", "secret": S}),
    "shop": _hook("shop", {"scheme": "shopify", "secret": S}),
    "tw": _hook("tw", {"scheme": "twilio", "secret": S}),
    "zoom": _hook("zoom", {"scheme": "zoom", "secret": S}),
    "open": _hook("open", {"scheme": "none"},
                  limits={"max_body_bytes": 2048, "max_json_depth": 4},
                  payload_schema={"type": "object", "required": ["id"],
                                  "properties": {"id": {"type": "string",
                                                        "pattern": "^[a-z]+$"}}}),
    "rl": _hook("rl", {"scheme": "none"}, limits={"rate_per_second": 1, "burst": 2}),
    "idem": _hook("idem", {"scheme": "none"},
                  delivery={"idempotency_header": "X-Delivery-Id"}),
    "ipa": _hook("ipa", {"scheme": "none", "ip_allow": ["10.0.0.0/8"],
                         "trusted_proxies": ["127.0.0.1/32"]}),
    "file": _hook("file", {"scheme": "none"}),  # its chain writes a file: set in the fixture
}
GLOBEX = _hook("gh", {"scheme": "github", "secret": S}, ns="globex",
               chain={"steps": [{"module": "log"}], "mode": "parallel"})
TARGETS = [("acme", n) for n in HOOKS] + [("globex", "gh"), ("acme", "nope"), ("nope", "gh")]


@dataclass
class Gateway:
    proc: GatewayProcess
    port: int
    seen_tracebacks: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    root = Path(tempfile.mkdtemp(prefix="whplane-fuzz-gw-"))
    hooks = dict(HOOKS)
    hooks["file"] = _hook("file", {"scheme": "none"},
                          chain={"steps": [{"module": "file",
                                            "config": {"path": str(root / "out.jsonl")}}]})
    docs = [{"apiVersion": "whplane/v1", "kind": "Namespace", "metadata": {"name": "acme"}},
            {"apiVersion": "whplane/v1", "kind": "Namespace", "metadata": {"name": "globex"},
             "spec": {"limits": {"rate_per_second": 1000}}},
            *hooks.values(), GLOBEX]
    (root / "config.yaml").write_text(yaml.safe_dump_all(docs))
    proc = GatewayProcess(f"file:{root / 'config.yaml'}", ENV).start()
    try:
        yield Gateway(proc, proc.port)
    finally:
        proc.stop()


# --- requests ------------------------------------------------------------------------------------

@dataclass
class Case:
    method: str
    target: str  # the request target (path and query) as sent
    webhook: tuple[str, str] | None  # the webhook the path names, if any
    headers: list[tuple[bytes, bytes]]
    body: bytes
    content_type: bytes | None
    sign: str  # valid | garbage | none | stale
    framing: str
    well_formed: bool


TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
header_name = st.one_of(
    st.sampled_from(["x-request-id", "X-Forwarded-For", "x-delivery-id", "user-agent",
                     "x-hub-signature-256", "authorization", "x-api-key", "x-timestamp",
                     "webhook-id", "X-Twilio-Signature", "stripe-signature", "x-slack-signature",
                     "X-Request-ID", "x-whplane-revision"] * 3
                    + ["host", "expect", "connection", "content-encoding", "content-length",
                       "transfer-encoding"]),
    st.text(TOKEN_CHARS, min_size=1, max_size=40),
)
header_value = st.one_of(
    st.sampled_from(["", " ", "10.1.2.3", "10.1.2.3, 127.0.0.1", "1.2.3.4", "keep-alive",
                     "100-continue", "gzip", "Bearer", "Basic !!!", "sha256=", "v1,", "t=1,v1=",
                     "\xe9\xff", "a" * 8000, "9" * 40, "-1", "0"]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
            max_size=60),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=20,
)
bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.sampled_from([b"", b"{}", b'{"id": "abc"}', b'{"id": "ABC"}', b'{"id": 1}',
                     b'{"id": "a", "id": "b"}', b"[" * 20 + b"]" * 20, b"[" * 100_000,
                     b'{"a": NaN}', b'"\\ud800"', b"\xff\xfe\x00", b'{"id": "' + b"a" * 3000 + b'"}',
                     b"x" * 70_000, b"Body=hi&From=%2B1", b'{"event": "endpoint.url_validation",'
                     b' "payload": {"plainToken": "abc"}}']),
    st.binary(max_size=300),
    st.builds(lambda d: b"[" * d + b"]" * d, st.integers(1, 5000)),
)
content_types = st.sampled_from([
    b"application/json", b"application/json; charset=utf-8", b"text/plain",
    b"application/x-www-form-urlencoded", b"application/vnd.api+json", b"multipart/form-data",
    b"application/json; charset=utf-16", b"JSON", b"", None, b"a" * 2000,
])
# uvicorn's parser (llhttp) answers 400 to a method it does not know: a few are enough.
methods = st.one_of(st.sampled_from(["POST"] * 30 + ["GET", "PUT", "HEAD", "DELETE", "OPTIONS",
                                                      "PATCH", "TRACE", "post"]),
                    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=12))
FRAMINGS = ["length"] * 12 + ["chunked"] * 3 + ["none", "http10", "chunked_bad", "truncated",
                                               "both", "length_twice", "length_bad"]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    ns, name = draw(st.sampled_from(TARGETS))
    shape = draw(st.sampled_from(["plain"] * 6 + ["slash", "query", "garbage", "escaped",
                                                  "long", "dots", "extra"]))
    webhook: tuple[str, str] | None = (ns, name)
    target = f"/webhook/{ns}/{name}"
    well_formed = True
    if shape == "slash":
        target += "/"
    elif shape == "query":
        target += "?" + draw(st.sampled_from(["a=b", f"key={SECRET}", "key=wrong", "x=%ff&y",
                                              "", "=" * 10]))
    elif shape == "garbage":
        target = "/" + draw(st.text("abcdefghijklmnopqrstuvwxyz0123456789-_/.%~:@!$&'()*+,;=",
                                    max_size=60))
        webhook = None
    elif shape == "escaped":
        target = f"/webhook/{ns}/%{draw(st.sampled_from(['67', '00', 'zz', 'ff', '2e']))}{name}"
        webhook = None
    elif shape == "long":
        target += "?" + "a" * draw(st.integers(1000, 70_000))
        well_formed = len(target) < 60_000
    elif shape == "dots":
        target = f"/webhook/{ns}/../{ns}/{name}"
        webhook = None
    elif shape == "extra":
        target += "/extra"
        webhook = None
    headers = [(n.encode("latin-1"), v.encode("latin-1"))
               for n, v in draw(st.lists(st.tuples(header_name, header_value), max_size=8))]
    framing = draw(st.sampled_from(FRAMINGS))
    if framing in ("chunked_bad", "truncated", "both", "length_twice", "length_bad"):
        well_formed = False
    if any(n.lower() in (b"content-length", b"transfer-encoding", b"host", b"expect",
                         b"connection", b"content-encoding")
           for n, _ in headers):
        well_formed = False  # framing and connection handling are the fuzzer's, not ours here
    if sum(len(n) + len(v) + 4 for n, v in headers) + len(target) > 60_000:
        well_formed = False
    method = draw(st.sampled_from(["POST"] * 4 + ["other"]))
    return Case(method=method if method == "POST" else draw(methods), target=target, webhook=webhook, headers=headers,
                body=draw(bodies), content_type=draw(content_types),
                sign=draw(st.sampled_from(["valid", "valid", "garbage", "none", "stale"])),
                framing=framing, well_formed=well_formed)


def signature_headers(case: Case, now: int) -> list[tuple[str, str]]:
    """The headers that sign `case.body` for its webhook's scheme."""
    if case.webhook is None or case.sign == "none":
        return []
    name = case.webhook[1]
    body = case.body
    ts = now - 3600 if case.sign == "stale" else now
    key = SECRET.encode() if case.sign != "garbage" else b"not-the-secret"

    def mac(data: bytes, algo: str = "sha256") -> hmac.HMAC:
        return hmac.new(key, data, algo)

    if name == "gh":
        return [("X-Hub-Signature-256", "sha256=" + mac(body).hexdigest())]
    if name == "gl":
        return [("X-Gitlab-Token", key.decode())]
    if name == "hm":
        return [("X-Timestamp", str(ts)),
                ("X-Signature", "sha256=" + mac(f"{ts}.".encode() + body).hexdigest())]
    if name == "hm64":
        return [("X-Signature", base64.b64encode(mac(body, "sha512").digest()).decode())]
    if name == "key":
        return [("X-API-Key", key.decode())]
    if name == "bas":
        return [("Authorization", "Basic " + base64.b64encode(b"hooks:" + key).decode())]
    if name == "bear":
        return [("Authorization", "Bearer " + key.decode())]
    if name == "jw":
        token = jwt.encode({"aud": "whplane", "exp": ts + 60, "iat": ts}, key.decode(), "HS256")
        return [("Authorization", f"Bearer {token}")]
    if name == "std":
        std_key = STD_KEY if case.sign != "garbage" else b"x" * 32
        sig = hmac.new(std_key, f"msg_1.{ts}.".encode() + body, hashlib.sha256).digest()
        return [("webhook-id", "msg_1"), ("webhook-timestamp", str(ts)),
                ("webhook-signature", "v1," + base64.b64encode(sig).decode())]
    if name == "slack":
        return [("X-Slack-Request-Timestamp", str(ts)),
                ("X-Slack-Signature",
                 "v0=" + mac(f"v0:{ts}:".encode() + body).hexdigest())]
    if name == "zoom":
        return [("x-zm-request-timestamp", str(ts)),
                ("x-zm-signature", "v0=" + mac(f"v0:{ts}:".encode() + body).hexdigest())]
    if name == "stripe":
        return [("Stripe-Signature", f"t={ts},v1=" + mac(f"{ts}.".encode() + body).hexdigest())]
    if name == "shop":
        return [("X-Shopify-Hmac-Sha256", base64.b64encode(mac(body).digest()).decode())]
    if name == "ipa":
        return [("X-Forwarded-For", "10.9.8.7")]
    return []


SIGNED = {"gh", "gl", "hm", "hm64", "key", "qkey", "bas", "bear", "jw", "std", "slack", "stripe",
          "shop", "tw", "zoom"}


def encode_request(case: Case, now: int, keep_alive: bool = False) -> bytes:
    version = b"HTTP/1.0" if case.framing == "http10" else b"HTTP/1.1"
    head = [case.method.encode("latin-1") + b" " + case.target.encode("latin-1") + b" "
            + version, b"Host: gw.fuzz",
            b"Connection: keep-alive" if keep_alive else b"Connection: close"]
    if case.content_type is not None:
        head.append(b"Content-Type: " + case.content_type)
    head += [n.encode() + b": " + v.encode() for n, v in signature_headers(case, now)]
    head += [n + b": " + v for n, v in case.headers]
    body = case.body
    f = case.framing
    if f in ("length", "http10", "truncated", "length_twice"):
        head.append(b"Content-Length: %d" % len(body))
        if f == "length_twice":
            head.append(b"Content-Length: %d" % (len(body) + 1))
        payload = body[: len(body) // 2] if f == "truncated" else body
    elif f == "length_bad":
        head.append(b"Content-Length: " + (b"-1" if body else b"1x"))
        payload = body
    elif f in ("chunked", "chunked_bad", "both"):
        head.append(b"Transfer-Encoding: chunked")
        if f == "both":
            head.append(b"Content-Length: %d" % len(body))
        chunks = [body[i:i + 1000] for i in range(0, len(body), 1000)]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
        payload += b"0\r\n\r\n" if f != "chunked_bad" else b"zz\r\n"
    else:  # none: no body at all
        payload = b""
    return b"\r\n".join(head) + b"\r\n\r\n" + payload


@dataclass
class Answer:
    status: int | None
    headers: dict[bytes, bytes]
    body: bytes
    complete: bool
    error: str = ""


def exchange(port: int, data: bytes, half_close: bool, timeout: float = 15.0) -> Answer:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except OSError as exc:  # the gateway may close early on a request it refuses
            received = _drain(s)
            return _parse(received, f"send: {exc}")
        return _parse(_drain(s), "")


def _drain(s: socket.socket) -> bytes:
    chunks = []
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    except TimeoutError:
        chunks.append(b"<<timeout>>")
    except OSError:
        pass
    return b"".join(chunks)


def _parse(raw: bytes, error: str) -> Answer:
    timed_out = raw.endswith(b"<<timeout>>")
    raw = raw.removesuffix(b"<<timeout>>")
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not raw or not sep:
        return Answer(None, {}, b"", False, error or ("timeout" if timed_out else "no answer"))
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        return Answer(None, {}, b"", False, f"bad status line {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower()] = v.strip()
    length = headers.get(b"content-length")
    complete = length is None or (length.isdigit() and len(body) >= int(length))
    return Answer(status, headers, body, complete, error or ("timeout" if timed_out else ""))


def answers(raw: bytes) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Every answer in a byte stream of pipelined answers (each with a Content-Length)."""
    out = []
    while raw.startswith(b"HTTP/"):
        a = _parse(raw, "")
        if a.status is None:
            break
        head_len = raw.index(b"\r\n\r\n") + 4
        n = int(a.headers.get(b"content-length", b"0") or 0)
        out.append((a.status, a.headers, raw[head_len:head_len + n]))
        raw = raw[head_len + n:]
    return out


def alive(port: int) -> bool:
    a = exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", False)
    return a.status == 200


@budget(ci=150)
@given(cases())
def test_raw_requests(gateway: Gateway, case: Case) -> None:
    now = int(time.time())
    data = encode_request(case, now)
    note(f"request: {data[:3000]!r}")
    with count("gateway.raw_http") as c:
        answer = exchange(gateway.port, data, half_close=not case.well_formed)
        note(f"answer: {answer.status} {answer.headers} {answer.body[:500]!r} {answer.error}")
        c.outcome = f"{answer.status}" if case.well_formed else f"malformed {answer.status}"
        if answer.status is not None:
            assert answer.status < 500, f"{answer.status}: {answer.body[:1000]!r}"
        if case.well_formed:
            assert answer.status is not None, f"no answer to a well-formed request: {answer.error}"
            if case.method != "HEAD":
                assert answer.complete, f"a partial answer: {answer.headers} {answer.body!r}"
            if case.target.startswith("/webhook/") and answer.status not in (400, 414, 431):
                assert b"x-whplane-revision" in answer.headers, (
                    f"a webhook answer without X-Whplane-Revision: {answer.headers}")
            if (case.webhook and case.webhook[1] in SIGNED and case.sign in ("none", "garbage")
                    and not (case.webhook[1] == "qkey" and f"key={SECRET}" in case.target)):
                assert not 200 <= answer.status < 300, (
                    f"{case.webhook} answered {answer.status} to a request signed "
                    f"{case.sign!r}: {answer.body[:500]!r}")
        else:
            if case.framing in ("length_twice", "length_bad", "chunked_bad"):
                # Two different Content-Lengths, a bad one, a bad chunk: the body's end is
                # unknown, so nothing may be delivered (RFC 9112 section 6.3).
                assert answer.status is None or not 200 <= answer.status < 300, (
                    f"{answer.status} to a request framed {case.framing!r}")
            assert alive(gateway.port), "the gateway stopped answering after a malformed request"


SMUGGLED = (b"POST /webhook/acme/rl HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
            b"0\r\n\r\nGET /status HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\n\r\n")


@budget(ci=60)
@given(cases(), st.sampled_from([b"", *SMUGGLED]), st.integers(0, 3))
def test_pipelined_requests(gateway: Gateway, case: Case, smuggled: bytes, at: int) -> None:
    """A request on a kept-alive connection, then `GET /healthz`: exactly the two answers, the
    second the health check's (or the connection closed after the first), whatever the first
    request's body holds (here: sometimes another request) and however it was answered."""
    if not case.well_formed or case.framing not in ("length", "chunked"):
        case.framing = "length"
    case.headers = [(n, v) for n, v in case.headers if n.lower() not in (
        b"content-length", b"transfer-encoding", b"connection", b"expect")]
    if smuggled:
        case.body = case.body[:at * 10] + smuggled + case.body[at * 10:]
    first = encode_request(case, int(time.time()), keep_alive=True)
    second = b"GET /healthz HTTP/1.1\r\nHost: gw.fuzz\r\nConnection: close\r\n\r\n"
    note(f"request: {first[:3000]!r}")
    with count("gateway.pipelined") as c:
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as s:
            try:
                s.sendall(first + second)
            except OSError:
                pass  # closed early after refusing the first: what it answered is below
            got = answers(_drain(s))
        note(f"answers: {[(st_, b[:200]) for st_, _, b in got]}")
        c.outcome = "/".join(str(st_) for st_, _, _ in got) or "none"
        assert got, "no answer at all on a kept-alive connection"
        assert got[0][0] < 500, f"{got[0][0]}: {got[0][2][:500]!r}"
        assert len(got) <= 2, f"{len(got)} answers to 2 requests: {[g[0] for g in got]}"
        if len(got) == 2:
            assert got[1][0] == 200 and b"alive" in got[1][2], (
                f"the second answer is not the health check's: {got[1]}")


def test_gateway_log_has_no_unhandled_exception(gateway: Gateway) -> None:
    """Run after the fuzz target (same module, same process): nothing escaped to uvicorn."""
    assert gateway.proc.proc is not None and gateway.proc.proc.poll() is None, "gateway exited"
    log = gateway.proc.log_path.read_text(errors="replace")
    bad = [m for m in ("Exception in ASGI application", "Traceback (most recent call last)")
           if m in log]
    assert not bad, f"the gateway logged an unhandled exception:\n{gateway.proc.log_tail(60)}"

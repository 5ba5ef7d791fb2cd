"""Real `whplane gateway` processes at their edge: what an anonymous sender can cost (slow
heads and bodies, idle connections, huge heads, many connections), whose address counts, what
it can write into the log, and the small defects found with them."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cli.processes import GatewayProcess, github_signature
from cli.sink import Sink

SECRET = "edge-secret"
ENV = {"GH_SECRET": SECRET, "API_KEY": "k-123"}
# Quick deadlines so the tests can wait them out.
FAST = {"WH_HEADER_TIMEOUT_S": "1", "WH_BODY_TIMEOUT_S": "1", "WH_KEEPALIVE_TIMEOUT_S": "1",
        "WH_MAX_HEADER_BYTES": "8192"}  # fmt: skip


def hook(name: str, verify: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Webhook",
            "metadata": {"name": name, "namespace": "acme"},
            "spec": {"verify": verify or {"scheme": "github", "secret": "{$GH_SECRET}"},
                     "chain": spec.pop("chain", {"steps": [{"module": "log"}]}), **spec}}


def conn(name: str, url: str, allow_private: bool = True) -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Connection",
            "metadata": {"name": name, "namespace": "acme"},
            "spec": {"type": "http", "url": url, "allow_private": allow_private}}


def signed(body: bytes = b"{}", /, **headers: str) -> dict[str, str]:
    return {"content-type": "application/json",
            "x-hub-signature-256": github_signature(SECRET, body), **headers}


def head(path: str = "/webhook/acme/gh", length: int = 100_000, extra: bytes = b"") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
            f"content-length: {length}\r\n").encode() + extra + b"\r\n"


def connect(gw: GatewayProcess, source: str = "127.0.0.1", timeout: float = 5) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(("127.0.0.1", gw.port))
    return s


def read_all(s: socket.socket) -> bytes:
    """Everything until the gateway closes the connection (a timeout fails the test)."""
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk


def status_and_headers(answer: bytes) -> tuple[int, dict[str, str]]:
    lines = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}


def client(gw: GatewayProcess, source: str = "127.0.0.1") -> httpx.Client:
    return httpx.Client(base_url=gw.url, timeout=10,
                        transport=httpx.HTTPTransport(local_address=source))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def start(tmp_path: Path, docs: list[dict[str, Any]], **env: str) -> GatewayProcess:
    cfg = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}"
    cfg.mkdir()
    (cfg / "all.yaml").write_text(yaml.safe_dump_all(docs))
    return GatewayProcess(f"file:{cfg}", {**ENV, **env}).start()


@pytest.fixture
def gateways() -> Iterator[list[GatewayProcess]]:
    made: list[GatewayProcess] = []
    yield made
    for g in made:
        g.kill()


@pytest.fixture(scope="module")
def fast_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One gateway with short deadlines and a small head limit, for the edge tests."""
    gw = start(tmp_path_factory.mktemp("edge"), [hook("gh")], **FAST)
    yield gw
    gw.kill()


# -- 11: slow bodies and idle connections ---------------------------------------------------


def test_a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_closed(
    fast_gw: GatewayProcess,
) -> None:
    with connect(fast_gw) as s:
        t0 = time.monotonic()
        s.sendall(head() + b"{")  # one byte of 100 kB
        answer = read_all(s)
        took = time.monotonic() - t0
    status, headers = status_and_headers(answer)
    assert status == 408 and 0.8 < took < 4, (answer[:300], took)
    assert headers["connection"] == "close" and "x-whplane-revision" in headers
    # Trickling does not buy time: the deadline covers the whole body.
    with connect(fast_gw) as s:
        t0 = time.monotonic()
        s.sendall(head())
        for _ in range(6):
            time.sleep(0.3)
            try:
                s.sendall(b" ")
            except OSError:
                break
        answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < 4


def test_a_head_that_does_not_arrive_in_time_gets_408(fast_gw: GatewayProcess) -> None:
    with connect(fast_gw) as s:
        t0 = time.monotonic()
        s.sendall(b"POST /webhook/acme/gh HTTP/1.1\r\nhost: gw\r\n")
        for _ in range(6):  # a header line now and then: slowloris
            time.sleep(0.3)
            try:
                s.sendall(b"x-a: b\r\n")
            except OSError:
                break
        answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - t0 < 4


def test_idle_connections_are_closed(fast_gw: GatewayProcess) -> None:
    with connect(fast_gw) as fresh, connect(fast_gw) as blank_lines:
        t0 = time.monotonic()
        blank_lines.sendall(b"\r\n")
        time.sleep(0.6)
        blank_lines.sendall(b"\r\n")  # starts no request: buys no time
        assert read_all(fresh) == b""
        assert read_all(blank_lines) == b""
        assert time.monotonic() - t0 < 3
    # Between requests too (uvicorn's keep-alive), and a fresh connection still gets served.
    with connect(fast_gw) as s:
        s.sendall(head(length=2, extra=b"x-hub-signature-256: "
                       + github_signature(SECRET, b"{}").encode() + b"\r\n") + b"{}")
        answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_a_huge_head_gets_431_and_is_not_buffered(fast_gw: GatewayProcess) -> None:
    assert fast_gw.proc is not None
    before = rss_kib(fast_gw.proc.pid)
    with connect(fast_gw, timeout=10) as s:
        s.sendall(b"POST /webhook/acme/gh HTTP/1.1\r\nhost: gw\r\nx-big: ")
        sent = 0
        try:
            while sent < 50 * 1024 * 1024:
                s.sendall(b"a" * 65536)
                sent += 65536
        except OSError:
            pass  # refused and closed long before 50 MB
        answer = read_all(s)
    assert sent < 8 * 1024 * 1024, sent
    status, headers = status_and_headers(answer)
    assert status == 431 and headers["connection"] == "close"
    assert rss_kib(fast_gw.proc.pid) - before < 20_000
    # Under the limit a head is fine.
    r = httpx.post(f"{fast_gw.url}/webhook/acme/gh", content=b"{}",
                   headers=signed(**{"x-pad": "p" * 4000}))
    assert r.status_code == 200, r.text


def test_trickling_senders_do_not_use_up_the_signed_senders_budget(
    tmp_path: Path, gateways: list[GatewayProcess]
) -> None:
    """Before: a request counted against max_concurrent_requests from its first byte, so 1,005
    connections trickling a body got every signed request 503 (default settings, one address)."""
    gw = start(tmp_path, [hook("gh")])
    gateways.append(gw)
    slow = [connect(gw) for _ in range(1005)]
    try:
        for s in slow:
            s.sendall(head() + b"{")
        time.sleep(0.5)
        with client(gw) as c:
            codes = [c.post("/webhook/acme/gh", content=b"{}", headers=signed()).status_code
                     for _ in range(5)]
        assert codes == [200] * 5
    finally:
        for s in slow:
            s.close()


def test_one_address_cannot_take_every_connection(
    tmp_path: Path, gateways: list[GatewayProcess]
) -> None:
    gw = start(tmp_path, [hook("gh")], WH_MAX_CONNECTIONS_PER_IP="30")
    gateways.append(gw)
    held = [connect(gw) for _ in range(30)]
    try:
        for s in held:
            s.sendall(head() + b"{")
        with connect(gw) as extra:
            answer = read_all(extra)  # refused at once: 503, or a reset
        assert answer == b"" or answer.startswith(b"HTTP/1.1 503"), answer[:200]
        # Another address is served, and so is this one once it lets go.
        with client(gw, source="127.0.0.2") as c:
            assert c.post("/webhook/acme/gh", content=b"{}", headers=signed()).status_code == 200
        held.pop().close()
        time.sleep(0.2)
        with client(gw) as c:
            assert c.post("/webhook/acme/gh", content=b"{}", headers=signed()).status_code == 200
        status = httpx.get(f"{gw.url}/status").json()
        assert status["edge"]["refused"] >= 1
    finally:
        for s in held:
            s.close()


# -- 12: X-Forwarded-For only through trusted_proxies ---------------------------------------


def test_x_forwarded_for_counts_only_from_trusted_proxies(
    tmp_path: Path, gateways: list[GatewayProcess]
) -> None:
    gh = {"scheme": "github", "secret": "{$GH_SECRET}"}
    gw = start(tmp_path, [
        hook("inside", {**gh, "ip_allow": ["10.1.0.0/16"]}),
        hook("loopback", {**gh, "ip_allow": ["127.0.0.0/8"]}),
        hook("proxied", {**gh, "ip_allow": ["10.1.0.0/16"], "trusted_proxies": ["127.0.0.1/32"]}),
    ])
    gateways.append(gw)
    with client(gw) as c:
        def post(name: str, xff: str) -> int:
            return c.post(f"/webhook/acme/{name}", content=b"{}",
                          headers=signed(**{"x-forwarded-for": xff})).status_code

        assert post("inside", "10.1.2.3") == 401  # a loopback sender claiming to be inside
        assert post("loopback", "10.9.9.9") == 200  # the peer is loopback, whatever it says
        assert post("proxied", "10.1.2.3") == 200  # a trusted proxy vouches for it
        assert post("proxied", "10.9.9.9") == 401


# -- 13: X-Request-Id bounded, text log one line per event ----------------------------------


def test_request_ids_are_bounded_and_cannot_forge_log_lines(
    fast_gw: GatewayProcess,
) -> None:
    long_id = "r" * 6000
    forged = b"x\x85" + b"2030-01-01 00:00:00,000 INFO control_plane.audit [admin] deleted acme"
    with connect(fast_gw) as s:
        s.sendall(head(length=2, extra=b"x-request-id: " + forged + b"\r\n") + b"{}")
        answer = read_all(s)
    status, headers = status_and_headers(answer)
    assert status == 401 and "control_plane" not in headers["x-request-id"]
    r = httpx.post(f"{fast_gw.url}/webhook/acme/gh", content=b"{}",
                   headers={"x-request-id": long_id})
    assert r.status_code == 401 and len(r.headers["x-request-id"]) <= 128
    fine = httpx.post(f"{fast_gw.url}/webhook/acme/gh", content=b"{}",
                      headers={"x-request-id": "req-42.a_b:c"})
    assert fine.headers["x-request-id"] == "req-42.a_b:c"
    time.sleep(0.2)
    log = fast_gw.log_path.read_text(encoding="utf-8", errors="replace")
    assert "control_plane.audit" not in log and long_id not in log
    assert "[req-42.a_b:c]" in log


# -- 15, 16, 17, 18 ---------------------------------------------------------------------------


def test_api_key_in_query(tmp_path: Path, gateways: list[GatewayProcess]) -> None:
    gw = start(tmp_path, [hook("q", {"scheme": "api_key", "secret": "{$API_KEY}", "in": "query",
                                     "name": "key"})])
    gateways.append(gw)
    with client(gw) as c:
        assert c.post("/webhook/acme/q?key=k-123", content=b"{}").status_code == 200
        assert c.post("/webhook/acme/q?other=1&key=k-123", content=b"{}").status_code == 200
        assert c.post("/webhook/acme/q?key=wrong", content=b"{}").status_code == 401
        assert c.post("/webhook/acme/q", content=b"{}").status_code == 401


def test_json_depth_whatever_the_content_type_spelling(
    tmp_path: Path, gateways: list[GatewayProcess]
) -> None:
    gw = start(tmp_path, [hook("gh", limits={"max_json_depth": 5})])
    gateways.append(gw)
    deep = b"[" * 6 + b"]" * 6
    with client(gw) as c:
        def post(body: bytes, ctype: str | None) -> int:
            headers = signed(body)
            if ctype is None:
                del headers["content-type"]
            else:
                headers["content-type"] = ctype
            return c.post("/webhook/acme/gh", content=body, headers=headers).status_code

        assert post(deep, "application/JSON") == 400
        assert post(deep, "Application/vnd.api+Json; charset=utf-8") == 400
        assert post(deep, None) == 400
        assert post(b" \n" + deep, None) == 400
        assert post(b"[" * 5 + b"]" * 5, None) == 200
        assert post(deep, "text/plain") == 200  # not declared JSON, not checked as JSON


def test_max_concurrent_requests_admits_exactly_n(
    tmp_path: Path, gateways: list[GatewayProcess]
) -> None:
    with Sink(delay_s=1.5) as slow:
        one = start(tmp_path, [hook("gh")], WH_MAX_CONCURRENT_REQUESTS="1")
        two = start(tmp_path, [conn("slow", slow.url),
                               hook("slow", chain={"steps": [{"module": "http",
                                                              "connection": "slow"}]})],
                    WH_MAX_CONCURRENT_REQUESTS="2")
        gateways += [one, two]
        r = httpx.post(f"{one.url}/webhook/acme/gh", content=b"{}", headers=signed())
        assert r.status_code == 200, r.text  # before: =1 refused everything

        codes: list[int] = []

        def send() -> None:
            codes.append(httpx.post(f"{two.url}/webhook/acme/slow", content=b"{}",
                                    headers=signed(), timeout=10).status_code)

        threads = [threading.Thread(target=send) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # both in the chain now
        send()
        for t in threads:
            t.join()
    assert sorted(codes) == [200, 200, 503], codes


def test_a_sync_failure_tells_the_sender_nothing_internal(
    tmp_path: Path, gateways: list[GatewayProcess]
) -> None:
    with Sink() as sink:
        gw = start(tmp_path, [conn("inside", sink.url, allow_private=False),
                              hook("gh", chain={"steps": [{"module": "http",
                                                           "connection": "inside"}]})])
        gateways.append(gw)
        r = httpx.post(f"{gw.url}/webhook/acme/gh", content=b"{}",
                       headers=signed(**{"x-request-id": "rid-502"}))
    assert r.status_code == 502
    body = r.json()
    assert body == {"id": body["id"], "status": "failed", "error": "delivery failed",
                    "request_id": "rid-502"}
    assert r.headers["x-whplane-revision"] and r.headers["x-request-id"] == "rid-502"
    time.sleep(0.2)
    log = gw.log_path.read_text()
    assert "rid-502" in log and "SSRF" in log  # the detail is the operator's
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'outcome="failed"' in metrics


def test_edge_answers_are_json_with_the_revision(fast_gw: GatewayProcess) -> None:
    with connect(fast_gw) as s:
        s.sendall(b"POST /webhook/acme/gh HTTP/1.1\r\nhost: gw\r\nx-big: " + b"a" * 9000)
        answer = read_all(s)
    status, headers = status_and_headers(answer)
    assert status == 431 and headers["content-type"] == "application/json"
    revision = httpx.get(f"{fast_gw.url}/readyz").json()["revision"]
    assert headers["x-whplane-revision"] == str(revision)
    assert "error" in json.loads(answer.split(b"\r\n\r\n", 1)[1])


# -- answers written at once (the direct reply of a webhook POST) ------------------------------


def _post(body: bytes, *extra: str, version: str = "1.1") -> bytes:
    headers = "".join(f"{h}\r\n" for h in extra)
    return (f"POST /webhook/acme/gh HTTP/{version}\r\nhost: gw\r\ncontent-type: application/json\r\n"
            f"x-hub-signature-256: {github_signature(SECRET, body)}\r\n"
            f"content-length: {len(body)}\r\n{headers}\r\n").encode() + body


def _answers(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The responses in `data`, in order, each cut at its content-length."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        status, headers = status_and_headers(head + b"\r\n\r\n")
        size = int(headers["content-length"])
        out.append((status, headers, rest[:size]))
        data = rest[size:]
    return out


def test_pipelined_webhooks_are_answered_in_order_each_whole(fast_gw: GatewayProcess) -> None:
    bodies = [b'{"n": %d}' % i for i in range(3)]
    with connect(fast_gw) as s:
        s.sendall(b"".join(_post(b, f"x-request-id: req-{i}") for i, b in enumerate(bodies))
                  + _post(b"{}", "connection: close"))
        answers = _answers(read_all(s))  # the last asked to close: the gateway ends it
    assert [a[0] for a in answers] == [200, 200, 200, 200]
    assert [a[1]["x-request-id"] for a in answers[:3]] == ["req-0", "req-1", "req-2"]
    assert all(json.loads(a[2])["status"] == "delivered" for a in answers)
    assert [a[1].get("connection") for a in answers] == [None, None, None, "close"]
    assert all("date" in a[1] and "transfer-encoding" not in a[1] for a in answers)


def test_http_1_0_and_refusals_that_close_say_so_once(fast_gw: GatewayProcess) -> None:
    with connect(fast_gw) as s:
        s.sendall(_post(b"{}", version="1.0"))
        (status, headers, _), = _answers(read_all(s))
    assert status == 200 and headers["connection"] == "close"
    with connect(fast_gw) as s:  # over the body limit: refused unread, so the connection ends
        s.sendall(head(length=10**9))
        raw = read_all(s)
    (status, headers, _), = _answers(raw)
    assert status == 413 and headers["connection"] == "close"
    assert raw.lower().count(b"connection: close") == 1
    with connect(fast_gw) as s:  # a bad signature answered on a connection that stays open
        s.sendall(_post(b"{}").replace(b"sha256=", b"sha256=00", 1) + _post(b"{}", "connection: close"))
        answers = _answers(read_all(s))
    assert [a[0] for a in answers] == [401, 200]


def test_a_connection_in_use_stays_open_and_closes_once_idle(fast_gw: GatewayProcess) -> None:
    # Keep-alive is 1 s here: requests 0.4 s apart for 2.4 s must all be served on one
    # connection, and it must end about 1 s after the last answer.
    with connect(fast_gw) as s:
        for _ in range(6):
            s.sendall(_post(b"{}"))
            data = b""
            while b"delivered" not in data:
                chunk = s.recv(65536)
                assert chunk, "closed while in use"
                data += chunk
            time.sleep(0.4)
        last = time.monotonic()
        assert read_all(s) == b""
        assert 0.4 < time.monotonic() - last < 2.5

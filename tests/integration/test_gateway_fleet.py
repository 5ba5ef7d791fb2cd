"""Real `whplane gateway` processes: body limit on the wire, a shared rate limit, config changes
under traffic, and a SIGKILL with deliveries pending."""

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

from cli.processes import GatewayProcess, github_signature, start_all
from cli.servers import EtcdServer, RedisServer
from cli.sink import Sink
from providers.resources import ResourceKey
from providers.store_keys import resource_key

SECRET = "fleet-secret"
ENV = {"GH_SECRET": SECRET}


def hook(name: str, ns: str = "acme", **spec: Any) -> dict[str, Any]:
    chain = spec.pop("chain", {"steps": [{"module": "log"}]})
    return {"apiVersion": "whplane/v1", "kind": "Webhook",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"verify": {"scheme": "github", "secret": "{$GH_SECRET}"}, "chain": chain,
                     **spec}}


def put(etcd: EtcdServer, prefix: str, doc: dict[str, Any]) -> None:
    meta = doc["metadata"]
    key = ResourceKey(doc["kind"], meta.get("namespace"), meta["name"])
    etcd.put(resource_key(prefix, key), json.dumps(doc))


def post(client: httpx.Client, url: str, body: bytes = b"{}") -> httpx.Response:
    return client.post(url, content=body, headers={
        "content-type": "application/json",
        "x-hub-signature-256": github_signature(SECRET, body)})


@pytest.fixture
def gateways() -> Iterator[list[GatewayProcess]]:
    made: list[GatewayProcess] = []
    yield made
    for g in made:
        g.kill()


def test_413_before_the_body_is_read(
    etcd_server: EtcdServer, etcd_prefix: str, gateways: list[GatewayProcess]
) -> None:
    put(etcd_server, etcd_prefix, hook("gh", limits={"max_body_bytes": 1024}))
    gw = GatewayProcess(f"etcd://{etcd_server.endpoint}{etcd_prefix}", ENV).start()
    gateways.append(gw)
    for framing in (b"content-length: 100000000\r\n", b"transfer-encoding: chunked\r\n"):
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
            s.sendall(b"POST /webhook/acme/gh HTTP/1.1\r\nhost: x\r\n" + framing + b"\r\n")
            if b"chunked" in framing:
                s.sendall(b"800\r\n" + b"a" * 0x800 + b"\r\n")  # 2 KiB: over the limit
            else:
                s.sendall(b"a" * 2048)  # a sliver of the announced 100 MB
            answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_two_gateways_share_one_rate_limit(
    etcd_server: EtcdServer, etcd_prefix: str, redis_server: RedisServer,
    gateways: list[GatewayProcess],
) -> None:
    put(etcd_server, etcd_prefix, hook("gh", limits={"rate_per_second": 2, "burst": 4}))
    url = f"etcd://{etcd_server.endpoint}{etcd_prefix}"
    env = {**ENV, "WH_REDIS_URL": redis_server.url}
    a, b = GatewayProcess(url, env), GatewayProcess(url, env)
    gateways += [a, b]
    start_all([a, b])
    with httpx.Client(timeout=5) as c:
        t0 = time.monotonic()
        codes = [post(c, f"{g.url}/webhook/acme/gh").status_code for g in (a, b) * 6]
        elapsed = time.monotonic() - t0
    allowed = codes.count(200)
    # One bucket for both: burst 4 plus what refilled meanwhile, not 4 per gateway.
    assert 4 <= allowed <= 4 + int(2 * elapsed) + 1, (codes, elapsed)
    assert codes.count(429) == len(codes) - allowed


def test_config_change_under_traffic(
    etcd_server: EtcdServer, etcd_prefix: str, gateways: list[GatewayProcess]
) -> None:
    put(etcd_server, etcd_prefix, hook("gh"))
    gw = GatewayProcess(f"etcd://{etcd_server.endpoint}{etcd_prefix}", ENV).start()
    gateways.append(gw)
    stop = threading.Event()
    seen: list[tuple[int, int]] = []

    def traffic() -> None:
        with httpx.Client(timeout=5) as c:
            while not stop.is_set():
                r = post(c, f"{gw.url}/webhook/acme/gh")
                seen.append((r.status_code, int(r.headers["x-whplane-revision"])))

    t = threading.Thread(target=traffic)
    t.start()
    try:
        for i in range(20):
            put(etcd_server, etcd_prefix, hook("gh", chain={
                "timeout_s": 5 + i, "steps": [{"module": "log"}]}))
            put(etcd_server, etcd_prefix, hook(f"extra-{i}"))
            time.sleep(0.05)
    finally:
        time.sleep(0.3)
        stop.set()
        t.join()
    statuses = {s for s, _ in seen}
    revisions = [r for _, r in seen]
    assert statuses == {200}, statuses
    assert revisions == sorted(revisions), "one client never sees the revision go back"
    assert revisions[-1] > revisions[0]
    assert len(set(revisions)) > 5


def test_sigkill_with_deliveries_pending_loses_none(
    tmp_path: Path, etcd_server: EtcdServer, etcd_prefix: str, redis_own: RedisServer,
    gateways: list[GatewayProcess],
) -> None:
    with Sink(delay_s=0.5) as sink:
        put(etcd_server, etcd_prefix, {
            "apiVersion": "whplane/v1", "kind": "Connection",
            "metadata": {"name": "dest", "namespace": "acme"},
            "spec": {"type": "http", "url": sink.url, "allow_private": True}})
        put(etcd_server, etcd_prefix, hook("gh", delivery={"mode": "async"}, chain={
            "steps": [{"module": "http", "connection": "dest"}]}))
        url = f"etcd://{etcd_server.endpoint}{etcd_prefix}"
        env = {**ENV, "WH_REDIS_URL": redis_own.url, "WH_CLAIM_IDLE_S": "1",
               "WH_WORKER_CONCURRENCY": "4"}
        a = GatewayProcess(url, env).start()
        gateways.append(a)
        ids = []
        with httpx.Client(timeout=5) as c:
            for i in range(30):
                r = post(c, f"{a.url}/webhook/acme/gh", json.dumps({"n": i}).encode())
                assert r.status_code == 202, r.text
                ids.append(r.json()["id"])
        time.sleep(0.3)  # A is now mid-delivery on some of them
        a.kill()
        assert len(sink.delivered_ids()) < len(ids), "the test needs pending deliveries"
        b = GatewayProcess(url, env, command="worker").start()
        gateways.append(b)
        deadline = time.monotonic() + 30
        while not set(ids) <= sink.delivered_ids() and time.monotonic() < deadline:
            time.sleep(0.1)
        missing = set(ids) - sink.delivered_ids()
        assert not missing, f"{len(missing)} deliveries lost\n{b.log_tail()}"


def test_examples_are_served(gateways: list[GatewayProcess], tmp_path: Path) -> None:
    gw = GatewayProcess("file:examples/", {"WH_EXAMPLES_OUT": str(tmp_path)}).start()
    gateways.append(gw)
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    with httpx.Client(timeout=5) as c:
        r = c.post(f"{gw.url}/webhook/acme/github-push", content=body, headers={
            "content-type": "application/json",
            "x-hub-signature-256": github_signature("local-github-secret", body)})
        assert r.status_code == 200, r.text
        status = c.get(f"{gw.url}/status").json()
    assert status["namespaces"] == {"acme": 6, "globex": 1}, status
    assert status["errors"] == {}
    assert (tmp_path / "acme-github.jsonl").exists()


def test_gateway_registers_in_etcd_under_a_lease(
    etcd_server: EtcdServer, etcd_prefix: str, gateways: list[GatewayProcess]
) -> None:
    put(etcd_server, etcd_prefix, hook("gh"))
    gw = GatewayProcess(f"etcd://{etcd_server.endpoint}{etcd_prefix}", ENV,
                        gateway_id="gw-registered").start()
    gateways.append(gw)
    key = f"{etcd_prefix}gateways/gw-registered"
    revision = int(httpx.get(f"{gw.url}/readyz").json()["revision"])
    deadline = time.monotonic() + 10
    record: dict[str, Any] = {}
    while record.get("revision") != revision and time.monotonic() < deadline:
        record = json.loads(etcd_server.get(key) or b"{}")  # a first beat may say "starting"
        time.sleep(0.05)
    assert record["id"] == "gw-registered" and record["revision"] == revision
    assert record["health"] == "ok"
    put(etcd_server, etcd_prefix, hook("gh2"))
    deadline = time.monotonic() + 10
    while json.loads(etcd_server.get(key) or b"{}").get("revision") == revision:
        assert time.monotonic() < deadline, "heartbeat did not report the new revision"
        time.sleep(0.05)
    gw.kill()  # no goodbye: the lease must expire by itself (TTL = 3 heartbeats of 0.5 s)
    deadline = time.monotonic() + 10
    while etcd_server.get(key) is not None:
        assert time.monotonic() < deadline, "registration outlived the gateway"
        time.sleep(0.2)


def test_gateways_with_the_same_config_report_the_same_revision(
    etcd_server: EtcdServer, etcd_prefix: str, gateways: list[GatewayProcess]
) -> None:
    put(etcd_server, etcd_prefix, hook("gh"))
    url = f"etcd://{etcd_server.endpoint}{etcd_prefix}"
    a = GatewayProcess(url, ENV).start()
    gateways.append(a)
    time.sleep(1.5)  # a's heartbeats move etcd's own revision meanwhile
    b = GatewayProcess(url, ENV).start()
    gateways.append(b)
    revisions = {int(httpx.get(f"{g.url}/readyz").json()["revision"]) for g in (a, b)}
    assert len(revisions) == 1, revisions

"""Applies of any size on a stock etcd (default --max-txn-ops 128, --max-request-bytes 1.5 MiB):
one revision, all or nothing, for every reader, across a control plane killed at any moment."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aetcd
import httpx
import pytest

from cli.processes import ControlPlaneProcess, GatewayProcess, github_signature
from cli.servers import EtcdServer
from control_plane.api import create_api
from control_plane.etcd_store import EtcdStore
from providers.etcd import EtcdProvider
from providers.etcd_conn import EtcdSettings
from providers.holder import SnapshotHolder
from providers.resources import ResourceKey
from providers.snapshot import Snapshot
from providers.store_keys import COMMITS, resource_key

ADMIN = "admin-token-for-large-applies"
PREFIX = "/wh/"
AUTH = {"authorization": f"Bearer {ADMIN}"}


def ns(name: str) -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Namespace", "metadata": {"name": name}}


def hook(i: int, version: str, namespace: str = "acme",
         secret: str = "{$S}") -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Webhook",
            "metadata": {"name": f"h{i:05d}", "namespace": namespace, "labels": {"v": version}},
            "spec": {"verify": {"scheme": "github", "secret": secret},
                     "chain": {"steps": [{"module": "log"}]}}}


def versions(docs: Any) -> set[str]:
    return {d["metadata"]["labels"]["v"] for d in docs if d["kind"] == "Webhook"}


def snapshot_versions(snap: Snapshot) -> set[str]:
    return {e.resource.metadata.labels["v"] for k, e in snap.entries.items()
            if k.kind == "Webhook"}


async def etcd_client(server: EtcdServer) -> aetcd.Client:
    host, port = server.endpoint.split(":")
    c = aetcd.Client(host=host, port=int(port), timeout=10)
    await c.connect()
    return c


async def no_unfinished_commit(server: EtcdServer, timeout: float = 30) -> None:
    c = await etcd_client(server)
    try:
        deadline = time.monotonic() + timeout
        while (await c.get_prefix((PREFIX + COMMITS).encode(), keys_only=True)).count:
            assert time.monotonic() < deadline, "a commit stayed unmaterialized"
            await asyncio.sleep(0.1)
    finally:
        await c.close()


class Following:
    """A holder following an etcd provider, with every snapshot it published."""

    def __init__(self, url: str) -> None:
        self.provider = EtcdProvider(EtcdSettings.from_url(url))
        self.holder = SnapshotHolder(env={"S": "s3cret"})
        self.published: list[Snapshot] = []
        self.holder.on_publish(self.published.append)
        self.task = asyncio.create_task(self.holder.run(self.provider, load_timeout_s=10))

    async def at(self, revision: int, timeout: float = 60) -> Snapshot:
        deadline = time.monotonic() + timeout
        while not (self.holder.ready and self.holder.current.revision >= revision):
            assert time.monotonic() < deadline, f"never reached revision {revision}"
            await asyncio.sleep(0.02)
        return self.holder.current

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.provider.close()


@pytest.fixture
async def api(etcd_own: EtcdServer) -> AsyncIterator[tuple[httpx.AsyncClient, EtcdStore]]:
    store = EtcdStore(EtcdSettings.from_url(f"etcd://{etcd_own.endpoint}{PREFIX}"))
    app = create_api(store, ADMIN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cp",
                                 headers=AUTH, timeout=120) as client:
        yield client, store
    await store.close()


@pytest.mark.slow
async def test_ten_thousand_resources_are_one_revision_for_every_reader(
    api: tuple[httpx.AsyncClient, EtcdStore], etcd_own: EtcdServer
) -> None:
    client, _ = api
    url = f"etcd://{etcd_own.endpoint}{PREFIX}"
    follower = Following(url)
    try:
        revs = []
        for version in ("a", "b"):
            r = await client.post("/v1/apply", json={
                "resources": [ns("acme")] + [hook(i, version) for i in range(10_000)]})
            assert r.status_code == 200, r.text[:500]
            revs.append(r.json()["revision"])
            snap = await follower.at(revs[-1])
            assert snap.revision == revs[-1]
            assert snap.webhook_counts() == {"acme": 10_000}
            assert snapshot_versions(snap) == {version}
        await no_unfinished_commit(etcd_own)
        await asyncio.sleep(0.3)  # materialization events, had they been delivered
        # Every snapshot the gateway ever published was one whole revision, and the writes
        # that materialized the second apply did not move its label.
        seen = [(s.revision, snapshot_versions(s)) for s in follower.published]
        assert seen == [(0, set()), (revs[0], {"a"}), (revs[1], {"b"})] or \
            seen == [(revs[0], {"a"}), (revs[1], {"b"})], seen[:5]
        assert follower.holder.current.revision == revs[1]
        # A fresh gateway and a fresh control-plane read agree, materialized.
        fresh = EtcdProvider(EtcdSettings.from_url(url))
        batch = await fresh.load()
        await fresh.close()
        assert batch.revision == revs[1] and len(batch.puts) == 10_001
        again = EtcdStore(EtcdSettings.from_url(url))
        revision, stored = await again.read()
        assert revision == revs[1]
        assert {s.mod_revision for k, s in stored.items() if k.kind == "Webhook"} == {revs[1]}
        assert versions(s.doc for s in stored.values()) == {"b"}
        record = await again.history_get(revs[1])
        assert record is not None and len(record.changes) == 10_000
        assert {c.before["metadata"]["labels"]["v"] for c in record.changes} == {"a"}  # type: ignore[index]
        assert [r.revision for r in await again.history(5)] == [revs[1], revs[0]]
        await again.close()
    finally:
        await follower.stop()


@pytest.mark.slow
async def test_namespace_of_5000_webhooks_is_deleted_in_one_revision(
    api: tuple[httpx.AsyncClient, EtcdStore], etcd_own: EtcdServer
) -> None:
    client, store = api
    r = await client.post("/v1/apply", json={
        "resources": [ns("acme"), ns("other"), hook(1, "x", "other")]
        + [hook(i, "a") for i in range(5_000)]})
    assert r.status_code == 200, r.text[:300]
    follower = Following(f"etcd://{etcd_own.endpoint}{PREFIX}")
    try:
        await follower.at(r.json()["revision"])
        r = await client.delete("/v1/resources/Namespace/_global/acme")
        assert r.status_code == 200, r.text[:300]
        revision = r.json()["revision"]
        assert len(r.json()["changes"]) == 5_001
        snap = await follower.at(revision)
        assert snap.revision == revision and snap.webhook_counts() == {"other": 1}
        assert [s.webhook_counts().get("acme", 0) for s in follower.published] \
            in ([0, 5_000, 0], [5_000, 0])
        _, stored = await store.read()
        assert sorted(str(k) for k in stored) == ["Namespace/_global/other",
                                                  "Webhook/other/h00001"]
        record = await store.history_get(revision)
        assert record is not None and len(record.changes) == 5_001
        assert all(c.op == "delete" for c in record.changes)
    finally:
        await follower.stop()


async def test_writes_after_a_commit_win_over_its_materialization(
    etcd_own: EtcdServer
) -> None:
    """A value put into etcd while a large apply is still materializing stays, for everyone."""
    url = f"etcd://{etcd_own.endpoint}{PREFIX}"
    store = EtcdStore(EtcdSettings.from_url(url))
    app = create_api(store, ADMIN)
    direct = hook(7, "direct")
    key = resource_key(PREFIX, ResourceKey("Webhook", "acme", "h00007"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cp",
                                 headers=AUTH, timeout=60) as client:
        r = await client.post("/v1/apply", json={"resources": [ns("acme")]})
        # Hold materialization back until the direct write is in.
        gate = asyncio.Event()
        materialize = store._large.materialize

        async def gated(*args: Any, **kw: Any) -> None:
            await gate.wait()
            await materialize(*args, **kw)

        store._large.materialize = gated  # type: ignore[method-assign]
        r = await client.post("/v1/apply", json={
            "resources": [hook(i, "big") for i in range(300)]})
        assert r.status_code == 200, r.text[:300]
        revision = r.json()["revision"]
        etcd_own.put(key, json.dumps(direct))
        follower = Following(url)
        try:
            snap = await follower.at(revision + 1)
            fresh, stored = await EtcdStore(EtcdSettings.from_url(url)).read()
            assert fresh == revision
            assert stored[ResourceKey("Webhook", "acme", "h00007")].doc == direct
            assert snap.webhook("acme", "h00007").metadata.labels["v"] == "direct"  # type: ignore[union-attr]
            gate.set()
            await store._large.wait()
            await no_unfinished_commit(etcd_own)
            assert json.loads(etcd_own.get(key) or b"{}") == direct
            _, stored = await store.read()
            assert versions(s.doc for s in stored.values()) == {"big", "direct"}
            await asyncio.sleep(0.3)
            assert snapshot_versions(follower.holder.current) == {"big", "direct"}
        finally:
            await follower.stop()
    await store.close()


# -- real processes ------------------------------------------------------------------------


@pytest.fixture
def cp(etcd_own: EtcdServer) -> Iterator[ControlPlaneProcess]:
    with ControlPlaneProcess(f"etcd://{etcd_own.endpoint}{PREFIX}", ADMIN) as proc:
        yield proc


def post_signed(client: httpx.Client, url: str, secret: str) -> httpx.Response:
    body = b'{"zen": "keep it logically awesome"}'
    return client.post(url, content=body, headers={
        "content-type": "application/json", "x-hub-signature-256": github_signature(secret, body)})


@pytest.mark.slow
def test_large_apply_under_signed_traffic_no_request_sees_a_mixed_revision(
    etcd_own: EtcdServer, cp: ControlPlaneProcess
) -> None:
    """10,000 webhooks change secret in one apply while a gateway serves them: every answer is
    the old revision and the old secret, or the new revision and the new secret."""
    n = 10_000
    env = {"SECRET_A": "secret-a", "SECRET_B": "secret-b", "WH_LOG_LEVEL": "warning"}
    with httpx.Client(base_url=cp.url, headers=AUTH, timeout=120) as c:
        r = c.post("/v1/apply", json={"resources": [ns("acme")] + [
            hook(i, "a", secret="{$SECRET_A}") for i in range(n)]})
        assert r.status_code == 200, r.text[:300]
        old = r.json()["revision"]
    with GatewayProcess(f"etcd://{etcd_own.endpoint}{PREFIX}", env) as gw:
        targets = [0, 1, 4_999, 9_998, 9_999]
        answers: list[tuple[int, int, int]] = []
        stop = threading.Event()

        def traffic() -> None:
            with httpx.Client(base_url=gw.url, timeout=10) as g:
                while not stop.is_set():
                    i = random.choice(targets)
                    # Signed with the new secret: 401 from the old version, 200 from the new.
                    resp = post_signed(g, f"/webhook/acme/h{i:05d}", "secret-b")
                    answers.append((i, int(resp.headers["x-whplane-revision"]),
                                    resp.status_code))

        threads = [threading.Thread(target=traffic) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)
            with httpx.Client(base_url=cp.url, headers=AUTH, timeout=120) as c:
                r = c.post("/v1/apply", json={"resources": [
                    hook(i, "b", secret="{$SECRET_B}") for i in range(n)]})
                assert r.status_code == 200, r.text[:300]
                new = r.json()["revision"]
            deadline = time.monotonic() + 60
            while not any(rev == new for _, rev, _ in answers[-5:]):
                assert time.monotonic() < deadline, gw.log_tail()
                time.sleep(0.1)
            time.sleep(1.5)  # materialization happens meanwhile: the label must stay
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        expected = {old: 401, new: 200}
        wrong = [a for a in answers if expected.get(a[1]) != a[2]]
        assert not wrong, wrong[:10]
        assert {rev for _, rev, _ in answers} == {old, new}
        assert answers[-1][1] == new
        assert len(answers) > 50


async def apply(url: str, docs: list[dict[str, Any]]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=60) as c:
        return await c.post("/v1/apply", json={"resources": docs})


def start_apply(url: str, docs: list[dict[str, Any]]) -> threading.Thread:
    def go() -> None:
        try:
            httpx.post(f"{url}/v1/apply", json={"resources": docs}, headers=AUTH, timeout=60)
        except httpx.HTTPError:
            pass  # killed mid-request: expected

    thread = threading.Thread(target=go)
    thread.start()
    return thread


@pytest.mark.slow
async def test_control_plane_killed_anywhere_in_a_large_apply_leaves_before_or_after(
    etcd_own: EtcdServer
) -> None:
    n = 2_000
    url = f"etcd://{etcd_own.endpoint}{PREFIX}"
    proc = ControlPlaneProcess(url, ADMIN).start()
    try:
        r = await apply(proc.url, [ns("acme")] + [hook(i, "v0") for i in range(n)])
        assert r.status_code == 200, r.text[:300]
        state, revision = "v0", r.json()["revision"]
        outcomes = []
        rng = random.Random(7)
        for round_ in range(1, 11):
            nxt = f"v{round_}"
            thread = start_apply(proc.url, [hook(i, nxt) for i in range(n)])
            await asyncio.sleep(rng.uniform(0.05, 1.5))
            assert proc.proc is not None
            os.killpg(proc.proc.pid, signal.SIGKILL)
            proc.proc.wait(5)
            thread.join(10)
            c = await etcd_client(etcd_own)
            unfinished = (await c.get_prefix((PREFIX + COMMITS).encode(), keys_only=True)).count
            await c.close()
            # What any reader sees now: all of the old state or all of the new one.
            store = EtcdStore(EtcdSettings.from_url(url))
            now, stored = await store.read()
            seen = versions(s.doc for s in stored.values())
            assert seen in ({state}, {nxt}), (round_, seen)
            provider = EtcdProvider(EtcdSettings.from_url(url))
            batch = await provider.load()
            await provider.close()
            assert batch.revision == now
            loaded = versions(json.loads(v) for v in batch.puts.values())  # type: ignore[arg-type]
            assert loaded == seen
            history = await store.history(3)
            if seen == {nxt}:
                assert now > revision and history[0].revision == now
                assert len(history[0].changes) == n
                assert {c.after["metadata"]["labels"]["v"]  # type: ignore[index]
                        for c in history[0].changes} == {nxt}
                state, revision = nxt, now
                outcomes.append("after, unfinished" if unfinished else "after")
            else:
                assert now == revision and history[0].revision == revision
                assert not unfinished
                outcomes.append("before")
            await store.close()
            proc = ControlPlaneProcess(url, ADMIN).start()
        # The next apply succeeds, and whatever was left unfinished got finished.
        r = await apply(proc.url, [hook(i, "final") for i in range(n)])
        assert r.status_code == 200, r.text[:300]
        await no_unfinished_commit(etcd_own)
        print("kill outcomes:", outcomes)
    finally:
        proc.stop()

"""The etcd provider and the RCU holder against real etcd servers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aetcd
import pytest

from cli.servers import EtcdCluster, EtcdServer
from providers.etcd import EtcdProvider
from providers.etcd_conn import EtcdSettings
from providers.holder import SnapshotHolder
from providers.last_good import LastGood
from providers.provider import ChangeBatch, ProviderState
from providers.resources import ResourceKey
from providers.snapshot import Snapshot
from providers.store_keys import resource_key
from tests.docs import connection, webhook

ENV = {"S": "s3cret"}


def key(prefix: str, kind: str, ns: str | None, name: str) -> bytes:
    return resource_key(prefix, ResourceKey(kind, ns, name)).encode()


def hook(name: str, **kw: object) -> bytes:
    return json.dumps(webhook(name, secret="{$S}", **kw)).encode()  # type: ignore[arg-type]


async def client(endpoint: str) -> aetcd.Client:
    host, port = endpoint.split(":")
    c = aetcd.Client(host=host, port=int(port), timeout=5)
    await c.connect()
    return c


class Running:
    """A holder following a provider in a background task, with every published snapshot."""

    def __init__(self, provider: EtcdProvider, holder: SnapshotHolder) -> None:
        self.provider, self.holder = provider, holder
        self.published: list[Snapshot] = []
        holder.on_publish(self.published.append)
        self.task = asyncio.create_task(holder.run(provider, load_timeout_s=3))

    async def until(self, check: object, timeout: float = 10) -> Snapshot:
        async def wait() -> Snapshot:
            while True:
                snap = self.holder.current
                if self.holder.ready and check(snap):  # type: ignore[operator]
                    return snap
                await asyncio.sleep(0.02)

        return await asyncio.wait_for(wait(), timeout)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.provider.close()


@pytest.fixture
async def running(etcd_server: EtcdServer, etcd_prefix: str) -> AsyncIterator[Running]:
    r = Running(
        EtcdProvider(EtcdSettings.from_url(f"etcd://{etcd_server.endpoint}{etcd_prefix}")),
        SnapshotHolder(env=ENV),
    )
    yield r
    await r.stop()


async def test_put_and_delete_change_snapshot_and_revision(
    running: Running, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    await running.holder.wait_ready(10)
    c = await client(etcd_server.endpoint)
    put = await c.put(key(etcd_prefix, "Webhook", "acme", "gh"), hook("gh"))
    snap = await running.until(lambda s: s.webhook("acme", "gh") is not None)
    assert snap.revision == put.header.revision
    assert snap.webhook("acme", "gh").spec.verify.secret == ("s3cret",)  # type: ignore[union-attr]
    deleted = await c.delete(key(etcd_prefix, "Webhook", "acme", "gh"))
    snap = await running.until(lambda s: s.webhook("acme", "gh") is None)
    assert snap.revision == deleted.header.revision
    await c.close()


async def test_transaction_is_one_batch_and_one_swap(
    running: Running, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    await running.holder.wait_ready(10)
    before = len(running.published)
    c = await client(etcd_server.endpoint)
    ops = [c.transactions.put(key(etcd_prefix, "Connection", None, "api"),
                              json.dumps(connection("api")).encode())]
    ops += [c.transactions.put(key(etcd_prefix, "Webhook", "acme", f"h{i}"),
                               hook(f"h{i}", connections=("api",))) for i in range(50)]
    ok, _ = await c.transaction(compare=[], success=ops, failure=[])
    assert ok
    snap = await running.until(lambda s: len(s) == 51)
    assert len(running.published) == before + 1, "one transaction must be one swap"
    assert not snap.errors
    snap.check_consistent()
    await c.close()


async def test_write_between_load_and_watch_is_not_missed(
    etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    provider = EtcdProvider(EtcdSettings.from_url(f"etcd://{etcd_server.endpoint}{etcd_prefix}"))
    loaded = await provider.load()
    etcd_server.put(key(etcd_prefix, "Webhook", "acme", "late"), hook("late"))
    watch = provider.watch(loaded.revision)
    batch = await asyncio.wait_for(anext(watch), 10)
    assert ResourceKey("Webhook", "acme", "late") in batch.puts
    assert batch.revision > loaded.revision
    await provider.close()


async def test_compaction_while_disconnected_reloads_fully(
    etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    c = await client(etcd_server.endpoint)
    await c.put(key(etcd_prefix, "Webhook", "acme", "a"), hook("a"))
    await c.put(key(etcd_prefix, "Webhook", "acme", "b"), hook("b"))
    provider = EtcdProvider(EtcdSettings.from_url(f"etcd://{etcd_server.endpoint}{etcd_prefix}"))
    holder = SnapshotHolder(env=ENV)
    await holder.apply(await provider.load())
    seen = holder.current.revision
    # While this gateway is not watching: changes, then a compaction past them.
    await c.delete(key(etcd_prefix, "Webhook", "acme", "a"))
    await c.put(key(etcd_prefix, "Webhook", "acme", "c"), hook("c"))
    last = await c.put(key(etcd_prefix, "Webhook", "acme", "b"), hook("b", chain={
        "timeout_s": 7, "steps": [{"module": "log"}]}))
    await c.compact(last.header.revision)
    batch = await asyncio.wait_for(anext(provider.watch(seen)), 10)
    assert batch.full and batch.revision >= last.header.revision
    snap = await holder.apply(batch)
    assert sorted(k.name for k in snap.entries.keys()) == ["b", "c"]
    assert snap.webhook("acme", "b").spec.chain.timeout_s == 7  # type: ignore[union-attr]
    await provider.close()
    await c.close()


async def test_invalid_value_is_skipped_previous_kept_error_recorded(
    running: Running, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    await running.holder.wait_ready(10)
    k = key(etcd_prefix, "Webhook", "acme", "gh").decode()
    etcd_server.etcdctl("put", k, hook("gh").decode())
    good = await running.until(lambda s: s.webhook("acme", "gh") is not None)
    hook_before = good.webhook("acme", "gh")
    bad = json.dumps(webhook("gh", secret="{$S}", delivery={"mode": "whenever"}))
    etcd_server.etcdctl("put", k, bad)
    snap = await running.until(lambda s: s.revision > good.revision)
    assert snap.webhook("acme", "gh") is hook_before
    assert "spec.delivery.mode" in snap.errors["Webhook/acme/gh"]
    # A key outside the layout is reported as a source error, not a crash.
    etcd_server.etcdctl("put", f"{etcd_prefix}resources/acme/Gadget/x", "{}")
    snap = await running.until(lambda s: any(k.startswith("source:") for k in s.errors))
    assert snap.webhook("acme", "gh") is hook_before


async def test_cluster_member_killed_no_interruption(etcd_cluster: EtcdCluster) -> None:
    prefix = "/whplane/"
    provider = EtcdProvider(EtcdSettings.from_url(f"etcd://{etcd_cluster.endpoints}{prefix}"))
    r = Running(provider, SnapshotHolder(env=ENV))
    try:
        await r.holder.wait_ready(10)
        victim = next(m for m in etcd_cluster.members if m.endpoint == provider.status.endpoint)
        others = [m for m in etcd_cluster.members if m is not victim]
        served = r.holder.current
        victim.kill()
        assert r.holder.current is served  # nothing to wait for: the snapshot keeps serving
        # A killed leader costs the others an election; writes need it, readers do not.
        await asyncio.to_thread(etcd_cluster.wait_healthy)
        for i in range(5):
            others[i % 2].put(key(prefix, "Webhook", "acme", f"h{i}"), hook(f"h{i}"))
        snap = await r.until(lambda s: len(s) == 5, timeout=15)
        assert r.holder.current is snap and not snap.errors
        assert provider.status.endpoint != victim.endpoint
        assert provider.status.state is ProviderState.CONNECTED
    finally:
        await r.stop()


async def test_etcd_down_keeps_serving_then_catches_up(etcd_own: EtcdServer) -> None:
    prefix = "/whplane/"
    etcd_own.put(key(prefix, "Webhook", "acme", "a"), hook("a"))
    provider = EtcdProvider(EtcdSettings.from_url(f"etcd://{etcd_own.endpoint}{prefix}"))
    r = Running(provider, SnapshotHolder(env=ENV))
    try:
        snap = await r.until(lambda s: s.webhook("acme", "a") is not None)
        etcd_own.stop()
        await r.until(lambda s: provider.status.state is ProviderState.DISCONNECTED)
        assert r.holder.current is snap  # still serving the last good snapshot
        assert provider.status.last_error
        etcd_own.start()
        etcd_own.put(key(prefix, "Webhook", "acme", "b"), hook("b"))
        await r.until(lambda s: s.webhook("acme", "b") is not None, timeout=20)
        assert provider.status.state is ProviderState.CONNECTED
    finally:
        await r.stop()


async def test_starts_from_last_good_config_while_etcd_down(
    etcd_own: EtcdServer, tmp_path: Path
) -> None:
    prefix = "/whplane/"
    url = f"etcd://{etcd_own.endpoint}{prefix}"
    etcd_own.put(key(prefix, "Webhook", "acme", "a"), hook("a"))
    lg = LastGood(tmp_path / "last-good.jsonl")
    first = Running(EtcdProvider(EtcdSettings.from_url(url)),
                    SnapshotHolder(env=ENV, last_good=lg, source=url))
    served = await first.until(lambda s: s.webhook("acme", "a") is not None)
    await first.holder.flush()
    await first.stop()
    assert b"s3cret" not in (tmp_path / "last-good.jsonl").read_bytes()

    etcd_own.stop()
    second = Running(EtcdProvider(EtcdSettings.from_url(url)),
                     SnapshotHolder(env=ENV, last_good=lg, source=url))
    try:
        snap = await second.until(lambda s: s.webhook("acme", "a") is not None)
        assert second.holder.started_from_last_good
        assert snap.revision == served.revision
        etcd_own.start()
        etcd_own.put(key(prefix, "Webhook", "acme", "b"), hook("b"))
        await second.until(lambda s: s.webhook("acme", "b") is not None, timeout=20)
    finally:
        await second.stop()


async def test_load_pages_through_many_keys(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    c = await client(etcd_server.endpoint)
    for start in range(0, 12_000, 100):  # etcd's default: 128 operations per transaction
        ops = [c.transactions.put(key(etcd_prefix, "Webhook", "acme", f"h{i}"), hook(f"h{i}"))
               for i in range(start, start + 100)]
        await c.transaction(compare=[], success=ops, failure=[])
    provider = EtcdProvider(EtcdSettings.from_url(f"etcd://{etcd_server.endpoint}{etcd_prefix}"))
    batch: ChangeBatch = await provider.load()
    assert len(batch.puts) == 12_000
    await provider.close()
    await c.close()


async def test_canary_record_travels_with_its_revision(etcd_own: EtcdServer) -> None:
    """Set with a large apply, the record arrives in the batch of the apply's resources; full
    loads carry it and what the canary changed, as it was before; an invalid record is a
    source error and no canary."""
    from control_plane.changes import plan
    from control_plane.etcd_store import EtcdStore
    from control_plane.store import Draft
    from providers.rollout import Canary
    from providers.store_keys import canary_key

    url = f"etcd://{etcd_own.endpoint}/cn/"
    store = EtcdStore(EtcdSettings.from_url(url))
    provider = EtcdProvider(EtcdSettings.from_url(url))
    ns_doc = {"apiVersion": "whplane/v1", "kind": "Namespace", "metadata": {"name": "acme"}}

    async def commit(size: int, canary: Canary | None = None, clear_canary: bool = False
                     ) -> int:
        revision, current = await store.read()
        wanted = {ResourceKey("Namespace", None, "acme"): ns_doc}
        wanted.update({ResourceKey("Webhook", "acme", f"h{i}"):
                       webhook(f"h{i}", secret="{$S}", limits={"burst": size})
                       for i in range(size)})
        changes, puts, removed = plan(current, wanted)
        effective = tuple(c for c in changes if c.op != "unchanged")
        return await store.commit(Draft(puts, removed, effective, "t", "m", canary=canary,
                                        clear_canary=clear_canary), revision)

    try:
        base = await commit(200)
        first = await provider.load()
        batches: list[ChangeBatch] = []

        async def follow() -> None:
            async for b in provider.watch(first.revision):
                batches.append(b)

        task = asyncio.create_task(follow())
        drafted = Canary(revision=0, base=base, selector={"canary": "true"}, started=1.0)
        rev = await commit(300, canary=drafted)
        for _ in range(200):
            if any(b.revision == rev for b in batches):
                break
            await asyncio.sleep(0.02)
        [batch] = [b for b in batches if b.revision == rev]
        assert batch.canary_changed and batch.canary is not None
        assert batch.canary.revision == rev and batch.canary.base == base
        assert len(batch.puts) == 300
        assert (await store.canary()) == batch.canary

        loaded = await EtcdProvider(EtcdSettings.from_url(url)).load()
        assert loaded.canary == batch.canary and loaded.canary_before is not None
        before = loaded.canary_before
        assert len(before) == 300
        assert before[ResourceKey("Webhook", "acme", "h250")] is None  # created by the canary
        h0 = json.loads(before[ResourceKey("Webhook", "acme", "h0")])  # type: ignore[arg-type]
        assert h0["spec"]["limits"]["burst"] == 200

        ended = await commit(1, clear_canary=True)
        for _ in range(200):
            if any(b.revision == ended for b in batches):
                break
            await asyncio.sleep(0.02)
        [end] = [b for b in batches if b.revision == ended]
        assert end.canary_changed and end.canary is None

        etcd_own.put(canary_key("/cn/"), "{not json")
        broken = await EtcdProvider(EtcdSettings.from_url(url)).load()
        assert broken.canary is None and any("canary" in e for e in broken.source_errors)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await provider.close()
        await store.close()

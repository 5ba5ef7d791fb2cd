"""Config layer benchmark: etcd holding N webhooks in N/10 namespaces.

Prints: cold load to a ready snapshot, the cost of one change at 1k vs N webhooks, snapshot
memory per webhook, and put -> swap latency p50/p99. Figures, not assertions.

    python -m bench.config_layer [--webhooks 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
import tracemalloc

import aetcd

from cli.servers import EtcdServer
from providers.etcd import EtcdProvider
from providers.etcd_conn import EtcdSettings
from providers.holder import SnapshotHolder
from providers.provider import ChangeBatch
from providers.resources import ResourceKey
from providers.store_keys import resource_key
from tests.docs import connection, namespace, webhook

PREFIX = "/whplane/"
ENV = {"GITHUB_SECRET": "s3cret", "API_TOKEN": "t0ken"}


def documents(n_hooks: int) -> dict[ResourceKey, bytes]:
    docs: dict[ResourceKey, bytes] = {}
    n_ns = max(1, n_hooks // 10)
    docs[ResourceKey("Connection", None, "events")] = json.dumps(connection(
        "events", type="redis", url="redis://127.0.0.1:6379/0")).encode()
    for n in range(n_ns):
        ns = f"tenant-{n:05d}"
        docs[ResourceKey("Namespace", None, ns)] = json.dumps(namespace(ns)).encode()
        docs[ResourceKey("Connection", ns, "api")] = json.dumps(connection(
            "api", ns, type="http", url=f"https://{ns}.example/hooks",
            headers={"Authorization": "Bearer {$API_TOKEN}"})).encode()
    for i in range(n_hooks):
        ns = f"tenant-{i % n_ns:05d}"
        doc = webhook(f"hook-{i:06d}", ns, secret="{$GITHUB_SECRET}", connections=("api",),
                      limits={"rate_per_second": 50})
        doc["metadata"]["labels"] = {"source": "github"}
        docs[ResourceKey("Webhook", ns, f"hook-{i:06d}")] = json.dumps(doc).encode()
    return docs


async def seed(endpoint: str, docs: dict[ResourceKey, bytes]) -> None:
    host, port = endpoint.split(":")
    c = aetcd.Client(host=host, port=int(port), timeout=30)
    items = list(docs.items())
    for start in range(0, len(items), 100):  # etcd's default: 128 operations per transaction
        ops = [c.transactions.put(resource_key(PREFIX, k).encode(), v)
               for k, v in items[start : start + 100]]
        await c.transaction(compare=[], success=ops, failure=[])
    await c.close()


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


async def change_cost(holder: SnapshotHolder, docs: dict[ResourceKey, bytes], runs: int) -> float:
    keys = [k for k in docs if k.kind == "Webhook"][:runs]
    rev = holder.current.revision
    times = []
    for i, k in enumerate(keys):
        doc = json.loads(docs[k])
        doc["spec"]["chain"]["timeout_s"] = 10 + i % 7
        batch = ChangeBatch(rev + i + 1, {k: json.dumps(doc).encode()})
        t0 = time.perf_counter()
        await holder.apply(batch)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


async def main(n_hooks: int) -> None:
    print(f"# config layer: {n_hooks} webhooks in {max(1, n_hooks // 10)} namespaces, etcd 3.5")
    docs = documents(n_hooks)
    small = documents(1000)
    with EtcdServer(unsafe_no_fsync=True, extra_args=("--quota-backend-bytes", "8589934592")) as etcd:
        t0 = time.perf_counter()
        await seed(etcd.endpoint, docs)
        print(f"seeded {len(docs)} keys in {time.perf_counter() - t0:.1f} s")
        url = f"etcd://{etcd.endpoint}{PREFIX}"

        # Cold load: range (each page planned as it arrives: validated, shapes found) +
        # resolve + build, to a ready snapshot.
        loads = []
        for _ in range(3):
            provider = EtcdProvider(EtcdSettings.from_url(url))
            holder = SnapshotHolder(env=ENV)
            gc.collect()
            t0 = time.perf_counter()
            batch = await provider.load()
            t_range = time.perf_counter() - t0
            snap = await holder.apply(batch)
            loads.append((time.perf_counter() - t0, t_range))
            await provider.close()
        assert len(snap.entries) == len(docs) and not snap.errors, snap.errors
        best = min(loads)
        print(f"cold load to ready snapshot: {best[0]:.2f} s (etcd range and plan {best[1]:.2f} s) "
              f"[goal <= 3 s]")

        # One change at 1k vs N webhooks.
        big_cost = await change_cost(holder, docs, 300)
        small_holder = SnapshotHolder(env=ENV)
        await small_holder.apply(ChangeBatch(1, small, full=True))
        small_cost = await change_cost(small_holder, small, 300)
        print(f"one change: {small_cost * 1e6:.0f} us at 1k webhooks, {big_cost * 1e6:.0f} us at "
              f"{n_hooks // 1000}k -> ratio {big_cost / small_cost:.2f} [goal <= 1.5]")

        # Memory retained by the snapshot, per webhook (raw documents included).
        del holder, snap, batch, small_holder
        gc.collect()
        provider = EtcdProvider(EtcdSettings.from_url(url))
        batch = await provider.load()
        await provider.close()
        tracemalloc.start()
        holder = SnapshotHolder(env=ENV)
        await holder.apply(batch)
        del batch
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        raw_size = sum(len(v) for v in docs.values()) / len(docs)
        shaped = sum(e.shape is not None for e in holder.current.entries.values())
        print(f"snapshot memory: {retained / len(docs):.0f} B per resource (stored documents "
              f"of {raw_size:.0f} B each, {shaped} of {len(docs)} kept as their shape) "
              "[goal <= 2 KB]")

        # put -> swap latency through the live watch.
        provider = EtcdProvider(EtcdSettings.from_url(url))
        holder = SnapshotHolder(env=ENV)
        swapped: dict[int, float] = {}
        holder.on_publish(lambda s: swapped.__setitem__(s.revision, time.perf_counter()))
        task = asyncio.create_task(holder.run(provider, load_timeout_s=60))
        await holder.wait_ready(120)
        host, port = etcd.endpoint.split(":")
        c = aetcd.Client(host=host, port=int(port), timeout=5)
        lat = []
        k = next(k for k in docs if k.kind == "Webhook")
        for i in range(200):
            doc = json.loads(docs[k])
            doc["spec"]["chain"]["timeout_s"] = 1 + i % 50
            t0 = time.perf_counter()
            put = await c.put(resource_key(PREFIX, k).encode(), json.dumps(doc).encode())
            while put.header.revision not in swapped:
                await asyncio.sleep(0.0002)
            lat.append(swapped[put.header.revision] - t0)
        print(f"put -> swap at {n_hooks // 1000}k webhooks: p50 {pct(lat, 50) * 1000:.2f} ms, "
              f"p99 {pct(lat, 99) * 1000:.2f} ms ({len(lat)} puts)")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await provider.close()
        await c.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--webhooks", type=int, default=100_000)
    args = ap.parse_args()
    sys.exit(asyncio.run(main(args.webhooks)))

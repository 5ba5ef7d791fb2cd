"""A real gateway process against etcd holding N webhooks in N/10 namespaces.

Prints, each with its goal: process start -> `/readyz`, the gateway's resident memory once
ready, and one change served (put to etcd -> `/readyz` reports its revision), p50 and p99.
Figures, not assertions. 100k webhooks by default; the million (a few minutes, ~2 GB) only
when asked:

    python -m bench.million                      # 100k webhooks in 10k namespaces
    WH_BENCH_MILLION=1 python -m bench.million   # and then 1M in 100k namespaces
"""

from __future__ import annotations

import asyncio
import compileall
import json
import os
import sys
import time
from pathlib import Path

import aetcd
import httpx

from bench.config_layer import ENV, PREFIX, documents, pct
from cli.processes import GatewayProcess
from cli.servers import EtcdServer
from providers.resources import ResourceKey
from providers.store_keys import resource_key

# Goals of issue 11, by number of webhooks: (ready s, RSS MB, change p99 ms).
GOALS = {100_000: (2.0, 250, 25.0), 1_000_000: (20.0, 2048, 25.0)}
CHANGES = 200


async def seed(endpoint: str, docs: dict[ResourceKey, bytes]) -> None:
    host, port = endpoint.split(":")
    c = aetcd.Client(host=host, port=int(port), timeout=60)
    items = list(docs.items())
    chunks = [items[i : i + 100] for i in range(0, len(items), 100)]  # etcd's max: 128 ops
    sem = asyncio.Semaphore(8)

    async def put(chunk: list[tuple[ResourceKey, bytes]]) -> None:
        async with sem:
            await c.transaction(compare=[], success=[
                c.transactions.put(resource_key(PREFIX, k).encode(), v) for k, v in chunk],
                failure=[])

    await asyncio.gather(*(put(chunk) for chunk in chunks))
    await c.close()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used: on a shared machine, steadier than
    wall time for comparing two runs."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def served_revision(client: httpx.Client, url: str) -> int:
    r = client.get(f"{url}/readyz", timeout=5)
    return int(r.json().get("revision", 0)) if r.status_code == 200 else 0


async def change_latencies(gw: GatewayProcess, endpoint: str,
                           docs: dict[ResourceKey, bytes]) -> list[float]:
    host, port = endpoint.split(":")
    c = aetcd.Client(host=host, port=int(port), timeout=10)
    keys = [k for k in docs if k.kind == "Webhook"]
    await c.get(resource_key(PREFIX, keys[0]).encode())  # connected before the clock runs
    lat = []
    with httpx.Client() as http:
        for i in range(CHANGES):
            k = keys[(i * 7919) % len(keys)]  # spread over the namespaces
            doc = json.loads(docs[k])
            doc["spec"]["chain"]["timeout_s"] = 1 + i % 50
            t0 = time.perf_counter()
            put = await c.put(resource_key(PREFIX, k).encode(), json.dumps(doc).encode())
            while served_revision(http, gw.url) < put.header.revision:
                if time.perf_counter() - t0 > 10:
                    raise RuntimeError(f"revision {put.header.revision} not served in 10 s")
            lat.append(time.perf_counter() - t0)
    await c.close()
    return lat


async def run(n_hooks: int) -> None:
    n_ns = max(1, n_hooks // 10)
    ready_goal, rss_goal, p99_goal = GOALS.get(n_hooks, GOALS[100_000])
    label = f"{n_hooks // 1000}k" if n_hooks < 1_000_000 else f"{n_hooks // 1_000_000}M"
    print(f"# gateway process: {n_hooks} webhooks in {n_ns} namespaces, etcd")
    docs = documents(n_hooks)
    with EtcdServer(unsafe_no_fsync=True,
                    extra_args=("--quota-backend-bytes", "8589934592")) as etcd:
        t0 = time.perf_counter()
        await seed(etcd.endpoint, docs)
        print(f"seeded {len(docs)} keys in {time.perf_counter() - t0:.1f} s")
        config = f"etcd://{etcd.endpoint}{PREFIX}"
        readies, rsses, cpus = [], [], []
        runs = 3 if n_hooks <= 100_000 else 1
        for i in range(runs):
            gw = GatewayProcess(config, env=ENV)
            t0 = time.perf_counter()
            gw.start(wait_ready=False)
            gw.wait_ready(timeout=300)
            readies.append(time.perf_counter() - t0)
            assert gw.proc is not None
            cpus.append(cpu_s(gw.proc.pid))
            await asyncio.sleep(1.0)  # let the start-up settle (last-good file written, GC frozen)
            rsses.append(rss_mb(gw.proc.pid))
            if i < runs - 1:
                gw.stop()
        print(f"runs: ready {', '.join(f'{r:.2f}' for r in readies)} s "
              f"(gateway CPU to ready {', '.join(f'{c:.2f}' for c in cpus)} s); "
              f"RSS {', '.join(f'{r:.0f}' for r in rsses)} MB")
        print(f"start -> ready at {label} webhooks: {min(readies):.2f} s "
              f"(median of {runs}: {sorted(readies)[runs // 2]:.2f} s) [goal <= {ready_goal:g} s]")
        print(f"gateway RSS at {label} webhooks: {sorted(rsses)[runs // 2]:.0f} MB "
              f"[goal <= {rss_goal} MB]")
        try:
            lat = await change_latencies(gw, etcd.endpoint, docs)
        finally:
            gw.stop()
        print(f"one change served at {label} webhooks (put -> /readyz revision, {len(lat)} "
              f"changes): p50 {pct(lat, 50) * 1000:.1f} ms  p99 {pct(lat, 99) * 1000:.1f} ms "
              f"[goal p99 <= {p99_goal:g} ms]")


def compile_bytecode() -> None:
    """Compile the project's modules, as installing it does (pip compiles what it installs, the
    Dockerfile's image included): an editable checkout run with PYTHONDONTWRITEBYTECODE set
    would compile every module again at each start, which is no deployment's start-up."""
    root = Path(__file__).parents[1]
    for package in ("providers", "data_plane", "control_plane", "cli"):
        compileall.compile_dir(root / package, quiet=1)


def main() -> int:
    compile_bytecode()
    sizes = [int(os.environ.get("WH_BENCH_WEBHOOKS", "100000"))]
    if os.environ.get("WH_BENCH_MILLION"):
        sizes.append(1_000_000)
    for n in sizes:
        asyncio.run(run(n))
    return 0


if __name__ == "__main__":
    sys.exit(main())

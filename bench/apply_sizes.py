"""Apply latency by size on a stock etcd (default --max-txn-ops 128, --max-request-bytes 1.5 MiB):
1, 100, 1,000 and 10,000 resources through a real control plane, p50/p99 of the apply's answer,
of a gateway serving the whole revision, and of the materialization that follows a large apply.

    python -m bench.apply_sizes [--runs 20]

Each run changes every resource of its size (one field), so it is a real apply of that size.
Runs are spaced until the previous apply is fully materialized, so an apply's figure does not
include finishing the previous one (back to back, the next apply would wait for it).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import aetcd
import httpx

from bench.control_plane import pct
from cli.processes import ControlPlaneProcess, GatewayProcess
from cli.servers import EtcdServer
from providers.store_keys import COMMITS

PREFIX = "/whplane/"
SIZES = (1, 100, 1_000, 10_000)


def hook(i: int, run: int) -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Webhook",
            "metadata": {"name": f"h{i:05d}", "namespace": "bench"},
            "spec": {"verify": {"scheme": "github", "secret": "{$BENCH_SECRET:x}"},
                     "limits": {"burst": 1 + run},
                     "chain": {"steps": [{"module": "log"}]}}}


async def materialized(etcd: aetcd.Client) -> float:
    """Wait until no commit is left to materialize; when that was seen."""
    while (await etcd.get_prefix((PREFIX + COMMITS).encode(), keys_only=True)).count:
        await asyncio.sleep(0.01)
    return time.time()


async def serving(gw: httpx.AsyncClient, revision: int) -> float:
    while True:
        r = (await gw.get("/readyz")).json()
        if r.get("revision", 0) >= revision:
            return float(r["since"])
        await asyncio.sleep(0.02)


def line(name: str, values: list[float]) -> str:
    return f"{name} p50 {pct(values, 50) * 1000:8.1f} ms  p99 {pct(values, 99) * 1000:8.1f} ms"


async def main(runs: int) -> None:
    ns = {"apiVersion": "whplane/v1", "kind": "Namespace", "metadata": {"name": "bench"}}
    with EtcdServer() as etcd:  # etcd's own defaults: nothing raised
        url = f"etcd://{etcd.endpoint}{PREFIX}"
        cp = ControlPlaneProcess(url).start()
        gw = GatewayProcess(url, {"WH_LOG_LEVEL": "warning"}).start()
        host, port = etcd.endpoint.split(":")
        raw = aetcd.Client(host=host, port=int(port), timeout=30)
        await raw.connect()
        auth = {"authorization": f"Bearer {cp.admin_token}"}
        try:
            async with httpx.AsyncClient(base_url=cp.url, headers=auth, timeout=300) as c, \
                    httpx.AsyncClient(base_url=gw.url, timeout=5) as g:
                await c.post("/v1/apply", json={"resources": [ns]})
                print(f"# stock etcd 3.5 (fsync on), one control plane, one gateway; "
                      f"up to {runs} applies per size")
                for size in SIZES:
                    n_runs = max(3, runs // (1 if size <= 100 else 4 if size <= 1000 else 10))
                    answer: list[float] = []
                    served: list[float] = []
                    finish: list[float] = []
                    for run in range(n_runs):
                        docs = [hook(i, run) for i in range(size)]
                        t0 = time.time()
                        r = await c.post("/v1/apply", json={"resources": docs})
                        answered = time.time()
                        r.raise_for_status()
                        revision = r.json()["revision"]
                        answer.append(answered - t0)
                        served.append(await serving(g, revision) - t0)
                        finish.append(await materialized(raw) - answered)
                    print(f"{size:>6} resources ({n_runs:>2} applies): "
                          f"{line('answer', answer)} | {line('gateway serving', served)} | "
                          f"{line('materialized after answer', finish)}")
        finally:
            await raw.close()
            gw.stop()
            cp.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    asyncio.run(main(args.runs))

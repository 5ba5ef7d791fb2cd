"""Canary benchmark, three gateways (one labelled canary=true) on a stock etcd or a directory
store: canary apply -> the canary gateway serving it, and promote -> every gateway serving it
(p50/p99, measured from the request to the gateways' own swap times).

    python -m bench.canary [--runs 30] [--store etcd|dir]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import httpx

from cli.processes import ControlPlaneProcess, GatewayProcess
from cli.servers import EtcdServer

PREFIX = "/whplane/"


def hook(name: str, timeout_s: float) -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Webhook",
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {"verify": {"scheme": "github", "secret": "{$BENCH_SECRET:x}"},
                     "chain": {"timeout_s": timeout_s, "steps": [{"module": "log"}]}}}


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


@contextlib.contextmanager
def store(kind: str) -> Iterator[str]:
    if kind == "etcd":
        with EtcdServer() as etcd:  # etcd's default limits and fsync: a stock server
            yield f"etcd://{etcd.endpoint}{PREFIX}"
    else:
        with tempfile.TemporaryDirectory(prefix="whplane-bench-") as d:
            yield f"file:{d}/store"


async def serving(client: httpx.AsyncClient, revision: int) -> float:
    """When the gateway swapped in a snapshot at `revision` or later (its own clock)."""
    while True:
        r = (await client.get("/readyz")).json()
        if r.get("revision", 0) >= revision:
            return float(r["since"])
        await asyncio.sleep(0.02)  # slow polling keeps the measurement off the machine


async def main(runs: int, kind: str) -> None:
    ns = {"apiVersion": "whplane/v1", "kind": "Namespace", "metadata": {"name": "bench"}}
    with store(kind) as url:
        cp = ControlPlaneProcess(url).start()
        gws: list[GatewayProcess] = []
        try:
            auth = {"authorization": f"Bearer {cp.admin_token}"}
            async with httpx.AsyncClient(base_url=cp.url, headers=auth, timeout=60) as c:
                (await c.post("/v1/apply", json={"resources": [ns, hook("h0", 1)]})
                 ).raise_for_status()
                quiet = {"WH_LOG_LEVEL": "warning"}
                gws = [GatewayProcess(url, {**quiet, "WH_GATEWAY_LABELS": "canary=true"}).start(),
                       GatewayProcess(url, quiet).start(), GatewayProcess(url, quiet).start()]
                clients = [httpx.AsyncClient(base_url=g.url, timeout=5) for g in gws]
                to_canary: list[float] = []
                to_all: list[float] = []
                for run in range(runs):
                    t0 = time.time()
                    r = await c.post("/v1/apply", json={
                        "resources": [hook("h0", 2 + run)], "canary": "canary=true"})
                    r.raise_for_status()
                    revision = r.json()["revision"]
                    to_canary.append(await serving(clients[0], revision) - t0)
                    t1 = time.time()
                    (await c.post("/v1/rollout/promote", json={})).raise_for_status()
                    swapped = await asyncio.gather(*(serving(cl, revision) for cl in clients[1:]))
                    to_all.append(max(swapped) - t1)
                for cl in clients:
                    await cl.aclose()
            print(f"# canary on {'a stock etcd 3.5' if kind == 'etcd' else 'the directory store'}"
                  f", 3 gateways (1 canary), {runs} runs")
            for label, values in (("canary apply -> canary gateway serving", to_canary),
                                  ("promote -> every gateway serving", to_all)):
                print(f"{label}: p50 {pct(values, 50) * 1000:.1f} ms  "
                      f"p99 {pct(values, 99) * 1000:.1f} ms")
        finally:
            for g in gws:
                g.stop()
            cp.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--store", choices=("etcd", "dir"), default="etcd")
    args = ap.parse_args()
    asyncio.run(main(args.runs, args.store))

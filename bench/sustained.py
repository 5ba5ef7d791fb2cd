"""Sustained async delivery: a gateway answering 202 while a separate `whplane worker` process
drains the queue into a Redis stream, both at once, on one machine.

    python -m bench.sustained [--seconds 10] [--connections 32]

The async ingest rate alone (no worker: what the queue can take) is measured before and after
the same load with the worker running until every accepted webhook has arrived; their mean is
the rate the delivered rate is held against, since this machine's speed moves within minutes. Prints accepted and delivered
rates, how many accepted webhooks never arrived (the goal is none), and the delivered rate
against the ingest-alone rate.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis
import yaml

from bench.gateway import SECRET, lua_script, run_wrk
from cli.processes import GatewayProcess
from cli.servers import RedisServer

STREAM = "bench-sustained"


def config(tmp: Path, redis_url: str) -> Path:
    docs = [
        {"apiVersion": "whplane/v1", "kind": "Connection", "metadata": {"name": "events"},
         "spec": {"type": "redis", "url": redis_url}},
        {"apiVersion": "whplane/v1", "kind": "Webhook",
         "metadata": {"name": "async-stream", "namespace": "bench"},
         "spec": {"verify": {"scheme": "github", "secret": "{$BENCH_SECRET}"},
                  "delivery": {"mode": "async"},
                  "chain": {"steps": [{"module": "redis_stream", "connection": "events",
                                       "config": {"stream": STREAM}}]}}},
    ]
    d = tmp / "config"
    d.mkdir()
    (d / "bench.yaml").write_text(yaml.safe_dump_all(docs))
    return d


def arrived(client: redis.Redis) -> set[bytes]:
    """The delivery ids in the destination stream (a redelivery would repeat one)."""
    ids: set[bytes] = set()
    cursor = "-"
    while True:
        page: Any = client.xrange(STREAM, min=cursor, count=10_000)
        if not page:
            return ids
        ids.update(fields[b"id"] for _, fields in page)
        last = page[-1][0].decode()
        ms, seq = last.split("-")
        cursor = f"{ms}-{int(seq) + 1}"


def queued(gateway_url: str) -> int:
    """The 202s the gateway has answered: exact, where wrk leaves out the requests it cut."""
    text = httpx.get(f"{gateway_url}/metrics", timeout=5).text
    found = re.search(r'^whplane_webhook_requests_total\{namespace="bench",outcome="queued"\} '
                      r"([\d.e+]+)$", text, re.MULTILINE)
    return int(float(found.group(1))) if found else 0


def main(seconds: int, connections: int) -> None:
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    tmp = Path(tempfile.mkdtemp(prefix="whplane-bench-"))
    script = tmp / "post.lua"
    lua_script(script)
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url, socket_timeout=30)
        cfg = f"file:{config(tmp, server.url)}"
        env = {"BENCH_SECRET": SECRET, "WH_LOG_LEVEL": "warning", "WH_REDIS_URL": server.url,
               "WH_DELIVERY_WORKER": "false", "WH_MAX_BACKLOG": "100000000"}
        with GatewayProcess(cfg, env) as gw:
            url = f"{gw.url}/webhook/bench/async-stream"
            alone = run_wrk("async ingest alone", url, script, seconds, connections)
            client.flushall()  # the backlog of that run would be delivered below otherwise
            worker = GatewayProcess(cfg, {**env, "WH_DELIVERY_WORKER": "true"},
                                    command="worker").start()
            try:
                before = queued(gw.url)
                t0 = time.monotonic()
                subprocess.run(
                    ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
                    capture_output=True, check=True)
                load_s = time.monotonic() - t0
                accepted = queued(gw.url) - before
                deadline = time.monotonic() + 300
                while client.xlen(STREAM) < accepted and time.monotonic() < deadline:
                    time.sleep(0.05)
                drained_s = time.monotonic() - t0
            finally:
                worker.stop()
            delivered = arrived(client)
            client.flushall()
            after = run_wrk("async ingest alone", url, script, seconds, connections)
    lost = max(0, accepted - len(delivered))
    rate = len(delivered) / drained_s
    alone_rps = (alone.rps + after.rps) / 2
    print(f"# sustained async: wrk -t1 -c{connections} -d{seconds}s on the async redis_stream "
          "webhook, one gateway and one `whplane worker` process, one machine")
    print(f"async ingest alone: {alone_rps:,.0f} req/s (before {alone.rps:,.0f}, after "
          f"{after.rps:,.0f}; p99 {alone.p99_ms:.1f} ms)")
    print(f"with the worker: {accepted / load_s:,.0f} accepted/s for {load_s:.1f} s; all "
          f"{len(delivered):,} delivered after {drained_s:.1f} s: {rate:,.0f} delivered/s")
    print(f"accepted (202) and never delivered: {lost} [goal <= 0] (of {accepted:,} accepted)")
    print(f"sustained delivered rate / async ingest alone: {rate / alone_rps:.2f} [goal >= 0.5]")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()
    main(args.seconds, args.connections)

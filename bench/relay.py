"""Relayed webhooks end to end: sender -> gateway (relay step, Redis) -> `whplane connect`
(one process) -> a local receiver, over WebSocket, Server-Sent Events and long poll.

    python -m bench.relay [--seconds 5] [--window 50] [--transports ws,sse,poll]

Per transport, two phases:

- throughput: signed webhooks sent by wrk (16 connections, `--seconds`) while the connector
  runs; relayed webhooks per second from the first send to the last arrival at the receiver
  (without wrk on the PATH, N webhooks from 16 Python senders, which are slower than the
  gateway and so measure less).
- latency: webhooks sent at a steady 100/s for 3 s (below every transport's throughput, so
  the figures compare); p50/p99
  from the send to the arrival, so the gateway, Redis, the transport and the forward are in it.

Figures, not assertions. Everything runs on this machine (the gateway with one worker, Redis
from its wheel, the connector, the senders and the receiver).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml

from cli.processes import GatewayProcess, github_signature
from cli.servers import RedisServer

ROOT = Path(__file__).resolve().parents[1]
SECRET = "bench-relay-secret"
TOKEN = "bench-relay-token"
SENDERS = 16
LATENCY_S = 3.0
LATENCY_RATE = 100.0  # webhooks per second: well below every transport's throughput


class Receiver:
    """The local destination: records when each delivery id first arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.lock = threading.Lock()
        self.all_in = threading.Event()
        self.expected = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: the connector's client pools

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                now = time.perf_counter()
                delivery = self.headers.get("X-Whplane-Delivery", "")
                with receiver.lock:
                    receiver.arrived.setdefault(delivery, now)
                    if len(receiver.arrived) >= receiver.expected:
                        receiver.all_in.set()
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def expect(self, n: int, clear: bool = True) -> None:
        with self.lock:
            if clear:
                self.arrived.clear()
            self.expected = n
            if len(self.arrived) < n:
                self.all_in.clear()
            else:
                self.all_in.set()


async def send_all(client: httpx.AsyncClient, url: str, n: int) -> dict[str, float]:
    """N webhooks from SENDERS concurrent senders; delivery id -> send time."""
    sent: dict[str, float] = {}
    counter = iter(range(n))

    async def sender() -> None:
        for i in counter:
            body = json.dumps({"n": i, "pad": "x" * 200}).encode()
            t = time.perf_counter()
            r = await client.post(url, content=body, headers={
                "X-Hub-Signature-256": github_signature(SECRET, body)})
            if r.status_code != 200:
                raise RuntimeError(f"webhook answered {r.status_code}: {r.text}")
            sent[r.json()["id"]] = t

    await asyncio.gather(*(sender() for _ in range(SENDERS)))
    return sent


async def send_steady(client: httpx.AsyncClient, url: str, rate: float,
                      seconds: float) -> dict[str, float]:
    sent: dict[str, float] = {}
    tasks = []

    async def one(i: int) -> None:
        body = json.dumps({"n": i}).encode()
        t = time.perf_counter()
        r = await client.post(url, content=body,
                              headers={"X-Hub-Signature-256": github_signature(SECRET, body)})
        sent[r.json()["id"]] = t

    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds:
        tasks.append(asyncio.create_task(one(i)))
        i += 1
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
    await asyncio.gather(*tasks)
    return sent


def send_wrk(url: str, seconds: float, tmp: Path) -> int:
    """wrk hammering `url` with one signed body; how many webhooks it had accepted."""
    body = json.dumps({"pad": "x" * 200})
    script = tmp / "post.lua"
    signature = github_signature(SECRET, body.encode())
    script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
                      f'wrk.headers["X-Hub-Signature-256"] = "{signature}"\n')
    out = subprocess.run(["wrk", "-t1", f"-c{SENDERS}", f"-d{seconds:g}s", "-s", str(script),
                          url], capture_output=True, text=True, timeout=seconds + 60).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"some webhooks were refused:\n{out}")
    found = re.search(r"(\d+) requests in", out)
    if found is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return int(found.group(1))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_transport(gateway: GatewayProcess, receiver: Receiver, transport: str, n: int,
                  seconds: float, window: int, tmp: Path) -> str:
    log = tmp / "connector.log"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("WH_")},
           "WH_CONNECT_TOKEN": TOKEN}
    with log.open("ab") as out:
        connector = subprocess.Popen(
            [sys.executable, "-m", "cli.whplane", "connect", "--gateway", gateway.url,
             "-n", "bench", "--channel", f"c-{transport}", "--forward", receiver.url,
             "--transport", transport, "--window", str(window)],
            cwd=ROOT, env=env, stdout=out, stderr=out, start_new_session=True)
    url = f"{gateway.url}/webhook/bench/to-{transport}"
    try:
        time.sleep(1.5)  # connected and waiting

        async def phases() -> tuple[float, float, int, list[float]]:
            limits = httpx.Limits(max_connections=SENDERS, max_keepalive_connections=SENDERS)
            async with httpx.AsyncClient(limits=limits, timeout=30) as client:
                if shutil.which("wrk"):
                    receiver.expect(10**9)
                    first = time.perf_counter()
                    sent_n = await asyncio.to_thread(send_wrk, url, seconds, tmp)
                    send_rate = sent_n / (time.perf_counter() - first)
                    receiver.expect(sent_n, clear=False)
                else:
                    receiver.expect(n)
                    sent = await send_all(client, url, n)
                    sent_n, first = n, min(sent.values())
                    send_rate = n / (max(sent.values()) - first)
                if not await asyncio.to_thread(receiver.all_in.wait, 120):
                    raise RuntimeError(f"only {len(receiver.arrived)} of {sent_n} arrived")
                rate = sent_n / (max(receiver.arrived.values()) - first)
                receiver.expect(10**9)  # nothing to wait for: latency is read per id
                steady = await send_steady(client, url, LATENCY_RATE, LATENCY_S)
                deadline = time.perf_counter() + 30
                while time.perf_counter() < deadline and not set(steady) <= set(
                        receiver.arrived):
                    await asyncio.sleep(0.05)
                latencies = [receiver.arrived[d] - t for d, t in steady.items()
                             if d in receiver.arrived]
                if len(latencies) != len(steady):
                    raise RuntimeError("steady-rate webhooks missing at the receiver")
                return rate, send_rate, sent_n, latencies

        rate, send_rate, sent_n, latencies = asyncio.run(phases())
    finally:
        os.killpg(connector.pid, signal.SIGTERM)
        connector.wait(10)
    ms = [x * 1000 for x in latencies]
    return (f"{transport:>4}: {rate:,.0f} relayed webhooks/s ({sent_n} webhooks accepted at "
            f"{send_rate:,.0f}/s, window {window});"
            f" at {LATENCY_RATE:,.0f}/s: p50 {percentile(ms, 0.5):.1f} ms  "
            f"p99 {percentile(ms, 0.99):.1f} ms (mean {statistics.mean(ms):.1f} ms, "
            f"{len(ms)} webhooks)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0, help="wrk's sending time")
    parser.add_argument("--webhooks", type=int, default=2000, help="without wrk")
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--transports", default="ws,sse,poll")
    args = parser.parse_args()
    transports = args.transports.split(",")
    with tempfile.TemporaryDirectory(prefix="whplane-bench-relay-") as tmp, \
            RedisServer() as redis:
        docs: list[dict[str, Any]] = [
            {"apiVersion": "whplane/v1", "kind": "Namespace", "metadata": {"name": "bench"},
             "spec": {}}]
        for t in transports:
            docs.append({
                "apiVersion": "whplane/v1", "kind": "Webhook",
                "metadata": {"name": f"to-{t}", "namespace": "bench"},
                "spec": {"verify": {"scheme": "github", "secret": SECRET},
                         "chain": {"steps": [{"module": "relay", "config": {
                             "channel": f"c-{t}", "token": TOKEN,
                             "max_messages": 100_000}}]}}})  # fmt: skip
        config = Path(tmp) / "config"
        config.mkdir()
        (config / "bench.yaml").write_text(yaml.safe_dump_all(docs))
        receiver = Receiver()
        with GatewayProcess(f"file:{config}", env={"WH_REDIS_URL": redis.url}) as gateway:
            print(f"gateway -> Redis -> whplane connect -> local receiver; {SENDERS} senders, "
                  f"one gateway worker, one connector process")
            for t in transports:
                print(run_transport(gateway, receiver, t, args.webhooks, args.seconds,
                                    args.window, Path(tmp)), flush=True)


if __name__ == "__main__":
    main()

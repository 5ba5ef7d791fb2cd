"""Async deliveries through one `whplane worker` process, per module: rabbitmq, postgres, nats
(core) and http, each against the real system on this machine (RabbitMQ, PostgreSQL and NATS on
their standard ports or RABBITMQ_URL / POSTGRES_URL / NATS_URL; http to a sink in this process).

    python -m bench.modules [--deliveries 3000] [--rate-fraction 0.5]

Per module, two phases:

- throughput: a backlog of N deliveries enqueued at once, drained by the worker (32 deliveries
  in flight, its default); deliveries per second from the first enqueue to the last arrival.
- latency: deliveries enqueued at a steady rate (half the measured throughput) for 3 s;
  p50/p99 from the enqueue to the moment the system has the message (a consumer's receipt, or
  the row's commit time in PostgreSQL), so queueing, the worker and the module are all in it.

Figures, not assertions. A module whose system is not reachable is reported as skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import yaml

from cli.processes import GatewayProcess
from cli.servers import RedisServer, free_port, listening
from data_plane.delivery import Delivery
from data_plane.queue import DeliveryQueue

POSTGRES_URL = os.environ.get("POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
LATENCY_S = 3.0


@dataclass
class Figures:
    module: str
    per_second: float
    p50_ms: float
    p99_ms: float
    latency_rate: float


class Arrivals:
    """Delivery id -> when the system had it (wall clock), filled by a destination reader."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.lock = threading.Lock()

    def add(self, delivery_id: str, when: float) -> None:
        with self.lock:
            self.at.setdefault(delivery_id, when)

    def wait(self, ids: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ids <= self.at.keys():
            if time.monotonic() > deadline:
                missing = len(ids - self.at.keys())
                raise TimeoutError(f"{missing} of {len(ids)} deliveries did not arrive")
            time.sleep(0.02)


# --- destinations: each yields (connection spec, step, arrivals) ---------------------------


class FileArrivals(Arrivals):
    """Arrivals a sink process appends to a file as `ID TIME` lines."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def wait(self, ids: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(FileNotFoundError):
                for line in self.path.read_text().splitlines():
                    delivery_id, _, at = line.partition(" ")
                    if at:
                        self.add(delivery_id, float(at))
            if ids <= self.at.keys():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(ids - self.at.keys())} requests missing")
            time.sleep(0.05)


async def sink_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The http destination: a bare ASGI app (`uvicorn bench.modules:sink_app`, in its own
    process so it does not share a GIL with the measuring) that appends `ID TIME` lines to
    $BENCH_SINK_FILE."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    headers = dict(scope["headers"])
    line = f"{headers.get(b'x-whplane-delivery', b'?').decode()} {time.time()}\n"
    _sink_file().write(line)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


@functools.cache
def _sink_file() -> Any:
    return open(os.environ["BENCH_SINK_FILE"], "a", buffering=1)  # held for the process


@contextlib.contextmanager
def http_sink() -> Iterator[tuple[dict[str, Any], dict[str, Any], Arrivals]]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "arrivals"
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "bench.modules:sink_app", "--port", str(port),
             "--lifespan", "off", "--log-level", "warning", "--no-access-log"],
            cwd=Path(__file__).resolve().parents[1], env={**os.environ, "BENCH_SINK_FILE": str(path)})
        try:
            deadline = time.monotonic() + 10
            while not listening("127.0.0.1", port):
                if time.monotonic() > deadline:
                    raise RuntimeError("the http sink did not start")
                time.sleep(0.05)
            yield ({"type": "http", "url": f"http://127.0.0.1:{port}", "allow_private": True},
                   {"module": "http", "connection": "dest"}, FileArrivals(path))
        finally:
            proc.terminate()
            proc.wait(10)


@contextlib.contextmanager
def rabbitmq() -> Iterator[tuple[dict[str, Any], dict[str, Any], Arrivals]]:
    import pika

    arrivals = Arrivals()
    name = f"wh-bench-{uuid.uuid4().hex[:8]}"
    setup = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    setup.channel().queue_declare(name, auto_delete=False)
    stop = threading.Event()

    def consume() -> None:
        conn = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
        channel = conn.channel()
        channel.basic_qos(prefetch_count=500)
        for method, props, _ in channel.consume(name, auto_ack=True, inactivity_timeout=0.2):
            if stop.is_set():
                break
            if method is not None:
                arrivals.add(props.message_id, time.time())
        channel.cancel()
        conn.close()

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    parts = urlsplit(RABBITMQ_URL)
    try:
        yield ({"type": "amqp", "url": f"amqp://{parts.hostname}:{parts.port or 5672}/",
                "username": parts.username or "guest", "password": "{$BENCH_AMQP_PASSWORD}",
                "allow_private": True},
               {"module": "rabbitmq", "connection": "dest", "config": {"routing_key": name}},
               arrivals)
    finally:
        stop.set()
        reader.join(5)
        setup.channel().queue_delete(name)
        setup.close()


@contextlib.contextmanager
def postgres() -> Iterator[tuple[dict[str, Any], dict[str, Any], Arrivals]]:
    import psycopg

    table = f"wh_bench_{uuid.uuid4().hex[:8]}"
    arrivals = PostgresArrivals(table)
    with psycopg.connect(POSTGRES_URL, autocommit=True) as db:
        # The module's columns plus the commit time of each row, for the latency.
        db.execute(f'CREATE TABLE "{table}" (id text PRIMARY KEY, namespace text, webhook text, '
                   "received_at timestamptz, headers jsonb, payload jsonb, "
                   "arrived_at timestamptz DEFAULT clock_timestamp())")
    try:
        yield ({"type": "postgres", "url": POSTGRES_URL, "allow_private": True},
               {"module": "postgres", "connection": "dest", "config": {"table": table}},
               arrivals)
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as db:
            db.execute(f'DROP TABLE IF EXISTS "{table}"')


class PostgresArrivals(Arrivals):
    def __init__(self, table: str) -> None:
        super().__init__()
        self.table = table

    def wait(self, ids: set[str], timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        with psycopg.connect(POSTGRES_URL) as db:
            while True:
                rows = db.execute(f'SELECT id, extract(epoch from arrived_at) FROM "{self.table}"'
                                  ).fetchall()
                db.commit()
                for delivery_id, at in rows:
                    self.add(delivery_id, float(at))
                if ids <= self.at.keys():
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(ids - self.at.keys())} rows missing")
                time.sleep(0.1)


@contextlib.contextmanager
def nats() -> Iterator[tuple[dict[str, Any], dict[str, Any], Arrivals]]:
    import nats as nats_py

    arrivals = Arrivals()
    subject = f"wh.bench.{uuid.uuid4().hex[:8]}"
    ready = threading.Event()
    stop: queue.Queue[None] = queue.Queue()

    async def subscribe() -> None:
        nc = await nats_py.connect(NATS_URL)

        async def on(msg: Any) -> None:
            arrivals.add(msg.headers["Nats-Msg-Id"], time.time())

        await nc.subscribe(subject, cb=on, pending_msgs_limit=1_000_000)
        await nc.flush()
        ready.set()
        while stop.empty():
            await asyncio.sleep(0.05)
        await nc.close()

    reader = threading.Thread(target=asyncio.run, args=(subscribe(),), daemon=True)
    reader.start()
    ready.wait(10)
    try:
        yield ({"type": "nats", "url": NATS_URL, "allow_private": True},
               {"module": "nats", "connection": "dest", "config": {"subject": subject}},
               arrivals)
    finally:
        stop.put(None)
        reader.join(5)


DESTINATIONS: dict[str, tuple[Callable[[], Any], str]] = {
    "rabbitmq": (rabbitmq, RABBITMQ_URL),
    "postgres": (postgres, POSTGRES_URL),
    "nats": (nats, NATS_URL),
    "http": (http_sink, ""),
}


# --- the run ---------------------------------------------------------------------------------


def reachable(url: str) -> bool:
    if not url:
        return True
    parts = urlsplit(url)
    return listening(parts.hostname or "127.0.0.1", parts.port or 0)


async def enqueue_backlog(redis_url: str, module: str, n: int) -> set[str]:
    client = aioredis.from_url(redis_url)
    q = DeliveryQueue(client, max_backlog=max(100_000, n * 2))
    try:
        sent = [Delivery("bench", module, b'{"event":"bench"}',
                         {"content-type": "application/json"}, revision=1) for _ in range(n)]
        for start in range(0, n, 500):
            await asyncio.gather(*(q.enqueue(d) for d in sent[start:start + 500]))
        return {d.id for d in sent}
    finally:
        await q.aclose()
        await client.aclose()


async def enqueue_paced(redis_url: str, module: str, rate: float, seconds: float
                        ) -> dict[str, float]:
    client = aioredis.from_url(redis_url)
    q = DeliveryQueue(client)
    sent: dict[str, float] = {}
    pending: set[asyncio.Task[str]] = set()
    try:
        start = time.monotonic()
        i = 0
        while (elapsed := time.monotonic() - start) < seconds:
            due = int(elapsed * rate) - i
            for _ in range(due):
                d = Delivery("bench", module, b'{"event":"bench"}',
                             {"content-type": "application/json"}, revision=1)
                sent[d.id] = d.received_at
                task = asyncio.create_task(q.enqueue(d))
                pending.add(task)
                task.add_done_callback(pending.discard)
                i += 1
            await asyncio.sleep(0.002)
        await asyncio.gather(*pending)
        return sent
    finally:
        await q.aclose()
        await client.aclose()


def bench_module(module: str, redis: RedisServer, n: int, fraction: float) -> Figures | str:
    make, url = DESTINATIONS[module]
    if not reachable(url):
        return f"{module}: skipped (nothing listens at {urlsplit(url).netloc})"
    with make() as (spec, step, arrivals), tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "config"
        cfg.mkdir()
        docs = [
            {"apiVersion": "whplane/v1", "kind": "Namespace", "metadata": {"name": "bench"}},
            {"apiVersion": "whplane/v1", "kind": "Connection",
             "metadata": {"name": "dest", "namespace": "bench"},
             "spec": {**spec, "circuit": {"failures": 1000}}},
            {"apiVersion": "whplane/v1", "kind": "Webhook",
             "metadata": {"name": module, "namespace": "bench"},
             "spec": {"verify": {"scheme": "none"}, "delivery": {"mode": "async"},
                      "chain": {"steps": [step]}}},
        ]
        (cfg / "bench.yaml").write_text(yaml.safe_dump_all(docs))
        password = urlsplit(RABBITMQ_URL).password or "guest"
        worker = GatewayProcess(f"file:{cfg}", {"WH_REDIS_URL": redis.url,
                                                "BENCH_AMQP_PASSWORD": password},
                                command="worker")
        # A warm-up delivery: the worker loads its config and opens its pooled client.
        worker.start()
        try:
            arrivals.wait(asyncio.run(enqueue_backlog(redis.url, module, 1)), 30)
            t0 = time.time()
            ids = asyncio.run(enqueue_backlog(redis.url, module, n))
            arrivals.wait(ids, 300)
            last = max(arrivals.at[i] for i in ids)
            per_second = n / (last - t0)
            rate = max(1.0, per_second * fraction)
            sent = asyncio.run(enqueue_paced(redis.url, module, rate, LATENCY_S))
            arrivals.wait(set(sent), 120)
        finally:
            worker.stop()
    latencies = sorted((arrivals.at[i] - at) * 1000 for i, at in sent.items())
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return Figures(module, per_second, statistics.median(latencies), p99, rate)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deliveries", type=int, default=3000)
    parser.add_argument("--rate-fraction", type=float, default=0.5)
    parser.add_argument("--modules", default="rabbitmq,postgres,nats,http")
    args = parser.parse_args()
    print(f"async deliveries through one `whplane worker` process (32 in flight), "
          f"{args.deliveries} per backlog; latency at {args.rate_fraction:.0%} of the "
          f"throughput for {LATENCY_S:g}s, enqueue -> in the system")
    print(f"{'module':<10} {'deliveries/s':>13} {'p50 ms':>8} {'p99 ms':>8} {'at /s':>7}")
    with RedisServer() as redis:
        for module in args.modules.split(","):
            got = bench_module(module, redis, args.deliveries, args.rate_fraction)
            if isinstance(got, str):
                print(got)
                continue
            print(f"{got.module:<10} {got.per_second:>13,.0f} {got.p50_ms:>8.1f} "
                  f"{got.p99_ms:>8.1f} {got.latency_rate:>7,.0f}", flush=True)
    print("(one machine: the worker, Redis, the systems and this script share its cores)")


if __name__ == "__main__":
    main()

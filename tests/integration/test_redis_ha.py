"""The queue, worker, dead letters, rate limiter and idempotency keys on Redis Sentinel (a
master killed under async load) and on a 3-master Redis Cluster."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from cli.servers import RedisCluster, RedisSentinel, RedisServer
from data_plane.delivery import Delivery
from data_plane.dlq import DeadLetters
from data_plane.idempotency import Idempotency
from data_plane.queue import Backpressure, DeliveryQueue, NotReplicated
from data_plane.ratelimit import RateLimiter
from data_plane.redis_connect import RedisClient, connect, parse_redis_url
from data_plane.worker import REASON_PERMANENT, Worker
from providers.resources import Retry

log = logging.getLogger(__name__)
FAST = Retry(attempts=2, initial_delay_s=0.05, max_delay_s=0.1)


class Recorder:
    def __init__(self, fail_webhook: str | None = None) -> None:
        self.fail_webhook = fail_webhook
        self.delivered: dict[str, Delivery] = {}

    async def __call__(self, delivery: Delivery) -> None:
        if delivery.webhook == self.fail_webhook:
            exc = RuntimeError("410 from destination")
            exc.retryable = False  # type: ignore[attr-defined]
            raise exc
        self.delivered[delivery.id] = delivery


def make_delivery(i: int, webhook: str = "gh") -> Delivery:
    return Delivery("acme", webhook, f'{{"n": {i}}}'.encode(), {"x-n": str(i)}, revision=1)


@contextlib.asynccontextmanager
async def working(client: RedisClient, dest: Recorder) -> AsyncIterator[Worker]:
    w = Worker(client, dest, lambda _: FAST, consumer=f"w-{uuid.uuid4().hex[:6]}",
               concurrency=16, claim_idle_s=2.0)
    task = asyncio.create_task(w.run())
    try:
        yield w
    finally:
        await w.stop(timeout=1)
        await task


async def until(check: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


# --- URLs --------------------------------------------------------------------------------


def test_redis_urls_name_their_mode() -> None:
    single = parse_redis_url("redis://:pw@127.0.0.1:6379/2")
    assert (single.mode, single.db, single.password, single.replicated) == ("single", 2, "pw",
                                                                            False)
    sentinel = parse_redis_url("redis+sentinel://a:26379,b:26380/mymaster/1")
    assert (sentinel.mode, sentinel.hosts, sentinel.service, sentinel.db) == (
        "sentinel", (("a", 26379), ("b", 26380)), "mymaster", 1)
    assert sentinel.replicated
    cluster = parse_redis_url("rediss+cluster://a:7000,b:7001")
    assert (cluster.mode, cluster.tls, len(cluster.hosts)) == ("cluster", True, 2)
    for bad in ("redis+sentinel://a:1", "memcached://a:1", "redis+cluster://a:1/3",
                "redis://nohost"):
        with pytest.raises(ValueError):
            parse_redis_url(bad)


# --- WAIT ---------------------------------------------------------------------------------


async def test_an_enqueue_no_replica_holds_is_not_confirmed(redis_server: RedisServer) -> None:
    """WAIT is on the enqueue's connection: a master without replicas cannot confirm one."""
    client = connect(redis_server.url)
    stream = f"t:{{{uuid.uuid4().hex[:12]}}}:deliveries"
    queue = DeliveryQueue(client, stream, wait_replicas=1, wait_timeout_ms=50)
    with pytest.raises(NotReplicated):
        await queue.enqueue(make_delivery(1))
    assert await queue.depth() == 1  # written, just not confirmed: at worst a duplicate
    assert await DeliveryQueue(client, stream).enqueue(make_delivery(2))
    await queue.aclose()
    await client.aclose()


# --- Sentinel: kill the master under async load -------------------------------------------


async def test_sentinel_failover_loses_no_accepted_delivery(
    redis_sentinel: RedisSentinel,
) -> None:
    """Senders enqueue (what a 202 waits for) while the master is SIGKILLed: every accepted
    delivery is delivered after the failover; refused ones (the 503s) are counted."""
    client = connect(redis_sentinel.url)
    queue = DeliveryQueue(client, wait_replicas=1, wait_timeout_ms=1000)
    accepted: dict[str, str] = {}
    refused = 0
    stop = asyncio.Event()

    async def sender(k: int) -> None:
        nonlocal refused
        i = 0
        while not stop.is_set():
            d = make_delivery(k * 1_000_000 + i)
            i += 1
            try:
                await queue.enqueue(d)
                accepted[d.id] = d.id
            except Backpressure:
                raise
            except Exception:
                refused += 1
                await asyncio.sleep(0.05)

    senders = [asyncio.create_task(sender(k)) for k in range(8)]
    try:
        await asyncio.sleep(1.0)
        before = len(accepted)
        old = redis_sentinel.master()
        killed_at = time.monotonic()
        old.kill()
        new = await asyncio.to_thread(redis_sentinel.wait_master_changed, old, 30.0)
        promoted_after = time.monotonic() - killed_at
        # Until the clients have found the new master and enqueued there for a while.
        at_promotion = len(accepted)
        await until(lambda: len(accepted) > at_promotion + 200, timeout=30)
    finally:
        stop.set()
        await asyncio.gather(*senders)
    dest = Recorder()
    async with working(client, dest):
        await until(lambda: accepted.keys() <= dest.delivered.keys(), timeout=60)
    lost = accepted.keys() - dest.delivered.keys()
    log.warning("sentinel failover: accepted=%d (before kill %d) delivered=%d lost=%d "
                "refused(503)=%d promoted %s after %.1fs", len(accepted), before,
                len(dest.delivered), len(lost), refused, new.port, promoted_after)
    print(f"\nsentinel failover: accepted={len(accepted)} arrived="
          f"{len(accepted.keys() & dest.delivered.keys())} lost={len(lost)} "
          f"refused(503)={refused} promotion {promoted_after:.1f}s after the kill")
    assert not lost
    await queue.aclose()
    await client.aclose()


# --- Cluster: every feature on 3 masters --------------------------------------------------


@pytest.fixture
async def cluster_client(redis_cluster: RedisCluster) -> AsyncIterator[RedisClient]:
    client = connect(redis_cluster.url)
    yield client
    await client.aclose()


async def test_cluster_enqueue_deliver_dead_letter_replay(cluster_client: RedisClient) -> None:
    queue = DeliveryQueue(cluster_client, wait_replicas=1)
    good = [make_delivery(i) for i in range(50)]
    bad = make_delivery(999, webhook="gone")
    for d in [*good, bad]:
        await queue.enqueue(d)
    assert await queue.depth() == 51
    dead = DeadLetters(cluster_client)
    dest = Recorder(fail_webhook="gone")
    async with working(cluster_client, dest) as w:
        await until(lambda: len(dest.delivered) == 50 and w.stats.dead_lettered == 1, 20)
        [letter] = await dead.list()
        assert (letter.delivery.id, letter.reason) == (bad.id, REASON_PERMANENT)
        dest.fail_webhook = None
        await dead.replay(letter.id)
        await until(lambda: bad.id in dest.delivered, 20)
    assert await dead.size() == 0 and await queue.depth() == 0


async def test_cluster_rate_limit_and_idempotency(cluster_client: RedisClient) -> None:
    limiter = RateLimiter(cluster_client, timeout_s=1.0)
    key = f"acme/gh/{uuid.uuid4().hex}"
    decisions = [await limiter.check(key, rate=1.0, burst=3) for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert not limiter.degraded
    # Concurrent checks on keys of many hash slots: one batch, one script call per slot.
    many = [f"acme/gh-{i}/{uuid.uuid4().hex}" for i in range(8)]
    batch = await asyncio.gather(*(limiter.check(k, rate=0.01, burst=2)
                                   for _ in range(3) for k in many))
    assert [d.allowed for d in batch] == [True] * 16 + [False] * 8
    assert not limiter.degraded
    await limiter.aclose()
    idem = Idempotency(cluster_client)
    dkey = uuid.uuid4().hex
    assert await idem.first_time("acme", "gh", dkey, 60)
    assert not await idem.first_time("acme", "gh", dkey, 60)
    await idem.forget("acme", "gh", dkey)
    assert await idem.first_time("acme", "gh", dkey, 60)

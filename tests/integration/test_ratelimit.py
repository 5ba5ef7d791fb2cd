"""The shared token bucket against a real Redis, and the local fallback when Redis goes away."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from cli.servers import RedisServer
from data_plane.ratelimit import _TOKEN_BUCKET, RateLimiter
from data_plane.redis_keys import rate_limit_key


@pytest.fixture
async def two_clients(redis_server: RedisServer) -> AsyncIterator[list[aioredis.Redis]]:
    """Two separate connection pools: two gateways."""
    clients = [aioredis.Redis.from_url(redis_server.url, socket_timeout=5) for _ in range(2)]
    yield clients
    for c in clients:
        await c.aclose()


@pytest.fixture
def key() -> str:
    return f"t-{uuid.uuid4().hex[:12]}/gh"


async def test_two_gateways_share_one_limit(two_clients: list[aioredis.Redis], key: str) -> None:
    gateways = [RateLimiter(c) for c in two_clients]
    decisions = [await gateways[i % 2].check(key, rate=5, burst=5) for i in range(10)]
    allowed = [d for d in decisions if d.allowed]
    # 5 from the burst; a 6th only if the ten calls took over 0.2 s (one refilled token).
    assert 5 <= len(allowed) <= 6
    assert all(d.allowed for d in decisions[:5])
    refused = [d for d in decisions if not d.allowed]
    assert refused and all(0 < d.retry_after_s <= 0.2 for d in refused)
    assert not any(g.degraded for g in gateways)

    await asyncio.sleep(0.25)  # refills about one token (5/s), for everyone
    again = [await gateways[i % 2].check(key, rate=5, burst=5) for i in range(2)]
    assert [d.allowed for d in again] == [True, False]


async def test_script_arithmetic_with_explicit_time(
    two_clients: list[aioredis.Redis], key: str
) -> None:
    client = two_clients[0]
    script = client.register_script(_TOKEN_BUCKET)
    redis_key = rate_limit_key(key)

    async def take(now: float, cost: float = 1) -> tuple[int, float]:
        allowed, retry = await script(keys=[redis_key], args=[2, 3, now, cost])
        return int(allowed), float(retry)

    assert [await take(1000.0) for _ in range(3)] == [(1, 0.0)] * 3
    assert await take(1000.0) == (0, 0.5)
    assert await take(1000.5) == (1, 0.0)  # 0.5 s at 2/s: one token
    assert await take(1000.5, cost=2) == (0, 1.0)
    assert await take(1100.0) == (1, 0.0)  # long idle: full again, never above burst
    assert await take(1100.0, cost=3) == (0, 0.5)
    ttl = await client.pttl(redis_key)
    assert 0 < ttl <= 1000 + 1000  # expires once refilled (here 0.5 s) plus a margin


async def test_falls_back_to_local_buckets_while_redis_is_down(redis_own: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_own.url, socket_timeout=5)
    limiter = RateLimiter(client, recheck_s=0.05, max_recheck_s=0.1)
    try:
        assert (await limiter.check("k", rate=1, burst=3)).allowed
        assert not limiter.degraded

        redis_own.stop()
        local = [await limiter.check("k", rate=1, burst=3) for _ in range(4)]
        assert limiter.degraded
        assert [d.allowed for d in local] == [True, True, True, False]  # still limited
        assert 0 < local[-1].retry_after_s <= 1

        redis_own.start()
        deadline = time.monotonic() + 5
        while limiter.degraded:
            assert time.monotonic() < deadline, "never went back to Redis"
            await asyncio.sleep(0.05)
            await limiter.check("k", rate=1, burst=3)
    finally:
        await client.aclose()


async def test_slow_redis_times_out_to_local(redis_own: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_own.url, socket_timeout=5)
    admin = aioredis.Redis.from_url(redis_own.url, socket_timeout=5)
    limiter = RateLimiter(client, timeout_s=0.05)
    try:
        assert (await limiter.check("k", rate=10, burst=10)).allowed
        await admin.client_pause(500)  # Redis stops answering for 0.5 s
        started = time.monotonic()
        decision = await limiter.check("k", rate=10, burst=10)
        assert time.monotonic() - started < 0.3  # the request is not held up by Redis
        assert decision.allowed and limiter.degraded
    finally:
        await client.aclose()
        await admin.aclose()


async def test_concurrent_checks_share_script_calls_and_keep_their_order(
    two_clients: list[aioredis.Redis], key: str
) -> None:
    client = two_clients[0]
    limiter = RateLimiter(client, timeout_s=2.0)
    other = f"{key}-other"
    calls_before = await _evalsha_calls(client)
    decisions = await asyncio.gather(
        *(limiter.check(key if i % 2 == 0 else other, rate=0.01, burst=5) for i in range(20)))
    calls = await _evalsha_calls(client) - calls_before
    # Ten checks per key, five tokens each: the first five of each key, in the order asked.
    assert [d.allowed for d in decisions[0::2]] == [True] * 5 + [False] * 5
    assert [d.allowed for d in decisions[1::2]] == [True] * 5 + [False] * 5
    assert calls <= 3, f"{calls} script calls for 20 concurrent checks"
    await limiter.aclose()


async def test_script_takes_many_buckets_in_one_call(
    two_clients: list[aioredis.Redis], key: str
) -> None:
    script = two_clients[0].register_script(_TOKEN_BUCKET)
    a, b = rate_limit_key(f"{key}-a"), rate_limit_key(f"{key}-b")
    reply = await script(keys=[a, b, a, a],
                         args=[1, 2, 1000.0, 1, 1, 1, 1000.0, 1, 1, 2, 1000.0, 1, 1, 2, 1000.0, 1])
    assert [(int(reply[i]), float(reply[i + 1])) for i in range(0, 8, 2)] == [
        (1, 0.0), (1, 0.0), (1, 0.0), (0, 1.0)]


async def test_closing_answers_waiting_checks_locally(two_clients: list[aioredis.Redis],
                                                      key: str) -> None:
    admin = two_clients[1]
    limiter = RateLimiter(two_clients[0], timeout_s=5.0)
    assert (await limiter.check(key, rate=1, burst=1)).allowed  # script loaded
    await admin.client_pause(300)  # the next call waits on Redis
    waiting = asyncio.ensure_future(limiter.check(key, rate=1, burst=1))
    await asyncio.sleep(0.05)
    await limiter.aclose()
    decision = await asyncio.wait_for(waiting, 1)
    assert decision.allowed  # the local bucket starts full
    assert not limiter.degraded  # closing is not an outage


async def _evalsha_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

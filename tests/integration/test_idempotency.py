"""Idempotency keys against a real Redis: one winner per window, across gateways."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from cli.servers import RedisServer
from data_plane.idempotency import Idempotency
from data_plane.redis_keys import IDEMPOTENCY_PREFIX, idempotency_key


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.Redis.from_url(redis_server.url, socket_timeout=5)
    yield r
    await r.aclose()


@pytest.fixture
def namespace() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


async def test_repeat_within_window_rejected_then_accepted_after_expiry(
    client: aioredis.Redis, namespace: str
) -> None:
    idem = Idempotency(client)
    assert await idem.first_time(namespace, "gh", "evt-1", window_s=1)
    assert not await idem.first_time(namespace, "gh", "evt-1", window_s=1)
    assert await idem.first_time(namespace, "gh", "evt-2", window_s=1)  # another key
    assert await idem.first_time(namespace, "other", "evt-1", window_s=1)  # another webhook
    await asyncio.sleep(1.1)
    assert await idem.first_time(namespace, "gh", "evt-1", window_s=1)


async def test_two_gateways_racing_get_one_winner(
    redis_server: RedisServer, namespace: str
) -> None:
    clients = [aioredis.Redis.from_url(redis_server.url, socket_timeout=5) for _ in range(2)]
    try:
        idems = [Idempotency(c) for c in clients]
        results = await asyncio.gather(
            *(idems[i % 2].first_time(namespace, "gh", "evt", 60) for i in range(20))
        )
        assert sum(results) == 1
    finally:
        for c in clients:
            await c.aclose()


async def test_forget_lets_the_sender_retry(client: aioredis.Redis, namespace: str) -> None:
    idem = Idempotency(client)
    assert await idem.first_time(namespace, "gh", "evt", 60)
    await idem.forget(namespace, "gh", "evt")  # e.g. the enqueue then failed
    assert await idem.first_time(namespace, "gh", "evt", 60)


async def test_keys_are_hashed_and_expire(client: aioredis.Redis, namespace: str) -> None:
    idem = Idempotency(client)
    sender_key = "x" * 10_000 + "\n*?"
    assert await idem.first_time(namespace, "gh", sender_key, window_s=30)
    key = idempotency_key(namespace, "gh", sender_key)
    assert key.startswith(IDEMPOTENCY_PREFIX) and len(key) == len(IDEMPOTENCY_PREFIX) + 64
    assert 0 < await client.pttl(key) <= 30_000


async def test_concurrent_requests_batched_get_their_own_answers_in_order(
    client: aioredis.Redis, namespace: str
) -> None:
    idem = Idempotency(client)
    before = await _set_calls(client)
    keys = [f"evt-{i % 10}" for i in range(40)]  # ten keys, four requests each
    results = await asyncio.gather(*(idem.first_time(namespace, "gh", k, 60) for k in keys))
    # The first request of each key wins, in the order they came.
    assert results == [True] * 10 + [False] * 30
    assert await _set_calls(client) - before == 40  # one SET each, batched or not
    await idem.aclose()


async def test_an_unreachable_redis_raises_for_the_caller_to_fail_open() -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    idem = Idempotency(dead, timeout_s=0.5)
    try:
        with pytest.raises((OSError, TimeoutError, aioredis.ConnectionError)):
            await idem.first_time("acme", "gh", "evt", 60)
    finally:
        await idem.aclose()
        await dead.aclose()


async def _set_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_set", {}).get("calls", 0))

"""Sender-side idempotency: the first delivery key within its window wins, repeats are
answered without delivering again.

One `SET key 1 NX PX window` per request: atomic across gateways, and the key vanishes with
its window, so memory is bounded by (requests per window) x ~100 bytes. Keys are hashed
(see redis_keys.idempotency_key) because the sender picks the delivery key. The SETs of
concurrent requests go out together, one pipeline per batch (data_plane/group_commit.py).

Order of use: `first_time()`, then enqueue; if the enqueue fails, `forget()` so the sender's
retry is not mistaken for a repeat of a delivery that was never accepted. If Redis itself is
unavailable the caller should fail open (treat as first time): a duplicate is recoverable, a
dropped webhook is not.
"""

from __future__ import annotations

import asyncio

from data_plane import redis_keys as keys
from data_plane.group_commit import GroupCommit
from data_plane.redis_connect import RedisClient


class Idempotency:
    def __init__(self, redis: RedisClient, *, timeout_s: float = 1.0) -> None:
        self._redis = redis
        self._timeout_s = timeout_s
        # Closing lets waiting requests through, as when Redis is down.
        self._set: GroupCommit[tuple[str, int], bool] = GroupCommit(
            self._set_all, timeout_s=timeout_s, closing=True, name="idempotency flusher")

    async def first_time(
        self, namespace: str, webhook: str, delivery_key: str, window_s: float
    ) -> bool:
        """True the first time `delivery_key` is seen within `window_s` seconds. Raises a
        Redis or timeout error when Redis did not say (within `timeout_s`)."""
        key = keys.idempotency_key(namespace, webhook, delivery_key)
        return await self._set((key, max(1, round(window_s * 1000))))

    async def forget(self, namespace: str, webhook: str, delivery_key: str) -> None:
        """Undo first_time() for a delivery that was in the end not accepted."""
        async with asyncio.timeout(self._timeout_s):
            await self._redis.delete(keys.idempotency_key(namespace, webhook, delivery_key))

    async def aclose(self) -> None:
        await self._set.aclose()

    async def _set_all(self, items: list[tuple[str, int]]) -> list[bool | BaseException]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, window_ms in items:
                pipe.set(key, b"1", nx=True, px=window_ms)
            replies = await pipe.execute(raise_on_error=False)
        return [r if isinstance(r, BaseException) else bool(r) for r in replies]

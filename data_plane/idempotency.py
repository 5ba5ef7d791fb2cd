"""Sender-side idempotency: the first delivery key within its window wins, repeats are
answered without delivering again.

One `SET key 1 NX PX window` per request: atomic across gateways, and the key vanishes with
its window, so memory is bounded by (requests per window) x ~100 bytes. Keys are hashed
(see redis_keys.idempotency_key) because the sender picks the delivery key. The SETs are
group-committed, as enqueues are (data_plane/queue.py): while one pipeline is in flight the
next requests' SETs gather and go out together (a round trip each held a webhook with an
idempotency header to 9,800 requests/s where the same webhook without one served 26,400).

Order of use: `first_time()`, then enqueue; if the enqueue fails, `forget()` so the sender's
retry is not mistaken for a repeat of a delivery that was never accepted. If Redis itself is
unavailable the caller should fail open (treat as first time): a duplicate is recoverable, a
dropped webhook is not.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from data_plane import redis_keys as keys
from data_plane.redis_connect import RedisClient

MAX_BATCH = 256  # SETs per pipeline: bounds one round trip's size


@dataclass(frozen=True, slots=True)
class _Ask:
    key: str
    window_ms: int
    deadline: float  # loop time
    answer: asyncio.Future[bool]


class Idempotency:
    def __init__(self, redis: RedisClient, *, timeout_s: float = 1.0) -> None:
        self._redis = redis
        self._timeout_s = timeout_s
        self._batch: list[_Ask] = []
        self._flusher: asyncio.Task[None] | None = None

    async def first_time(
        self, namespace: str, webhook: str, delivery_key: str, window_s: float
    ) -> bool:
        """True the first time `delivery_key` is seen within `window_s` seconds. Raises a
        Redis or timeout error when Redis did not say (within `timeout_s`)."""
        loop = asyncio.get_running_loop()
        ask = _Ask(keys.idempotency_key(namespace, webhook, delivery_key),
                   max(1, round(window_s * 1000)), loop.time() + self._timeout_s,
                   loop.create_future())
        self._batch.append(ask)
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name="idempotency flusher")
        return await ask.answer

    async def forget(self, namespace: str, webhook: str, delivery_key: str) -> None:
        """Undo first_time() for a delivery that was in the end not accepted."""
        async with asyncio.timeout(self._timeout_s):
            await self._redis.delete(keys.idempotency_key(namespace, webhook, delivery_key))

    async def aclose(self) -> None:
        """Stop the flusher; requests still waiting are let through, as when Redis is down."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        _answer_all(self._batch, True)
        self._batch.clear()

    async def _flush(self) -> None:
        while self._batch:
            batch, self._batch = self._batch[:MAX_BATCH], self._batch[MAX_BATCH:]
            try:
                # Asks queue in order, so the first one's deadline is the earliest: each
                # request waits at most its own timeout_s, the pipeline before included.
                async with asyncio.timeout_at(batch[0].deadline):
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for ask in batch:
                            pipe.set(ask.key, b"1", nx=True, px=ask.window_ms)
                        replies = await pipe.execute(raise_on_error=False)
            except asyncio.CancelledError:
                _answer_all(batch, True)
                raise
            except Exception as exc:  # each caller decides what a failure means (fail open)
                for ask in batch:
                    if not ask.answer.done():
                        ask.answer.set_exception(exc)
                continue
            for ask, reply in zip(batch, replies, strict=True):
                if ask.answer.done():  # its caller is gone (cancelled)
                    continue
                if isinstance(reply, Exception):
                    ask.answer.set_exception(reply)
                else:
                    ask.answer.set_result(bool(reply))


def _answer_all(batch: list[_Ask], value: bool) -> None:
    for ask in batch:
        if not ask.answer.done():
            ask.answer.set_result(value)

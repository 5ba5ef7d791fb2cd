"""Independent commands to one Redis from concurrent deliveries, sent together.

    reply = await batcher.call("XADD", "events", "*", "id", "...")

Each call waits for its own reply (or its own error), so nothing is reported delivered before
Redis applied it; but the calls that arrive while one pipeline is in flight go out together
in the next one, one round trip for all of them. redis-py spends far more per command
(connection checkout, timeout, parsing) than Redis does: a worker delivering to a Redis stream
one XADD at a time spent most of its time there.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

MAX_BATCH = 256  # commands per pipeline: bounds one round trip's size


class CommandBatcher:
    def __init__(self, client: aioredis.Redis, timeout_s: float) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self._pending: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def call(self, *args: Any) -> Any:
        """Run one command; its reply, or its error raised (a connection error fails every
        command of the pipeline it was in: none of them is known to have been applied)."""
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((args, waiter))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="redis command batch")
        async with asyncio.timeout(self.timeout_s * 2):  # its pipeline, and the one before
            return await waiter

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                async with asyncio.timeout(self.timeout_s):
                    async with self.client.pipeline(transaction=False) as pipe:
                        for args, _ in batch:
                            pipe.execute_command(*args)
                        replies: list[Any] = await pipe.execute(raise_on_error=False)
            except asyncio.CancelledError:
                fail_waiters([w for _, w in batch], ConnectionError("Redis client closed"))
                raise
            except Exception as exc:
                replies = [exc] * len(batch)
            for (_, waiter), reply in zip(batch, replies, strict=True):
                if waiter.done():  # its caller gave up
                    continue
                if isinstance(reply, BaseException):
                    waiter.set_exception(reply)
                else:
                    waiter.set_result(reply)

    async def aclose(self) -> None:
        """Stop sending; callers still waiting get an error (their commands were not sent)."""
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        fail_waiters([w for _, w in self._pending], ConnectionError("Redis client closed"))
        self._pending.clear()


def fail_waiters(waiters: list[asyncio.Future[Any]], error: BaseException) -> None:
    """Complete every waiter still waiting with `error` (a group commit that cannot finish)."""
    for waiter in waiters:
        if not waiter.done():
            waiter.set_exception(error)

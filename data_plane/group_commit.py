"""Group commit: requests that each need a Redis round trip share one while it is in flight.

A caller hands in an item and waits for its answer; one flusher task sends everything gathered
in one call (a script, a pipeline) and answers each caller from it; while that call is in
flight the next items gather for the next one. Used by the rate limiter, the idempotency keys,
the queue's acks and the `redis_stream` appends: a round trip per request capped a webhook
behind a rate limit at 7,100 requests/s, and one behind an idempotency header at 9,800, where
the same webhook without either served 24,900-26,400. (The queue's enqueue batches the same
way with its own flusher: it must put entries whose script Redis lost back in line.)"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

MAX_BATCH = 256  # items per call: bounds one round trip's size


class GroupCommit(Generic[T, R]):
    """`await commit(item)` -> its answer. `send(items)` makes one call for all of them and
    returns an answer or an exception for each, in order; an exception it raises answers
    them all. `closing` answers whoever still waits when `aclose` stops the flusher (an
    exception is raised to them)."""

    def __init__(self, send: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]], *,
                 timeout_s: float, closing: R | BaseException, name: str) -> None:
        self._send = send
        self.timeout_s = timeout_s
        self._closing = closing
        self._name = name
        self._batch: list[tuple[T, float, asyncio.Future[R]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def __call__(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[R] = loop.create_future()
        self._batch.append((item, loop.time() + self.timeout_s, answer))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name=self._name)
        return await answer

    async def aclose(self) -> None:
        """Stop the flusher; whoever still waits gets `closing`."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        self._answer_all(self._batch)
        self._batch.clear()

    async def _flush(self) -> None:
        while self._batch:
            batch, self._batch = self._batch[:MAX_BATCH], self._batch[MAX_BATCH:]
            try:
                async with asyncio.timeout_at(batch[0][1]):
                    answers = await self._send([item for item, _, _ in batch])
            except asyncio.CancelledError:
                self._answer_all(batch)
                raise
            except Exception as exc:  # each caller decides what a failed call means
                for _, _, answer in batch:
                    _settle(answer, exc)
                continue
            for (_, _, answer), result in zip(batch, answers, strict=True):
                _settle(answer, result)

    def _answer_all(self, batch: list[tuple[T, float, asyncio.Future[R]]]) -> None:
        for _, _, answer in batch:
            _settle(answer, self._closing)


def _settle(answer: asyncio.Future[R], result: R | BaseException) -> None:
    if answer.done():  # its caller is gone (cancelled)
        return
    if isinstance(result, BaseException):
        answer.set_exception(result)
    else:
        answer.set_result(result)

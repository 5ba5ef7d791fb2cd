"""The delivery worker: reads the queue with a consumer group and delivers, at least once.

An entry is only settled (acknowledged, rescheduled or dead-lettered, each one atomic script,
see queue.py) after its outcome is known; anything that stops the worker earlier (SIGKILL,
cancellation, Redis unreachable at settle time) leaves the entry pending, and some worker
reclaims it with XAUTOCLAIM once it has been idle `claim_idle_s`. Live workers reset the idle
time of their in-flight entries every `claim_idle_s / 4`, so slow deliveries are not taken for
orphans; `claim_idle_s` only has to outlast a missed heartbeat, not the longest delivery.

A delivery that failed only because its destination's circuit is open (`CircuitOpen`, raised
by the chain from the Connection's breaker) is deferred until the breaker lets a probe through,
without spending an attempt: the destination was not tried. A worker given `circuits` also
keeps breakers of its own, keyed by `destination(delivery)`, for a `deliver` that has none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from redis.exceptions import RedisError, ResponseError

from data_plane import redis_keys as keys
from data_plane.circuit import CircuitBreaker, Circuits, deferral
from data_plane.delivery import Delivery
from data_plane.logs import request_id as request_id_var
from data_plane.queue import DeliveryQueue, Entry
from data_plane.redis_connect import RedisClient, socket_timeout
from providers.backoff import backoff

log = logging.getLogger(__name__)

REASON_GONE = "webhook no longer configured"
REASON_EXHAUSTED = "attempts exhausted"
REASON_PERMANENT = "non-retryable error"
REASON_UNDECODABLE = "undecodable entry"
_MAX_ERROR = 1000
_MOVE_BATCH = 100
_MOVE_POLL_S = 1.0  # catches retries scheduled by other processes while ours has none due
_REDIS_ERRORS = (RedisError, OSError, TimeoutError)


class RetryPolicy(Protocol):
    """What the worker needs of a webhook's retry settings (providers.resources.Retry)."""

    @property
    def attempts(self) -> int: ...
    @property
    def initial_delay_s(self) -> float: ...
    @property
    def max_delay_s(self) -> float: ...


@dataclass(frozen=True, slots=True)
class WorkerStats:
    delivered: int
    retried: int  # failures scheduled for another attempt
    dead_lettered: int
    failed: int  # deliver() calls that raised
    deferred: int  # rescheduled because the destination's circuit was open
    reclaimed: int  # entries taken over from consumers presumed dead
    in_flight: int


def _destination(delivery: Delivery) -> str:
    return f"{delivery.namespace}/{delivery.webhook}"


def _cancel_requested() -> bool:
    """redis-py can swallow a cancellation that lands in the middle of a read (see redis-py
    issues 2028 and 2551; seen here with 8.1 about once in 100 cancels), so the long-running
    loops also look for a pending cancel themselves instead of trusting CancelledError."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class Worker:
    def __init__(
        self,
        redis: RedisClient,
        deliver: Callable[[Delivery], Awaitable[None]],
        retry_policy: Callable[[Delivery], RetryPolicy | None],
        consumer: str,
        group: str = keys.GROUP,
        concurrency: int = 32,
        claim_idle_s: float = 30.0,
        *,
        stream: str = keys.STREAM,
        block_s: float = 1.0,
        circuits: Circuits | None = None,
        destination: Callable[[Delivery], str] = _destination,
        delay: Callable[[int, float, float], float] = backoff,
        timeout_s: float = 5.0,
    ) -> None:
        """`deliver` raises on failure, with `retryable = False` on the exception for a
        failure that retrying cannot fix. `delay(n, initial, cap)` is the wait before retry
        n+1 (default: exponential with full jitter). `destination` keys the worker's own
        circuit breakers, kept only when `circuits` is given.
        """
        self.queue = DeliveryQueue(redis, stream, timeout_s=timeout_s)
        self._deliver = deliver
        self._retry_policy = retry_policy
        self.consumer = consumer
        self.group = group
        self.concurrency = concurrency
        self.claim_idle_s = claim_idle_s
        # The blocking read must end well inside the client's socket timeout and leave time
        # for the heartbeat, which runs between reads.
        read_timeout = socket_timeout(redis) or 60.0
        self._block_s = min(block_s, claim_idle_s / 4, read_timeout / 2)
        self._beat_s = claim_idle_s / 4
        self.circuits = circuits
        self._destination = destination
        self._delay = delay
        self._sem = asyncio.Semaphore(concurrency)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._wake_mover = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._claim_cursor = "0-0"
        self._next_claim = 0.0
        self._next_beat = 0.0
        self._started = time.monotonic()
        self._delivered = self._retried = self._dead_lettered = 0
        self._failed = self._deferred = self._reclaimed = 0

    @property
    def stats(self) -> WorkerStats:
        return WorkerStats(
            self._delivered, self._retried, self._dead_lettered, self._failed,
            self._deferred, self._reclaimed, len(self._tasks),
        )  # fmt: skip

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self) -> None:
        """Work until stop(). Cancelling run() instead is an abrupt stop: in-flight deliveries
        are cancelled unsettled and will be reclaimed, as after a crash."""
        if self._stopping:
            return
        self._started = time.monotonic()
        self._loops = [
            asyncio.create_task(self._poll_loop(), name=f"worker {self.consumer} poll"),
            asyncio.create_task(self._move_loop(), name=f"worker {self.consumer} mover"),
        ]
        try:
            await asyncio.wait(self._loops, return_when=asyncio.FIRST_EXCEPTION)
            for loop in self._loops:
                if loop.done() and not loop.cancelled() and (exc := loop.exception()):
                    raise exc
            await self._stopped.wait()
        finally:
            for task in (*self._loops, *self._tasks.values()):
                task.cancel()
            await self.queue.aclose()  # its ack flusher: acks not sent leave entries pending

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop picking up entries, give in-flight deliveries `timeout` seconds, cancel the
        rest (they stay pending and are reclaimed by another worker)."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        for loop in self._loops:
            loop.cancel()
        if self._loops:
            await asyncio.wait(self._loops, timeout=self.queue.timeout_s + self._block_s)
        cancelled = 0
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks.values()), timeout=timeout)
            for task in pending:
                task.cancel()
            cancelled = len(pending)
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        await self.queue.aclose()
        s = self.stats
        log.info(
            "worker %s stopped after %.1fs: delivered=%d retried=%d dead_lettered=%d failed=%d "
            "deferred=%d reclaimed=%d, %d in-flight cancelled (left pending for reclaim)",
            self.consumer, time.monotonic() - self._started, s.delivered, s.retried,
            s.dead_lettered, s.failed, s.deferred, s.reclaimed, cancelled,
        )  # fmt: skip
        self._stopped.set()

    # --- picking up entries --------------------------------------------------------------

    async def _poll_loop(self) -> None:
        errors = 0
        group_ready = False
        while not _cancel_requested():  # each pass is bounded by block_s and the timeouts
            try:
                if not group_ready:
                    await self.queue.ensure_group(self.group)
                    group_ready = True
                await self._heartbeat()
                await self._poll()
                errors = 0
            except _REDIS_ERRORS as exc:
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    group_ready = False  # Redis lost its data (restart without persistence)
                wait = backoff(errors, base=0.1, cap=5.0)
                errors += 1
                log.warning("worker %s: %r; retrying in %.2fs", self.consumer, exc, wait)
                await asyncio.sleep(wait)
        raise asyncio.CancelledError

    async def _poll(self) -> None:
        slots = await self._take_slots()
        try:
            now = time.monotonic()
            if slots and now >= self._next_claim:
                self._next_claim = now + self.claim_idle_s / 2
                self._claim_cursor, entries = await self.queue.claim(
                    self.group, self.consumer, self.claim_idle_s, self._claim_cursor, slots
                )
                started = self._start(entries)
                self._reclaimed += started
                slots -= started
            if slots:
                entries = await self.queue.read(self.group, self.consumer, slots, self._block_s)
                slots -= self._start(entries)
        finally:
            for _ in range(slots):
                self._sem.release()

    async def _take_slots(self) -> int:
        """Wait (at most block_s) for one free delivery slot, then take all free ones."""
        try:
            async with asyncio.timeout(self._block_s):
                await self._sem.acquire()
        except TimeoutError:
            return 0
        slots = 1
        while slots < self.concurrency and not self._sem.locked():
            await self._sem.acquire()  # a slot is free: returns at once
            slots += 1
        return slots

    def _start(self, entries: list[Entry]) -> int:
        started = 0
        for entry_id, fields in entries:
            if entry_id in self._tasks:  # our own in-flight entry, reclaimed after a stall
                continue
            task = asyncio.create_task(self._process(entry_id, fields), name=f"deliver {entry_id}")
            self._tasks[entry_id] = task
            task.add_done_callback(partial(self._reap, entry_id))
            started += 1
        return started

    def _reap(self, entry_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.pop(entry_id, None)
        self._sem.release()
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("delivery task for %s crashed", entry_id, exc_info=exc)

    async def _heartbeat(self) -> None:
        now = time.monotonic()
        if self._tasks and now >= self._next_beat:
            self._next_beat = now + self._beat_s
            await self.queue.touch(self.group, self.consumer, list(self._tasks))

    # --- scheduled retries ---------------------------------------------------------------

    async def _move_loop(self) -> None:
        """Every worker runs one; the move script is atomic, so they never move an item twice.
        Sleeps until the next retry is due (at most _MOVE_POLL_S) or until woken because this
        worker scheduled one."""
        errors = 0
        while not _cancel_requested():
            self._wake_mover.clear()
            try:
                moved, next_due = await self.queue.move_due(_MOVE_BATCH)
                errors = 0
                wait = _MOVE_POLL_S if next_due is None else min(next_due, _MOVE_POLL_S)
                if moved == _MOVE_BATCH:
                    wait = 0.0
            except _REDIS_ERRORS as exc:
                wait = backoff(errors, base=0.1, cap=5.0)
                errors += 1
                log.warning("worker %s mover: %r; retrying in %.2fs", self.consumer, exc, wait)
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake_mover.wait()
            else:
                await asyncio.sleep(0)
        raise asyncio.CancelledError

    # --- one delivery --------------------------------------------------------------------

    async def _process(self, entry_id: str, fields: Mapping[bytes, bytes] | None) -> None:
        try:
            await self._handle(entry_id, fields)
        except _REDIS_ERRORS as exc:
            # The outcome was not recorded: the entry stays pending and will be reclaimed.
            log.warning("worker %s: could not settle %s: %r", self.consumer, entry_id, exc)

    async def _handle(self, entry_id: str, fields: Mapping[bytes, bytes] | None) -> None:
        if fields is None:  # deleted from the stream while pending: nothing left to deliver
            await self.queue.ack(self.group, entry_id)
            return
        try:
            delivery = Delivery.from_fields(fields)
        except (KeyError, ValueError) as exc:
            await self._dead(entry_id, fields, REASON_UNDECODABLE, 0, repr(exc)[:_MAX_ERROR])
            return
        # This task's log lines (modules' included) carry the id of the request that queued it.
        request_id_var.set(delivery.request_id)
        policy = self._retry_policy(delivery)
        if policy is None:
            await self._dead(entry_id, fields, REASON_GONE, delivery.attempt, "")
            return
        breaker = (
            self.circuits.get(self._destination(delivery)) if self.circuits is not None else None
        )
        if breaker is not None and not breaker.allow():
            await self._defer(entry_id, delivery, breaker.retry_after())
            return
        try:
            await self._deliver(delivery)
        except Exception as exc:
            wait = deferral(exc)
            if wait is not None:
                await self._defer(entry_id, delivery, wait)
                return
            self._failed += 1
            await self._failed_attempt(entry_id, fields, delivery, policy, breaker, exc)
            return
        if breaker is not None:
            breaker.success()
        self._delivered += 1
        await self.queue.ack(self.group, entry_id)

    async def _defer(self, entry_id: str, delivery: Delivery, wait_s: float) -> None:
        # Not an attempt: the destination was not tried. Jitter spreads the wake-ups.
        wait = max(wait_s, 0.05) * random.uniform(1.0, 1.2)
        if await self.queue.retry_later(self.group, entry_id, delivery, wait):
            self._deferred += 1
            self._wake_mover.set()

    async def _failed_attempt(
        self,
        entry_id: str,
        fields: Mapping[bytes, bytes],
        delivery: Delivery,
        policy: RetryPolicy,
        breaker: CircuitBreaker | None,
        exc: Exception,
    ) -> None:
        failures = delivery.attempt + 1
        error = f"{type(exc).__name__}: {exc}"[:_MAX_ERROR]
        retryable = bool(getattr(exc, "retryable", True))
        if retryable and breaker is not None:
            # A non-retryable failure (e.g. 4xx) means the destination answered: not a sign
            # that it is down, so it does not count towards opening the circuit.
            breaker.failure()
        if retryable and failures < policy.attempts:
            wait = self._delay(failures - 1, policy.initial_delay_s, policy.max_delay_s)
            if await self.queue.retry_later(self.group, entry_id, delivery.next_attempt(), wait):
                self._retried += 1
                self._wake_mover.set()
            # INFO: the attempt failed but nothing is lost yet (the dead letter is a WARNING).
            log.info("delivery %s of %s/%s failed (%s); retry %d in %.2fs", delivery.id,
                     delivery.namespace, delivery.webhook, error, failures, wait)  # fmt: skip
            return
        reason = REASON_EXHAUSTED if retryable else REASON_PERMANENT
        await self._dead(entry_id, fields, reason, failures, error)

    async def _dead(
        self, entry_id: str, fields: Mapping[bytes, bytes], reason: str, attempts: int, error: str
    ) -> None:
        if await self.queue.dead_letter(self.group, entry_id, fields, reason, attempts, error):
            self._dead_lettered += 1
            log.warning(
                "dead-lettered %s/%s delivery %s: %s after %d attempt(s): %s",
                fields.get(b"namespace", b"?").decode(errors="replace"),
                fields.get(b"webhook", b"?").decode(errors="replace"),
                fields.get(b"id", b"?").decode(errors="replace"), reason, attempts, error,
            )  # fmt: skip

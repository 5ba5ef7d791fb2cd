"""Queue, worker and dead letters against a real Redis: delivery, retries, dead-lettering,
replay, backpressure, circuit breaking, and nothing lost when a worker or Redis dies."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from cli.servers import RedisServer
from data_plane.circuit import Circuits
from data_plane.delivery import Delivery
from data_plane.dlq import DeadLetters
from data_plane.queue import Backpressure, DeliveryQueue
from data_plane.redis_keys import GROUP
from data_plane.worker import REASON_EXHAUSTED, REASON_GONE, REASON_PERMANENT, Worker
from providers.resources import Retry

ROOT = Path(__file__).resolve().parents[2]
FAST = Retry(attempts=4, initial_delay_s=0.05, max_delay_s=0.4)


class DestinationError(Exception):
    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


def no_jitter(n: int, initial: float, cap: float) -> float:
    return min(cap, initial * 2.0**n)


def make_delivery(i: int = 0, webhook: str = "gh") -> Delivery:
    return Delivery("acme", webhook, f'{{"n": {i}}}'.encode(), {"x-n": str(i)}, revision=1)


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.Redis.from_url(redis_server.url, socket_timeout=5)
    yield r
    await r.aclose()


@pytest.fixture
def stream() -> str:
    """A queue private to this test on the shared Redis (its own hash tag, too)."""
    return f"t:{{{uuid.uuid4().hex[:12]}}}:deliveries"


class Recorder:
    """A destination: records deliveries; fails while `failing` (or for the first N calls)."""

    def __init__(self, *, failing: bool = False, fail_first: int = 0, retryable: bool = True):
        self.failing = failing
        self.fail_first = fail_first
        self.retryable = retryable
        self.calls: list[tuple[float, Delivery]] = []
        self.delivered: dict[str, Delivery] = {}

    async def __call__(self, delivery: Delivery) -> None:
        self.calls.append((time.monotonic(), delivery))
        if self.failing or len(self.calls) <= self.fail_first:
            raise DestinationError("503 from destination", self.retryable)
        self.delivered[delivery.id] = delivery


async def hang(delivery: Delivery) -> None:
    await asyncio.sleep(3600)


def worker(
    client: aioredis.Redis,
    stream: str,
    deliver: Callable[[Delivery], Awaitable[None]],
    policy: Retry | None = FAST,
    **kw: object,
) -> Worker:
    kw.setdefault("consumer", f"w-{uuid.uuid4().hex[:6]}")
    kw.setdefault("delay", no_jitter)
    return Worker(client, deliver, lambda _: policy, stream=stream, **kw)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(w: Worker) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(w.run())
    try:
        yield task
    finally:
        await w.stop(timeout=1)
        await task


async def until(check: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def until_async(check: Callable[[], Awaitable[object]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def _is_zero(depth: Awaitable[int]) -> bool:
    return await depth == 0


# --- delivering ---------------------------------------------------------------------------


async def test_enqueued_deliveries_are_delivered(client: aioredis.Redis, stream: str) -> None:
    queue = DeliveryQueue(client, stream)
    sent = [make_delivery(i) for i in range(20)]
    for d in sent:
        await queue.enqueue(d)
    assert await queue.depth() == 20
    dest = Recorder()
    w = worker(client, stream, dest, concurrency=4)
    async with running(w):
        await until(lambda: len(dest.delivered) == 20)
    assert {d.id: d for d in sent} == dest.delivered  # every field survives the round trip
    assert await queue.depth() == 0
    assert w.stats.delivered == 20 and w.stats.in_flight == 0 and w.stats.failed == 0


async def test_retries_with_growing_delays_then_dead_letters_then_replays(
    client: aioredis.Redis, stream: str
) -> None:
    queue = DeliveryQueue(client, stream)
    dead = DeadLetters(client, stream)
    dest = Recorder(failing=True)
    w = worker(client, stream, dest, circuits=Circuits(threshold=100))
    async with running(w):
        sent = make_delivery()
        await queue.enqueue(sent)
        await until_async(lambda: dead.size())
        assert [d.attempt for _, d in dest.calls] == [0, 1, 2, 3]
        gaps = [b[0] - a[0] for a, b in zip(dest.calls, dest.calls[1:], strict=False)]
        for gap, planned in zip(gaps, (0.05, 0.1, 0.2), strict=True):
            assert planned - 0.01 <= gap < planned + 0.5
        assert gaps[0] < gaps[1] < gaps[2]

        [letter] = await dead.list()
        assert letter.delivery.id == sent.id and letter.delivery.body == sent.body
        assert letter.reason == REASON_EXHAUSTED and letter.attempts == 4
        assert "503 from destination" in letter.last_error
        assert abs(letter.failed_at - time.time()) < 5
        assert await dead.list(namespace="other") == []
        assert await queue.depth() == 0
        assert w.stats.retried == 3 and w.stats.failed == 4 and w.stats.dead_lettered == 1

        dest.failing = False  # the destination recovers
        await dead.replay(letter.id)
        await until(lambda: sent.id in dest.delivered)
    assert dest.delivered[sent.id].attempt == 0  # replay starts the attempts afresh
    assert await dead.size() == 0
    with pytest.raises(KeyError):
        await dead.replay(letter.id)


async def test_non_retryable_error_goes_straight_to_dead_letters(
    client: aioredis.Redis, stream: str
) -> None:
    queue = DeliveryQueue(client, stream)
    dead = DeadLetters(client, stream)
    dest = Recorder(failing=True, retryable=False)
    async with running(worker(client, stream, dest)):
        await queue.enqueue(make_delivery())
        await until_async(lambda: dead.size())
    assert len(dest.calls) == 1
    [letter] = await dead.list(namespace="acme")
    assert letter.reason == REASON_PERMANENT and letter.attempts == 1


async def test_unconfigured_webhook_is_dead_lettered_without_delivering(
    client: aioredis.Redis, stream: str
) -> None:
    queue = DeliveryQueue(client, stream)
    dead = DeadLetters(client, stream)
    dest = Recorder()
    async with running(worker(client, stream, dest, policy=None)):
        await queue.enqueue(make_delivery())
        await until_async(lambda: dead.size())
    assert dest.calls == []
    [letter] = await dead.list()
    assert letter.reason == REASON_GONE


async def test_dead_letter_listing_paging_replay_all_and_delete(
    client: aioredis.Redis, stream: str
) -> None:
    queue = DeliveryQueue(client, stream)
    dead = DeadLetters(client, stream)
    w = worker(client, stream, Recorder(failing=True), policy=Retry(attempts=1),
               circuits=Circuits(threshold=100))  # fmt: skip
    async with running(w):
        for i in range(6):
            await queue.enqueue(make_delivery(i, webhook="a" if i % 2 else "b"))
            await queue.enqueue(Delivery("other", "c", b"{}", {}, 1))
        await until_async(lambda: _size_is(dead, 12))
    first = await dead.list(limit=5)
    rest = await dead.list(limit=100, after=first[-1].id)
    assert len(first) == 5 and len(rest) == 7
    assert len({x.id for x in first + rest}) == 12
    acme = await dead.list(namespace="acme")
    assert len(acme) == 6 and {x.delivery.namespace for x in acme} == {"acme"}

    assert await dead.delete(acme[0].id) and not await dead.delete(acme[0].id)
    assert await dead.replay_all(namespace="acme") == 5
    assert await dead.size() == 6 and await queue.depth() == 5
    assert await dead.replay_all() == 6
    assert await dead.size() == 0 and await queue.depth() == 11
    assert await dead.replay_all() == 0


async def _size_is(dead: DeadLetters, n: int) -> bool:
    return await dead.size() == n


async def test_backpressure_over_the_bound_drops_nothing(
    client: aioredis.Redis, stream: str
) -> None:
    queue = DeliveryQueue(client, stream, max_backlog=5)
    sent = [make_delivery(i) for i in range(5)]
    for d in sent:
        await queue.enqueue(d)
    with pytest.raises(Backpressure) as info:
        await queue.enqueue(make_delivery(99))
    assert info.value.retry_after_s > 0 and info.value.depth == 5
    assert await queue.depth() == 5
    dest = Recorder()
    async with running(worker(client, stream, dest)):
        await until(lambda: len(dest.delivered) == 5)
        # Delivered is not yet settled: the backlog shrinks with each ack, just after.
        await until_async(lambda: _is_zero(queue.depth()))
        late = make_delivery(100)
        await queue.enqueue(late)  # room again once drained
        await until(lambda: late.id in dest.delivered)
    assert set(dest.delivered) == {d.id for d in sent} | {late.id}


async def test_open_circuit_defers_without_spending_attempts(
    client: aioredis.Redis, stream: str
) -> None:
    queue = DeliveryQueue(client, stream)
    dest = Recorder(fail_first=2)
    retry = Retry(attempts=3, initial_delay_s=0.02, max_delay_s=0.05)
    circuits = Circuits(threshold=2, cooldown_s=0.3)
    w = worker(client, stream, dest, policy=retry, concurrency=1, circuits=circuits)
    sent = [make_delivery(i) for i in range(5)]
    async with running(w):
        for d in sent:
            await queue.enqueue(d)
        await until(lambda: len(dest.delivered) == 5)
    # Two failures opened the circuit; while it was open nothing reached the destination,
    # then a single probe closed it again.
    assert len(dest.calls) == 2 + 5
    assert w.stats.deferred >= 3
    assert all(dest.delivered[d.id].attempt == 0 for d in sent[2:])  # deferral is no attempt


# --- nothing lost -------------------------------------------------------------------------


async def _pending(client: aioredis.Redis, stream: str) -> int:
    return int((await client.xpending(stream, GROUP))["pending"])


async def test_abandoned_worker_entries_are_reclaimed(client: aioredis.Redis, stream: str) -> None:
    queue = DeliveryQueue(client, stream)
    sent = {(await queue.enqueue(d), d.id) for d in (make_delivery(i) for i in range(30))}
    a = worker(client, stream, hang, concurrency=50, claim_idle_s=30)
    a_task = asyncio.create_task(a.run())
    await until(lambda: a.stats.in_flight == 30)
    a_task.cancel()  # as if SIGKILLed: nothing acknowledged, no graceful stop
    with contextlib.suppress(asyncio.CancelledError):
        await a_task
    assert await _pending(client, stream) == 30

    dest = Recorder()
    b = worker(client, stream, dest, claim_idle_s=0.2)
    async with running(b):
        await until(lambda: len(dest.delivered) == 30)
    assert set(dest.delivered) == {delivery_id for _, delivery_id in sent}
    assert b.stats.reclaimed == 30
    assert await _pending(client, stream) == 0 and await queue.depth() == 0


_VICTIM = """
import asyncio, ctypes, signal, sys
import redis.asyncio as aioredis
from data_plane.worker import Worker
from providers.resources import Retry

if sys.platform.startswith("linux"):  # never outlive the test process
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)

async def main() -> None:
    client = aioredis.Redis.from_url(sys.argv[1], socket_timeout=5)
    async def hang(_):
        await asyncio.sleep(3600)
    await Worker(client, hang, lambda _: Retry(), "victim", concurrency=100,
                 stream=sys.argv[2]).run()

asyncio.run(main())
"""


async def test_sigkilled_worker_process_loses_nothing(
    redis_server: RedisServer, client: aioredis.Redis, stream: str
) -> None:
    queue = DeliveryQueue(client, stream)
    sent = {d.id for d in (make_delivery(i) for i in range(25)) if await queue.enqueue(d)}
    victim = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _VICTIM, redis_server.url, stream,
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        # All 25 taken by the victim and in the middle of being delivered...
        await until_async(lambda: _pending_is(client, stream, 25), timeout=15)
    finally:
        victim.send_signal(signal.SIGKILL)  # ...when it dies without any chance to clean up
        await asyncio.wait_for(victim.wait(), 5)
    assert victim.returncode == -signal.SIGKILL
    dest = Recorder()
    async with running(worker(client, stream, dest, claim_idle_s=0.2)):
        await until(lambda: len(dest.delivered) == 25)
    assert set(dest.delivered) == sent
    assert await _pending(client, stream) == 0


async def _pending_is(client: aioredis.Redis, stream: str, n: int) -> bool:
    with contextlib.suppress(Exception):  # the group does not exist until the victim starts
        return await _pending(client, stream) == n
    return False


async def test_queue_survives_a_redis_crash_with_aof() -> None:
    stream = "t:{aof}:deliveries"
    with RedisServer(extra_args=("--appendonly", "yes", "--appendfsync", "always")) as server:
        client = aioredis.Redis.from_url(server.url, socket_timeout=5)
        queue = DeliveryQueue(client, stream)
        sent = [make_delivery(i) for i in range(20)]
        for d in sent:
            await queue.enqueue(d)
        # Some in flight with a worker that then dies, one scheduled for a retry.
        a = worker(client, stream, hang, concurrency=5, claim_idle_s=30)
        a_task = asyncio.create_task(a.run())
        await until(lambda: a.stats.in_flight == 5)
        a_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await a_task
        [(entry_id, fields)] = await queue.read(GROUP, "x", 1, 0.1)
        assert fields is not None
        await queue.retry_later(GROUP, entry_id, Delivery.from_fields(fields), 0.2)

        server.kill()  # SIGKILL: no shutdown save, only what appendfsync put on disk
        server.start()

        # The pool's connections died with the server: the first call on each may fail.
        await until_async(lambda: _depth_is(queue, 20))
        dest = Recorder()
        b = worker(client, stream, dest, claim_idle_s=0.2)
        async with running(b):
            await until(lambda: len(dest.delivered) == 20)
            assert set(dest.delivered) == {d.id for d in sent}

            # The running worker rides out another crash and goes on delivering.
            server.kill()
            server.start()
            late = make_delivery(100)
            await until_async(lambda: _enqueued(queue, late))
            await until(lambda: late.id in dest.delivered, timeout=10)
        await client.aclose()


async def _enqueued(queue: DeliveryQueue, delivery: Delivery) -> bool:
    with contextlib.suppress(Exception):
        return bool(await queue.enqueue(delivery))
    return False


async def _depth_is(queue: DeliveryQueue, n: int) -> bool:
    with contextlib.suppress(Exception):
        return await queue.depth() == n
    return False

"""Group commit's bookkeeping with a stand-in for the Redis call (the real calls are tested in
tests/integration/test_ratelimit.py and test_idempotency.py)."""

from __future__ import annotations

import asyncio

import pytest

from data_plane.group_commit import GroupCommit


class Calls:
    """`send`: answers each item with its double, after `delay_s`; records each batch."""

    def __init__(self, delay_s: float = 0.01) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s

    async def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(items)
        await asyncio.sleep(self.delay_s)
        return [ValueError(f"odd {i}") if i % 2 else i * 2 for i in items]


async def test_callers_gather_while_a_call_is_in_flight() -> None:
    calls = Calls()
    commit: GroupCommit[int, int] = GroupCommit(calls, timeout_s=1, closing=-1, name="t")
    first = asyncio.ensure_future(commit(0))
    await asyncio.sleep(0)  # the first call is out
    rest = await asyncio.gather(*(commit(i) for i in range(2, 12, 2)))
    assert await first == 0
    assert rest == [4, 8, 12, 16, 20]
    assert calls.batches == [[0], [2, 4, 6, 8, 10]]


async def test_an_item_can_fail_alone_and_a_call_for_all() -> None:
    commit: GroupCommit[int, int] = GroupCommit(Calls(), timeout_s=1, closing=-1, name="t")
    results = await asyncio.gather(commit(2), commit(3), return_exceptions=True)
    assert results[0] == 4
    assert isinstance(results[1], ValueError)

    async def broken(items: list[int]) -> list[int | BaseException]:
        raise ConnectionError("down")

    commit = GroupCommit(broken, timeout_s=1, closing=-1, name="t")
    results = await asyncio.gather(commit(2), commit(4), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)


async def test_no_caller_waits_past_its_timeout() -> None:
    commit: GroupCommit[int, int] = GroupCommit(Calls(delay_s=1), timeout_s=0.05, closing=-1,
                                                name="t")
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = await asyncio.gather(commit(2), commit(4), return_exceptions=True)
    assert all(isinstance(r, TimeoutError) for r in results)
    assert loop.time() - started < 0.5


async def test_a_cancelled_caller_leaves_the_others_their_answers() -> None:
    commit: GroupCommit[int, int] = GroupCommit(Calls(), timeout_s=1, closing=-1, name="t")
    gone = asyncio.ensure_future(commit(2))
    stays = asyncio.ensure_future(commit(4))
    await asyncio.sleep(0)
    gone.cancel()
    assert await stays == 8
    with pytest.raises(asyncio.CancelledError):
        await gone


async def test_closing_answers_whoever_waits() -> None:
    commit: GroupCommit[int, int] = GroupCommit(Calls(delay_s=1), timeout_s=5, closing=-1,
                                                name="t")
    waiting = asyncio.gather(commit(2), commit(4))
    await asyncio.sleep(0.01)
    await commit.aclose()
    assert list(await waiting) == [-1, -1]

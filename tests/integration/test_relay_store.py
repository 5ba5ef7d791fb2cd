"""A relay channel's buffer against a real Redis: the bound, the in-flight window, acks by id,
retries after a local failure, dead letters and their replay, release on disconnect, the
visibility timeout, and several sessions sharing one channel."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from cli.servers import RedisServer
from data_plane import redis_keys as keys
from data_plane.delivery import Delivery
from data_plane.dlq import DeadLetters
from data_plane.relay.store import REASON_EXHAUSTED, RelayFull, RelayStore


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RelayStore]:
    r = aioredis.Redis.from_url(redis_server.url, socket_timeout=5)
    yield RelayStore(r)
    await r.aclose()


@pytest.fixture
def channel() -> tuple[str, str]:
    """A namespace and channel private to this test on the shared Redis."""
    return "acme", f"c-{uuid.uuid4().hex[:10]}"


def delivery(i: int) -> Delivery:
    return Delivery("acme", "orders", f'{{"n": {i}}}'.encode(), {"x-n": str(i)}, revision=1)


async def fill(store: RelayStore, at: tuple[str, str], n: int) -> list[str]:
    return [await store.append(*at, delivery(i), 1000) for i in range(n)]


async def test_append_is_bounded_and_refuses_past_the_bound(store: RelayStore,
                                                            channel: tuple[str, str]) -> None:
    await fill(store, channel, 3)
    with pytest.raises(RelayFull) as full:
        await store.append(*channel, delivery(9), 3)
    assert full.value.depth == 3
    assert await store.depth(*channel) == 3
    # Acknowledged messages leave the buffer, making room again.
    _, taken = await store.take(*channel, "ws-a", 1, 30)
    assert await store.ack(*channel, [taken[0].entry_id]) == 1
    await store.append(*channel, delivery(9), 3)


async def test_the_window_bounds_what_a_session_holds(store: RelayStore,
                                                      channel: tuple[str, str]) -> None:
    ids = await fill(store, channel, 5)
    free, taken = await store.take(*channel, "ws-a", 2, 30)
    assert (free, [t.entry_id for t in taken]) == (0, ids[:2])  # in order
    assert (await store.take(*channel, "ws-a", 2, 30))[1] == []
    await store.ack(*channel, [ids[0]])
    free, taken = await store.take(*channel, "ws-a", 2, 30)
    assert [t.entry_id for t in taken] == [ids[2]]
    assert taken[0].delivery.body == b'{"n": 2}' and taken[0].delivery.headers == {"x-n": "2"}


async def test_sessions_share_a_channel_without_overlap(store: RelayStore,
                                                        channel: tuple[str, str]) -> None:
    ids = await fill(store, channel, 6)
    _, a = await store.take(*channel, "ws-a", 3, 30)
    _, b = await store.take(*channel, "ws-b", 3, 30)
    assert {t.entry_id for t in a} | {t.entry_id for t in b} == set(ids)
    assert not {t.entry_id for t in a} & {t.entry_id for t in b}


async def test_an_ack_only_settles_what_is_in_flight(store: RelayStore,
                                                     channel: tuple[str, str]) -> None:
    ids = await fill(store, channel, 2)
    # A message nobody took yet cannot be acked away, nor can a made-up id.
    assert await store.ack(*channel, [ids[0], "1-1"]) == 0
    assert await store.depth(*channel) == 2
    _, taken = await store.take(*channel, "ws-a", 1, 30)
    assert await store.ack(*channel, [taken[0].entry_id]) == 1
    assert await store.ack(*channel, [taken[0].entry_id]) == 0  # twice: no effect
    assert await store.depth(*channel) == 1


async def test_release_hands_messages_to_the_next_session_at_once(
        store: RelayStore, channel: tuple[str, str]) -> None:
    ids = await fill(store, channel, 3)
    await store.take(*channel, "ws-a", 2, 30)
    assert await store.release(*channel, "ws-a", 30) == 2
    _, taken = await store.take(*channel, "ws-b", 10, 30)
    # The released ones first (they are being retried), then the new one.
    assert [t.entry_id for t in taken] == ids


async def test_unacknowledged_messages_return_after_the_visibility_timeout(
        store: RelayStore, channel: tuple[str, str]) -> None:
    [entry] = await fill(store, channel, 1)
    await store.take(*channel, "poll-dead", 1, 0.5)  # taken by a connector that vanished
    assert (await store.take(*channel, "poll-live", 1, 0.5))[1] == []
    await asyncio.sleep(0.6)
    _, taken = await store.take(*channel, "poll-live", 1, 0.5)
    assert [t.entry_id for t in taken] == [entry]


async def test_failures_are_retried_after_a_delay_then_dead_lettered_and_replayable(
        store: RelayStore, channel: tuple[str, str]) -> None:
    [entry] = await fill(store, channel, 1)
    for attempt in (1, 2):
        _, [taken] = await store.take(*channel, "ws-a", 1, 1.0)
        assert taken.failures == attempt - 1
        assert await store.nack(*channel, entry, "HTTP 500", max_attempts=3,
                                visibility_s=1.0, delay_s=0.3) == attempt
        # Not before the delay...
        assert (await store.take(*channel, "ws-a", 1, 1.0))[1] == []
        await asyncio.sleep(0.4)
    _, [taken] = await store.take(*channel, "ws-a", 1, 1.0)
    assert taken.failures == 2
    assert await store.nack(*channel, entry, "HTTP 503", max_attempts=3, visibility_s=1.0,
                            delay_s=0) == 0
    assert await store.depth(*channel) == 0
    letters = DeadLetters(store.redis, keys.relay_stream(*channel))
    [dead] = await letters.list()
    assert (dead.reason, dead.attempts, dead.last_error) == (REASON_EXHAUSTED, 3, "HTTP 503")
    assert dead.delivery.body == b'{"n": 0}'
    await letters.replay(dead.id)
    _, [again] = await store.take(*channel, "ws-b", 1, 1.0)
    assert (again.delivery.id, again.failures) == (dead.delivery.id, 0)


async def test_a_nack_for_a_settled_message_changes_nothing(store: RelayStore,
                                                            channel: tuple[str, str]) -> None:
    [entry] = await fill(store, channel, 1)
    await store.take(*channel, "ws-a", 1, 30)
    await store.ack(*channel, [entry])
    assert await store.nack(*channel, entry, "late", max_attempts=1, visibility_s=30,
                            delay_s=0) == -1
    assert await DeadLetters(store.redis, keys.relay_stream(*channel)).size() == 0


async def test_a_lost_consumer_group_is_recreated(store: RelayStore,
                                                  channel: tuple[str, str]) -> None:
    await fill(store, channel, 1)
    await store.take(*channel, "ws-a", 1, 30)
    await store.redis.xgroup_destroy(keys.relay_stream(*channel), keys.RELAY_GROUP)
    # From the start of the stream again: a duplicate, never a loss.
    _, taken = await store.take(*channel, "ws-a", 1, 30)
    assert len(taken) == 1


async def test_blocking_read_waits_for_the_next_message(store: RelayStore,
                                                        channel: tuple[str, str]) -> None:
    await store.ensure_group(*channel)

    async def later() -> None:
        await asyncio.sleep(0.2)
        await store.append(*channel, delivery(1), 10)

    task = asyncio.create_task(later())
    taken = await store.read_new(*channel, "ws-a", 5, 2.0)
    await task
    assert [t.delivery.body for t in taken] == [b'{"n": 1}']


async def test_idle_empty_consumers_are_swept(store: RelayStore,
                                              channel: tuple[str, str]) -> None:
    [entry] = await fill(store, channel, 1)
    await store.take(*channel, "poll-gone", 1, 30)
    await store.ack(*channel, [entry])
    await asyncio.sleep(0.3)
    assert await store.sweep(*channel, 0.2) == 1
    names = {c["name"] for c in await store.redis.xinfo_consumers(
        keys.relay_stream(*channel), keys.RELAY_GROUP)}
    assert names == set()

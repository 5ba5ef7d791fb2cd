"""The durable delivery queue: a Redis stream read by one consumer group, plus a sorted set of
scheduled retries and a dead-letter stream.

Where an accepted delivery is at every moment (each arrow is one atomic Lua script, so a
process dying anywhere leaves it in exactly one place, never in none):

    enqueue ──> stream (new) ──XREADGROUP──> stream (pending, owned by a consumer)
    pending ──ack──> gone (delivered)
    pending ──retry_later──> scheduled ──move_due──> stream (new)
    pending ──dead_letter──> dead-letter stream
    pending, owner dead ──XAUTOCLAIM──> pending, owned by a live consumer

Settled entries are XACKed *and* XDELed in the same script, so XLEN counts exactly the
entries not yet settled (new + in flight): that, plus the scheduled retries, is the backlog
that enqueue bounds, at O(1) cost. One consumer group per stream.

Durability of an acknowledged enqueue is Redis's: with `appendonly yes` and
`appendfsync always` the entry is on disk before Redis replies; with `appendfsync everysec`
(the default) up to about a second of accepted deliveries can be lost if the Redis *host*
crashes; without AOF, everything since the last RDB snapshot. Replication is asynchronous,
so a failover can also drop the newest writes: with `wait_replicas` > 0 each pipeline of
enqueues ends with `WAIT wait_replicas wait_timeout_ms` on the same connection, and an enqueue
is only confirmed once that many replicas hold it (else NotReplicated: the caller answers 503,
the sender retries, at worst a duplicate). Settling needs no WAIT: a settle lost in a failover
leaves the entry pending, to be delivered again, never lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from data_plane import redis_keys as keys
from data_plane.delivery import Delivery
from data_plane.dlq import DLQ_MAXLEN, dead_letter_fields
from data_plane.group_commit import GroupCommit
from data_plane.redis_batch import UNPACK_FIELDS, fail_waiters, pack
from data_plane.redis_connect import RedisClient

Entry = tuple[str, dict[bytes, bytes] | None]  # fields are None for an entry deleted while pending
Fields = Mapping[str, bytes] | Mapping[bytes, bytes]  # Delivery.to_fields() | as read from Redis
Arg = bytes | str | int | float
MAX_BATCH = 256  # enqueues per pipeline: bounds one round trip's size

# A whole group commit in one command: the backlog check and the XADDs in one step, so
# concurrent gateways cannot overshoot. ARGV[1] is the bound, each further argument one
# delivery's fields packed as "<len>:<bytes>" pairs (see _pack): one argument per delivery
# rather than eighteen, because encoding arguments is most of what redis-py spends on an
# enqueue. Returns, per delivery, its entry id, or the depth (an integer) when over the bound.
_ENQUEUE = UNPACK_FIELDS + """
local bound = tonumber(ARGV[1])
local depth = redis.call('XLEN', KEYS[1]) + redis.call('ZCARD', KEYS[2])
local out = {}
for i = 2, #ARGV do
  if depth >= bound then
    out[i - 1] = depth
  else
    out[i - 1] = redis.call('XADD', KEYS[1], '*', unpack(unpack_fields(ARGV[i])))
    depth = depth + 1
  end
end
return out
"""

_DEPTH = "return redis.call('XLEN', KEYS[1]) + redis.call('ZCARD', KEYS[2])"

# ARGV[1] is the group, every further argument an entry id: the acks of a group commit.
_ACK = """
local n = redis.call('XACK', KEYS[1], unpack(ARGV))
redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
return n
"""

# XACK first: if the entry is no longer pending, another consumer (which reclaimed it) has
# already settled it, and scheduling a second retry would only duplicate the delivery.
# The due time is computed from Redis's clock so gateways with skewed clocks agree on it.
_RETRY_LATER = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
local t = redis.call('TIME')
local due = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], due, ARGV[4])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"""

_DEAD_LETTER = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return false end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
redis.call('XDEL', KEYS[1], ARGV[2])
return id
"""

# Scheduled members are the delivery's fields packed as "<len>:<bytes>" pairs (see _pack);
# each due one is XADDed back and removed in the same script. Returns {moved, seconds until
# the next one is due, or ''}, so the caller can sleep exactly that long.
_MOVE_DUE = UNPACK_FIELDS + """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', unpack(unpack_fields(member)))
  redis.call('ZREM', KEYS[1], member)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = ''
if nxt[2] then wait = tostring(tonumber(nxt[2]) - now) end
return {#due, wait}
"""


class NotReplicated(RedisError):
    """Redis applied the enqueue but fewer replicas than asked acknowledged it in time: a
    failover now could lose it, so it is not confirmed (the sender retries: a duplicate)."""


class Backpressure(Exception):
    """The backlog is over its bound: nothing was enqueued; answer 503 with Retry-After."""

    def __init__(self, depth: int, max_backlog: int, retry_after_s: float) -> None:
        super().__init__(f"delivery backlog {depth} is at its bound {max_backlog}")
        self.depth = depth
        self.max_backlog = max_backlog
        self.retry_after_s = retry_after_s


def _bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _pack(fields: Fields) -> bytes:
    return pack([x for k, v in fields.items() for x in (_bytes(k), v)])


def _flat(fields: Fields) -> list[Arg]:
    return [x for kv in fields.items() for x in kv]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _per_entry(replies: list[Any], entries: int) -> list[Any]:
    """The batch script's reply spread to one result per entry (a failed script fails them
    all), followed by the pipeline's other replies (WAIT's)."""
    first, *rest = replies
    if isinstance(first, BaseException):
        return [first] * entries + rest
    return [*first, *rest]


def _replicated(results: list[Any], wanted: int) -> list[Any]:
    """The enqueue results of a pipeline ending with WAIT, entries written but not on
    `wanted` replicas turned into NotReplicated (a full backlog wrote nothing: kept)."""
    *results, acked = results
    if isinstance(acked, BaseException):
        failure: BaseException = acked
    elif int(acked) < wanted:
        failure = NotReplicated(f"{acked} of {wanted} replica(s) acknowledged in time")
    else:
        return results
    return [r if isinstance(r, BaseException | int) else failure for r in results]


class DeliveryQueue:
    """Enqueue side and the atomic state transitions the worker uses.

    `timeout_s` bounds every call (redis-py's own retries included); a call that times out
    may still have been applied, which can only ever cause a duplicate, never a loss.
    """

    def __init__(
        self,
        redis: RedisClient,
        stream: str = keys.STREAM,
        max_backlog: int = 100_000,
        *,
        retry_after_s: float = 5.0,
        dead_letters_maxlen: int = DLQ_MAXLEN,
        timeout_s: float = 5.0,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.scheduled = keys.scheduled_key(stream)
        self.dead_letters = keys.dead_letters_key(stream)
        self.max_backlog = max_backlog
        self.retry_after_s = retry_after_s
        self.dead_letters_maxlen = dead_letters_maxlen
        self.timeout_s = timeout_s
        if wait_replicas and wait_timeout_ms / 1000 >= timeout_s:
            raise ValueError("wait_timeout_ms must end inside the enqueue timeout")
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._enqueue = redis.register_script(_ENQUEUE)
        self._depth = redis.register_script(_DEPTH)
        self._ack = redis.register_script(_ACK)
        self._retry_later = redis.register_script(_RETRY_LATER)
        self._dead_letter = redis.register_script(_DEAD_LETTER)
        self._move_due = redis.register_script(_MOVE_DUE)
        # (packed delivery, its caller's future, the loop time its caller gives up at)
        self._batch: list[tuple[bytes, asyncio.Future[Any], float]] = []
        self._flusher: asyncio.Task[None] | None = None
        # Closing: the entries stay pending, to be reclaimed.
        self._acks: GroupCommit[tuple[str, str], None] = GroupCommit(
            self._ack_all, timeout_s=timeout_s, closing=ConnectionError("queue closed"),
            name="ack flusher")

    async def enqueue(self, delivery: Delivery) -> str:
        """Append the delivery; returns its entry id once Redis has applied the write.

        Raises Backpressure (nothing written) when the backlog is at `max_backlog`; raises a
        Redis/timeout error when the outcome is unknown (the caller answers 5xx and the sender
        retries: at worst a duplicate). See the module docstring for what "durable" means.

        Concurrent calls are group-committed: while one pipeline is in flight the next calls
        gather, and go out together in the next one. Each caller still waits for its own
        entry's reply, so nothing is acknowledged before Redis has it. The caller's
        `timeout_s` is enforced by the flusher, one timer per pipeline rather than one per
        caller: each pipeline ends by the deadline of the oldest entry in it.
        """
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        self._batch.append((delivery.to_packed(), waiter, loop.time() + self.timeout_s))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="enqueue flusher")
        result = await waiter
        if isinstance(result, int):
            raise Backpressure(result, self.max_backlog, self.retry_after_s)
        return _text(result)

    async def _flush(self) -> None:
        reloaded = False
        while self._batch:
            batch, self._batch = self._batch[:MAX_BATCH], self._batch[MAX_BATCH:]
            try:
                # Entries go in order, so the first one's deadline is the earliest.
                # A plain EVALSHA, not the Script object: redis-py would precede every
                # pipeline with a SCRIPT EXISTS round trip (and refuses Script objects in
                # cluster pipelines). NOSCRIPT is handled below.
                command: tuple[Arg, ...] = (
                    "EVALSHA", self._enqueue.sha, 2, self.stream, self.scheduled,
                    self.max_backlog, *(entry[0] for entry in batch))
                async with asyncio.timeout_at(batch[0][2]):
                    if self.wait_replicas:  # WAIT must follow on the same connection
                        async with self.redis.pipeline(transaction=False) as pipe:
                            pipe.execute_command(*command)
                            self._add_wait(pipe)
                            replies = await pipe.execute(raise_on_error=False)
                    else:  # one command: a pipeline's own bookkeeping would cost more
                        try:
                            replies = [await self.redis.execute_command(*command)]
                        except ResponseError as exc:  # NOSCRIPT among them: as a pipeline's
                            replies = [exc]
                results = _per_entry(replies, len(batch))
                if self.wait_replicas:
                    results = _replicated(results, self.wait_replicas)
                if not reloaded and any(isinstance(r, NoScriptError) for r in results):
                    # Only a cluster pipeline lacks redis-py's script preloading (a node
                    # promoted by a failover starts with an empty script cache). The script
                    # did not run: load it and send those entries again, once.
                    reloaded = True
                    async with asyncio.timeout(self.timeout_s):
                        await self.redis.script_load(_ENQUEUE)
                    pairs = list(zip(batch, results, strict=True))
                    self._batch[:0] = [b for b, r in pairs if isinstance(r, NoScriptError)]
                    batch = [b for b, r in pairs if not isinstance(r, NoScriptError)]
                    results = [r for r in results if not isinstance(r, NoScriptError)]
            except asyncio.CancelledError:  # closing: the batch is not known to be queued
                fail_waiters([waiter for _, waiter, _ in batch], ConnectionError("queue closed"))
                raise
            except Exception as exc:
                results = [exc] * len(batch)
            for (_, waiter, _), result in zip(batch, results, strict=True):
                if waiter.done():  # its caller gave up (timeout, cancel)
                    continue
                if isinstance(result, BaseException):
                    waiter.set_exception(result)
                else:
                    waiter.set_result(result)

    def _add_wait(self, pipe: Any) -> None:
        # On the pipeline's own connection: WAIT counts the replicas that have this
        # connection's writes. In a cluster, that is the connection to the stream's node.
        target: dict[str, Any] = {}
        if isinstance(self.redis, aioredis.RedisCluster):
            target["target_nodes"] = self.redis.get_node_from_key(self.stream)
        pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms, **target)

    async def aclose(self) -> None:
        """Stop the flushers; callers still waiting get an error (an enqueue: not queued, they
        answer 5xx; an ack: the entry stays pending, to be reclaimed)."""
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        fail_waiters([w for _, w, _ in self._batch], ConnectionError("queue closed"))
        self._batch.clear()
        await self._acks.aclose()

    async def depth(self) -> int:
        """Deliveries accepted and not yet settled: new, in flight and scheduled for retry."""
        async with asyncio.timeout(self.timeout_s):
            return int(await self._depth(keys=[self.stream, self.scheduled]))

    # --- consumer side -------------------------------------------------------------------

    async def ensure_group(self, group: str) -> None:
        # From "0", not "$": deliveries enqueued before the first worker started are kept.
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.redis.xgroup_create(self.stream, group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, group: str, consumer: str, count: int, block_s: float) -> list[Entry]:
        async with asyncio.timeout(block_s + self.timeout_s):
            reply: Any = await self.redis.xreadgroup(
                group, consumer, {self.stream: ">"}, count=count, block=int(block_s * 1000)
            )
        if not reply:
            return []
        return [(_text(i), f) for _, entries in reply for i, f in entries]

    async def claim(
        self, group: str, consumer: str, min_idle_s: float, cursor: str, count: int
    ) -> tuple[str, list[Entry]]:
        """Take over entries pending longer than `min_idle_s` (their consumer is presumed
        dead); returns the cursor to continue from ("0-0" once the scan wrapped)."""
        async with asyncio.timeout(self.timeout_s):
            reply: Any = await self.redis.xautoclaim(
                self.stream, group, consumer, int(min_idle_s * 1000), cursor, count=count
            )
        # An entry deleted while pending has no id left in Redis 6.2's reply (Redis 7 drops
        # it from the PEL itself); ours are never deleted before being acknowledged.
        return _text(reply[0]), [(_text(i), f or None) for i, f in reply[1] if i is not None]

    async def touch(self, group: str, consumer: str, entry_ids: list[str]) -> None:
        """Reset the idle time of entries still in flight, so a slow delivery is not taken
        for an orphan and delivered twice."""
        async with asyncio.timeout(self.timeout_s):
            ids: list[int | bytes | str | memoryview] = list(entry_ids)
            await self.redis.xclaim(self.stream, group, consumer, 0, ids, justid=True)

    async def ack(self, group: str, entry_id: str) -> None:
        """Settle a delivered entry; returns once Redis has applied it.

        Group-committed (data_plane/group_commit.py): the acks that arrive while one script
        call is in flight go out together in the next, one round trip for all of them. A round
        trip per ack was most of what a worker spent per delivery.
        """
        await self._acks((group, entry_id))

    async def _ack_all(self, batch: list[tuple[str, str]]) -> list[BaseException | None]:
        """One script call per consumer group (the script takes one group's entries)."""
        by_group: dict[str, list[int]] = {}
        for i, (group, _) in enumerate(batch):
            by_group.setdefault(group, []).append(i)
        results: list[BaseException | None] = [None] * len(batch)
        for group, at in by_group.items():
            try:
                await self._ack(keys=[self.stream], args=[group, *(batch[i][1] for i in at)])
            except (RedisError, OSError) as exc:
                for i in at:
                    results[i] = exc
        return results

    async def retry_later(
        self, group: str, entry_id: str, delivery: Delivery, delay_s: float
    ) -> bool:
        """Atomically settle the entry and schedule `delivery` in `delay_s`; False if the entry
        was already settled by another consumer."""
        args: list[Arg] = [group, entry_id, max(0.0, delay_s), _pack(delivery.to_fields())]
        async with asyncio.timeout(self.timeout_s):
            done = await self._retry_later(keys=[self.stream, self.scheduled], args=args)
        return bool(done)

    async def dead_letter(
        self,
        group: str,
        entry_id: str,
        fields: Mapping[bytes, bytes],
        reason: str,
        attempts: int,
        last_error: str,
    ) -> bool:
        """Atomically settle the entry and append it to the dead letters; False if the entry
        was already settled by another consumer."""
        dead = dead_letter_fields(fields, reason, attempts, last_error, time.time())
        args: list[Arg] = [group, entry_id, self.dead_letters_maxlen, *_flat(dead)]
        async with asyncio.timeout(self.timeout_s):
            dead_id = await self._dead_letter(keys=[self.stream, self.dead_letters], args=args)
        return dead_id is not None

    async def move_due(self, limit: int = 100) -> tuple[int, float | None]:
        """Move up to `limit` due retries back onto the stream; (moved, seconds until the next
        scheduled retry is due, or None if there is none)."""
        async with asyncio.timeout(self.timeout_s):
            moved, wait = await self._move_due(keys=[self.scheduled, self.stream], args=[limit])
        return int(moved), float(wait) if wait else None

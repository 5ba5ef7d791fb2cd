"""A relay channel's durable buffer in Redis: a stream read by one consumer group.

Every connection of a connector is a consumer of the channel's group (`RELAY_GROUP`), so
several connectors share the work and a message is in exactly one place at any moment (each
arrow one atomic step):

    append ──> stream (new) ──take──> pending, owned by a session's consumer
    pending ──ack──> gone (its local destination answered 2xx)
    pending ──nack, failures < max──> pending, parked, claimable after a backoff delay
    pending ──nack, failures = max──> the channel's dead-letter stream
    pending ──session ends (release)──> pending, parked, claimable at once
    pending, idle >= visibility timeout ──take (XAUTOCLAIM)──> pending, another consumer

The visibility timeout is the idle time of a pending entry: `take` claims entries idle that
long before it reads new ones, so a message unacknowledged by a dead connection (or gateway)
goes to the next connection. Releasing and retry delays reuse it: an entry moved to the parked
consumer with `IDLE visibility - delay` becomes claimable `delay` seconds later. Failures are
counted in a hash per channel, not by Redis's delivery counter, which also counts
redeliveries after a disconnect (not a failure of the destination).

A session's in-flight window is its consumer's pending entries, as Redis counts them, so it
holds across gateway processes (an ack may reach another gateway than the stream).

Acked entries are XACKed and XDELed together, so XLEN is the number of messages not yet
acknowledged, which `append` bounds. Durability of an append is Redis's (see queue.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError
from redis.typing import EncodableT

from data_plane import redis_keys as keys
from data_plane.delivery import Delivery
from data_plane.metrics import RelayMetrics
from data_plane.redis_connect import RedisClient

if TYPE_CHECKING:
    from data_plane.clients import Clients

log = logging.getLogger(__name__)

DEAD_LETTERS_MAXLEN = 100_000  # per channel, approximate (MAXLEN ~): the oldest go first
MAX_WINDOW = 1000
REASON_EXHAUSTED = "local delivery failed max_attempts times"
_MAX_ERROR = 500

_APPEND = """
local n = redis.call('XLEN', KEYS[1])
if n >= tonumber(ARGV[1]) then return n end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
"""

# Returns {free slots left, id1, fields1, failures1, id2, ...}: entries claimed after the
# visibility timeout first (oldest first), then new ones, never more than the window allows.
_TAKE = """
local group, consumer, idle = ARGV[1], ARGV[2], ARGV[4]
local window = tonumber(ARGV[3])
local mine = #redis.call('XPENDING', KEYS[1], group, '-', '+', window, consumer)
local stale = #redis.call('XPENDING', KEYS[1], group, 'IDLE', idle, '-', '+', window, consumer)
local free = window - (mine - stale)
local out = {}
local cursor, rounds = '0-0', 0
while free - #out > 0 and rounds < 10 do
  local claimed = redis.call('XAUTOCLAIM', KEYS[1], group, consumer, idle, cursor,
                             'COUNT', free - #out)
  for _, e in ipairs(claimed[2]) do
    if e[2] then out[#out + 1] = e else redis.call('XACK', KEYS[1], group, e[1]) end
  end
  cursor, rounds = claimed[1], rounds + 1
  if cursor == '0-0' then break end
end
if free - #out > 0 then
  local new = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', free - #out,
                         'STREAMS', KEYS[1], '>')
  if new then
    for _, e in ipairs(new[1][2]) do out[#out + 1] = e end
  end
end
local reply = {math.max(free - #out, 0)}
for _, e in ipairs(out) do
  reply[#reply + 1] = e[1]
  reply[#reply + 1] = e[2]
  reply[#reply + 1] = redis.call('HGET', KEYS[2], e[1]) or '0'
end
return reply
"""

# Only entries still pending are settled: an id that was never delivered, or was settled by
# another connection already, is left alone (an ack must never delete an unread message).
_ACK = """
local n = 0
for i = 2, #ARGV do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    redis.call('XDEL', KEYS[1], ARGV[i])
    redis.call('HDEL', KEYS[2], ARGV[i])
    n = n + 1
  end
end
return n
"""

# -1: not pending (settled meanwhile); 0: dead-lettered; n > 0: failures so far, retried.
_NACK = """
local group, id = ARGV[1], ARGV[2]
if #redis.call('XPENDING', KEYS[1], group, id, id, 1) == 0 then return -1 end
local n = redis.call('HINCRBY', KEYS[2], id, 1)
if n < tonumber(ARGV[3]) then
  redis.call('XCLAIM', KEYS[1], group, ARGV[5], 0, id, 'IDLE', ARGV[4], 'JUSTID')
  return n
end
local found = redis.call('XRANGE', KEYS[1], id, id)
redis.call('XACK', KEYS[1], group, id)
redis.call('HDEL', KEYS[2], id)
if #found == 0 then return -1 end
local f = found[1][2]
for _, kv in ipairs({{'dlq_reason', ARGV[9]}, {'dlq_attempts', tostring(n)},
                     {'dlq_last_error', ARGV[7]}, {'dlq_failed_at', ARGV[8]}}) do
  f[#f + 1] = kv[1]
  f[#f + 1] = kv[2]
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', unpack(f))
redis.call('XDEL', KEYS[1], id)
return 0
"""

_RELEASE = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', ARGV[5], ARGV[2])
for _, e in ipairs(pending) do
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, e[1], 'IDLE', ARGV[4], 'JUSTID')
end
if #pending < tonumber(ARGV[5]) then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return #pending
"""


class RelayFull(Exception):
    """The channel holds `max_messages` unacknowledged messages: nothing was appended."""

    def __init__(self, depth: int, max_messages: int) -> None:
        super().__init__(f"relay buffer holds {depth} messages, its bound is {max_messages}")
        self.depth = depth
        self.max_messages = max_messages


@dataclass(frozen=True, slots=True)
class Taken:
    """A message handed to a session: its entry id (the ack id), the delivery, its failures."""

    entry_id: str
    delivery: Delivery
    failures: int


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _taken(entry_id: Any, fields: Any, failures: Any) -> Taken | None:
    if isinstance(fields, list):  # as Lua returns it: a flat list
        fields = dict(zip(fields[::2], fields[1::2], strict=True))
    try:
        return Taken(_text(entry_id), Delivery.from_fields(fields), int(failures or 0))
    except (KeyError, ValueError) as exc:
        # Written by hand into our key: it cannot be delivered; the caller acks it away.
        log.warning("relay entry %s is undecodable: %r", _text(entry_id), exc)
        return None


def attach(clients: Clients, store: RelayStore | None) -> None:
    """Make `store` the destination of the `relay` steps run with `clients`.

    Modules receive only the process's `Clients`; the relay writes to the gateway's own Redis,
    so the store travels on `Clients.relay_store`.
    """
    clients.relay_store = store


def attached(clients: Clients) -> RelayStore | None:
    return clients.relay_store


class RelayStore:
    """The Redis side of every relay channel of one gateway process.

    `timeout_s` bounds every call; a call that times out may still have been applied, which
    can only cause a duplicate delivery, never a loss.
    """

    def __init__(self, redis: RedisClient, metrics: RelayMetrics | None = None, *,
                 timeout_s: float = 5.0,
                 dead_letters_maxlen: int = DEAD_LETTERS_MAXLEN) -> None:
        self.redis = redis
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.dead_letters_maxlen = dead_letters_maxlen
        self._append = redis.register_script(_APPEND)
        self._take = redis.register_script(_TAKE)
        self._ack = redis.register_script(_ACK)
        self._nack = redis.register_script(_NACK)
        self._release = redis.register_script(_RELEASE)

    # -- the relay step -------------------------------------------------------------------

    async def append(self, namespace: str, channel: str, delivery: Delivery,
                     max_messages: int) -> str:
        """Append `delivery` to the channel; its entry id once Redis applied the write.

        Raises RelayFull (nothing written) at `max_messages`, a Redis or timeout error when
        the outcome is unknown.
        """
        args: list[EncodableT] = [max_messages,
                                  *(x for kv in delivery.to_fields().items() for x in kv)]
        async with asyncio.timeout(self.timeout_s):
            result = await self._append(keys=[keys.relay_stream(namespace, channel)], args=args)
        if isinstance(result, int):
            if self.metrics is not None:
                self.metrics.refused_full.labels(namespace).inc()
            raise RelayFull(result, max_messages)
        if self.metrics is not None:
            self.metrics.appended.labels(namespace).inc()
        return _text(result)

    # -- sessions -------------------------------------------------------------------------

    async def ensure_group(self, namespace: str, channel: str) -> None:
        # From "0": messages appended before any connector existed are delivered.
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.redis.xgroup_create(keys.relay_stream(namespace, channel),
                                               keys.RELAY_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def take(self, namespace: str, channel: str, consumer: str, window: int,
                   visibility_s: float) -> tuple[int, list[Taken]]:
        """Messages for `consumer`, up to its free window: claimed ones (idle past the
        visibility timeout: released, retried or abandoned) first, then new ones. Returns
        the slots still free and the messages."""
        args: list[EncodableT] = [keys.RELAY_GROUP, consumer, min(window, MAX_WINDOW),
                                  int(visibility_s * 1000)]
        stream = keys.relay_stream(namespace, channel)
        async with asyncio.timeout(2 * self.timeout_s):
            reply = await self._with_group(namespace, channel, lambda: self._take(
                keys=[stream, keys.relay_attempts(namespace, channel)], args=args))
        free, rest = int(reply[0]), reply[1:]
        out, broken = [], []
        for i in range(0, len(rest), 3):
            taken = _taken(rest[i], rest[i + 1], rest[i + 2])
            if taken is None:
                broken.append(_text(rest[i]))
            else:
                out.append(taken)
        if broken:
            await self.ack(namespace, channel, broken)
        if self.metrics is not None:
            again = sum(1 for t in out if t.failures)
            if again:
                self.metrics.redelivered.labels(namespace).inc(again)
        return free, out

    async def read_new(self, namespace: str, channel: str, consumer: str, count: int,
                       block_s: float) -> list[Taken]:
        """New messages for `consumer`, waiting up to `block_s` for the first one."""
        stream = keys.relay_stream(namespace, channel)

        async def read() -> Any:
            return await self.redis.xreadgroup(keys.RELAY_GROUP, consumer, {stream: ">"},
                                               count=count, block=max(1, int(block_s * 1000)))

        async with asyncio.timeout(block_s + 2 * self.timeout_s):
            reply = await self._with_group(namespace, channel, read)
        out = []
        for _, entries in reply or ():
            for entry_id, fields in entries:
                taken = _taken(entry_id, fields, 0)
                if taken is None:
                    await self.ack(namespace, channel, [_text(entry_id)])
                else:
                    out.append(taken)
        return out

    async def ack(self, namespace: str, channel: str, entry_ids: list[str]) -> int:
        """Settle the entries still pending among `entry_ids`; how many were."""
        if not entry_ids:
            return 0
        async with asyncio.timeout(self.timeout_s):
            n = int(await self._ack(
                keys=[keys.relay_stream(namespace, channel),
                      keys.relay_attempts(namespace, channel)],
                args=[keys.RELAY_GROUP, *entry_ids]))
        if self.metrics is not None and n:
            self.metrics.acked.labels(namespace).inc(n)
        return n

    async def nack(self, namespace: str, channel: str, entry_id: str, error: str, *,
                   max_attempts: int, visibility_s: float, delay_s: float) -> int:
        """Count a local delivery failure: the message is retried after `delay_s` (returns
        the failures so far), dead-lettered once it failed `max_attempts` times (returns 0),
        or was not pending any more (returns -1)."""
        stream = keys.relay_stream(namespace, channel)
        idle_ms = max(0, int((visibility_s - min(delay_s, visibility_s)) * 1000))
        args: list[EncodableT] = [
                keys.RELAY_GROUP, entry_id, max_attempts, idle_ms, keys.RELAY_PARKED,
                self.dead_letters_maxlen, error[:_MAX_ERROR], repr(time.time()),
                REASON_EXHAUSTED]
        async with asyncio.timeout(self.timeout_s):
            n = int(await self._nack(
                keys=[stream, keys.relay_attempts(namespace, channel),
                      keys.dead_letters_key(stream)], args=args))
        if self.metrics is not None and n >= 0:
            self.metrics.failed.labels(namespace).inc()
            if n == 0:
                self.metrics.dead_lettered.labels(namespace).inc()
        return n

    async def failures(self, namespace: str, channel: str, entry_id: str) -> int:
        """Local delivery failures of a pending message so far."""
        async with asyncio.timeout(self.timeout_s):
            n = await self.redis.hget(keys.relay_attempts(namespace, channel), entry_id)
        return int(n or 0)

    async def release(self, namespace: str, channel: str, consumer: str,
                      visibility_s: float) -> int:
        """A session ended: its unacknowledged messages become claimable at once, and its
        consumer is removed. How many it held."""
        args: list[EncodableT] = [keys.RELAY_GROUP, consumer, keys.RELAY_PARKED,
                                  int(visibility_s * 1000), MAX_WINDOW]
        async with asyncio.timeout(self.timeout_s):
            return int(await self._release(keys=[keys.relay_stream(namespace, channel)],
                                           args=args))

    async def sweep(self, namespace: str, channel: str, idle_s: float) -> int:
        """Remove consumers that hold nothing and were not seen for `idle_s`: sessions of
        gateways that died (their messages were claimed by others meanwhile) and long-poll
        sessions that went away."""
        stream = keys.relay_stream(namespace, channel)
        async with asyncio.timeout(self.timeout_s):
            consumers: Any = await self.redis.xinfo_consumers(stream, keys.RELAY_GROUP)
            removed = 0
            for c in consumers:
                name = _text(c["name"])
                if name != keys.RELAY_PARKED and not c["pending"] and c["idle"] > idle_s * 1000:
                    await self.redis.xgroup_delconsumer(stream, keys.RELAY_GROUP, name)
                    removed += 1
        return removed

    async def depth(self, namespace: str, channel: str) -> int:
        """Messages appended and not yet acknowledged (new, in flight or waiting to retry)."""
        async with asyncio.timeout(self.timeout_s):
            return int(await self.redis.xlen(keys.relay_stream(namespace, channel)))

    async def _with_group(self, namespace: str, channel: str, call: Any) -> Any:
        """`call()`, creating the consumer group first if Redis lost it (NOGROUP)."""
        try:
            return await call()
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
        await self.ensure_group(namespace, channel)
        return await call()

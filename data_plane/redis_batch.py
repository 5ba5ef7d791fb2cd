"""XADDs to one Redis from concurrent deliveries, sent together.

    entry_id = await appender.append("events", 10_000, [b"id", b"...", b"body", b"..."])

Each call waits for its own reply (or its own error), so nothing is reported delivered before
Redis applied it; but the appends that arrive while one is in flight go out together in the
next round trip, as one script call whose arguments are the entries packed "<len>:<bytes>"
(as the delivery queue packs its enqueues). redis-py spends far more per command and per
argument (encoding, a connection checkout, a timeout, an awaited reply) than Redis does: a
worker delivering to a Redis stream one XADD at a time spent most of its time there, and a
pipeline of XADDs still paid for every command and every field.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

MAX_BATCH = 256  # appends per script call: bounds one round trip's size

# Lua: the fields packed by `pack` back into a list (a script's prelude).
UNPACK_FIELDS = """
local function unpack_fields(s)
  local out, pos = {}, 1
  while pos <= #s do
    local colon = string.find(s, ':', pos, true)
    local len = tonumber(string.sub(s, pos, colon - 1))
    out[#out + 1] = string.sub(s, colon + 1, colon + len)
    pos = colon + len + 1
  end
  return out
end
"""

# KEYS[i] is entry i's stream (declared, as Redis wants every key a script touches);
# ARGV[2i-1] its MAXLEN ('' for none), ARGV[2i] its fields packed. Each XADD runs under pcall:
# an entry whose stream has the wrong type fails alone, with its error in its place.
_APPEND = UNPACK_FIELDS + """
local out = {}
for i = 1, #KEYS do
  local maxlen = ARGV[2 * i - 1]
  local fields = unpack_fields(ARGV[2 * i])
  if maxlen == '' then
    out[i] = redis.pcall('XADD', KEYS[i], '*', unpack(fields))
  else
    out[i] = redis.pcall('XADD', KEYS[i], 'MAXLEN', '~', maxlen, '*', unpack(fields))
  end
end
return out
"""


def pack(fields: Sequence[bytes]) -> bytes:
    """Field names and values as the script reads them: "<len>:<bytes>" each."""
    return b"".join(b"%d:%s" % (len(f), f) for f in fields)


class StreamAppender:
    def __init__(self, client: aioredis.Redis, timeout_s: float) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self._script = client.register_script(_APPEND)
        self._pending: list[tuple[str, bytes, bytes, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def append(self, stream: str, maxlen: int | None, fields: Sequence[bytes]) -> Any:
        """XADD `fields` (names and values, alternating) to `stream`, trimmed approximately
        to `maxlen`; the entry id, or the error raised (a connection error fails every
        append of the round trip it was in: none of them is known to have been applied)."""
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        trim = b"" if maxlen is None else b"%d" % maxlen
        self._pending.append((stream, trim, pack(fields), waiter))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="redis stream appends")
        async with asyncio.timeout(self.timeout_s * 2):  # its round trip, and the one before
            return await waiter

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            args: list[bytes] = []
            for _, trim, packed, _ in batch:
                args += (trim, packed)
            try:
                async with asyncio.timeout(self.timeout_s):
                    replies: list[Any] = await self._script(
                        keys=[stream for stream, *_ in batch], args=args)
            except asyncio.CancelledError:
                fail_waiters([w for *_, w in batch], ConnectionError("Redis client closed"))
                raise
            except Exception as exc:
                replies = [exc] * len(batch)
            for (*_, waiter), reply in zip(batch, replies, strict=True):
                if waiter.done():  # its caller gave up
                    continue
                if isinstance(reply, BaseException):
                    waiter.set_exception(reply)
                else:
                    waiter.set_result(reply)

    async def aclose(self) -> None:
        """Stop sending; callers still waiting get an error (their entries were not sent)."""
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        fail_waiters([w for *_, w in self._pending], ConnectionError("Redis client closed"))
        self._pending.clear()


def fail_waiters(waiters: list[asyncio.Future[Any]], error: BaseException) -> None:
    """Complete every waiter still waiting with `error` (a group commit that cannot finish)."""
    for waiter in waiters:
        if not waiter.done():
            waiter.set_exception(error)

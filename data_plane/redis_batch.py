"""XADDs to one Redis from concurrent deliveries, sent together.

    entry_id = await appender.append("events", 10_000, [b"id", b"...", b"body", b"..."])

Each call waits for its own reply (or its own error), so nothing is reported delivered before
Redis applied it; but the appends that arrive while one is in flight go out together in the
next round trip (data_plane/group_commit.py), as one script call whose arguments are the
entries packed "<len>:<bytes>" (as the delivery queue packs its enqueues). redis-py spends far
more per command and per argument (encoding, a connection checkout, a timeout, an awaited
reply) than Redis does: a worker delivering to a Redis stream one XADD at a time spent most of
its time there, and a pipeline of XADDs still paid for every command and every field.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from data_plane.group_commit import GroupCommit

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
        self._script = client.register_script(_APPEND)
        # Closing: their entries were not sent.
        self._append: GroupCommit[tuple[str, bytes, bytes], Any] = GroupCommit(
            self._append_all, timeout_s=timeout_s,
            closing=ConnectionError("Redis client closed"), name="redis stream appends")

    async def append(self, stream: str, maxlen: int | None, fields: Sequence[bytes]) -> Any:
        """XADD `fields` (names and values, alternating) to `stream`, trimmed approximately
        to `maxlen`; the entry id, or the error raised (a connection error fails every
        append of the round trip it was in: none of them is known to have been applied)."""
        trim = b"" if maxlen is None else b"%d" % maxlen
        return await self._append((stream, trim, pack(fields)))

    async def _append_all(self, batch: list[tuple[str, bytes, bytes]]) -> list[Any]:
        args: list[bytes] = []
        for _, trim, packed in batch:
            args += (trim, packed)
        replies: list[Any] = await self._script(keys=[stream for stream, _, _ in batch],
                                                args=args)
        return replies

    async def aclose(self) -> None:
        """Stop sending; callers still waiting get an error (their entries were not sent)."""
        await self._append.aclose()


def fail_waiters(waiters: list[asyncio.Future[Any]], error: BaseException) -> None:
    """Complete every waiter still waiting with `error` (a group commit that cannot finish)."""
    for waiter in waiters:
        if not waiter.done():
            waiter.set_exception(error)

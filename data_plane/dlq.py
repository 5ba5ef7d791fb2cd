"""Dead letters: deliveries that ran out of attempts, failed for good, or lost their webhook.

A dead letter is a stream entry holding the delivery's own fields plus `dlq_*` fields (reason,
attempts, last error, time). The stream is capped with `MAXLEN ~ DLQ_MAXLEN` (approximate
trimming is O(1) amortised): past the cap the *oldest* dead letters are evicted, so an
operator who wants to keep everything must drain or replay well before 1,000,000 entries.
The worker writes dead letters (see `DeliveryQueue.dead_letter`); this module reads them.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from data_plane import redis_keys as keys
from data_plane.delivery import Delivery
from data_plane.redis_connect import RedisClient

log = logging.getLogger(__name__)

DLQ_MAXLEN = 1_000_000
_PAGE = 500

# Copy the entry back to the main stream without its dlq_* fields and with a fresh attempt
# count, then delete it, in one step: a crash cannot lose it nor replay it twice.
_REPLAY = """
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then return false end
local src, out = found[1][2], {}
for i = 1, #src, 2 do
  local k, v = src[i], src[i + 1]
  if string.sub(k, 1, 4) ~= 'dlq_' then
    if k == 'attempt' then v = '0' end
    out[#out + 1] = k
    out[#out + 1] = v
  end
end
local id = redis.call('XADD', KEYS[2], '*', unpack(out))
redis.call('XDEL', KEYS[1], ARGV[1])
return id
"""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    delivery: Delivery
    reason: str
    attempts: int
    last_error: str
    failed_at: float


def dead_letter_fields(
    fields: Mapping[bytes, bytes], reason: str, attempts: int, last_error: str, failed_at: float
) -> dict[bytes, bytes]:
    return {
        **fields,
        b"dlq_reason": reason.encode(),
        b"dlq_attempts": str(attempts).encode(),
        b"dlq_last_error": last_error.encode(errors="replace"),
        b"dlq_failed_at": repr(failed_at).encode(),
    }


def _parse(entry_id: bytes, fields: Mapping[bytes, bytes]) -> DeadLetter:
    return DeadLetter(
        id=entry_id.decode(),
        delivery=Delivery.from_fields(fields),
        reason=fields.get(b"dlq_reason", b"").decode(errors="replace"),
        attempts=int(fields.get(b"dlq_attempts", b"0")),
        last_error=fields.get(b"dlq_last_error", b"").decode(errors="replace"),
        failed_at=float(fields.get(b"dlq_failed_at", b"0")),
    )


class DeadLetters:
    """Read, replay and delete the dead letters of one queue (`stream`)."""

    def __init__(
        self, redis: RedisClient, stream: str = keys.STREAM, *, timeout_s: float = 5.0
    ) -> None:
        self._redis = redis
        self._stream = stream
        self._dead = keys.dead_letters_key(stream)
        self._timeout_s = timeout_s
        self._replay = redis.register_script(_REPLAY)

    async def _page(self, after: str | None, last: str = "+") -> builtins.list[Any]:
        """Up to _PAGE (entry id, fields) pairs after `after`, up to and including `last`."""
        start = "-" if after is None else f"({after}"  # "(" = exclusive, Redis >= 6.2
        async with asyncio.timeout(self._timeout_s):
            page: Any = await self._redis.xrange(self._dead, start, last, count=_PAGE)
        return page or []

    async def list(
        self, namespace: str | None = None, limit: int = 100, after: str | None = None
    ) -> builtins.list[DeadLetter]:
        """Up to `limit` dead letters, oldest first, after entry id `after` (for paging).

        A namespace filter scans the stream page by page; the scan ends at the stream's end,
        so it is bounded by DLQ_MAXLEN.
        """
        found: builtins.list[DeadLetter] = []
        want = namespace.encode() if namespace is not None else None
        while len(found) < limit:
            page = await self._page(after)
            for entry_id, fields in page:
                after = entry_id.decode()
                if want is not None and fields.get(b"namespace") != want:
                    continue
                try:
                    found.append(_parse(entry_id, fields))
                except (KeyError, ValueError) as exc:  # hand-written entries; deletable by id
                    log.warning("dead letter %s is undecodable: %r", after, exc)
                    continue
                if len(found) == limit:
                    break
            if len(page) < _PAGE:
                break
        return found

    async def replay(self, entry_id: str) -> str:
        """Put one dead letter back on the main stream with attempt 0; its new entry id.

        KeyError if no such dead letter. The main queue's backlog bound is not applied: a
        replay is an operator's explicit decision.
        """
        async with asyncio.timeout(self._timeout_s):
            new_id = await self._replay(keys=[self._dead, self._stream], args=[entry_id])
        if new_id is None:
            raise KeyError(entry_id)
        return new_id.decode() if isinstance(new_id, bytes) else str(new_id)

    async def replay_all(self, namespace: str | None = None) -> int:
        """Replay every dead letter (of `namespace`) present when called; how many."""
        async with asyncio.timeout(self._timeout_s):
            newest: Any = await self._redis.xrevrange(self._dead, "+", "-", count=1)
        if not newest:
            return 0
        # Stop at the newest entry seen now: what fails again while we replay is not chased.
        last = newest[0][0].decode()
        want = namespace.encode() if namespace is not None else None
        replayed, after = 0, None
        while True:
            page = await self._page(after, last)
            for entry_id, fields in page:
                after = entry_id.decode()
                if want is None or fields.get(b"namespace") == want:
                    try:
                        await self.replay(after)
                        replayed += 1
                    except KeyError:  # replayed or deleted concurrently
                        pass
            if len(page) < _PAGE:
                return replayed

    async def delete(self, entry_id: str) -> bool:
        async with asyncio.timeout(self._timeout_s):
            return bool(await self._redis.xdel(self._dead, entry_id))

    async def size(self) -> int:
        async with asyncio.timeout(self._timeout_s):
            return int(await self._redis.xlen(self._dead))

"""Token-bucket rate limits shared by every gateway through Redis, with a local fallback.

The shared bucket is one hash per key, updated by one Lua script (atomic, one round trip;
redis-py's register_script sends EVALSHA and falls back to EVAL on NOSCRIPT, e.g. after a
Redis restart). The checks of concurrent requests go out together, one script call per batch
(data_plane/group_commit.py), each bucket taken in the order its checks came; on Redis
Cluster, one call per hash slot of the batch.

Refill uses Redis's own clock (TIME inside the script), not the gateways': one clock for
everyone means a gateway whose clock runs ahead cannot refill buckets early and
one running behind cannot see time go backwards. The key expires once the bucket would be
full again, since a missing key and a full bucket mean the same.

When Redis is slow (over `timeout_s`) or unreachable the gateway falls back to an in-process
bucket per key and reports `degraded`; each gateway then enforces the whole limit on its own,
so a fleet of N lets through up to N times the limit until Redis is back. Redis is tried again
after a growing pause, by one request at a time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from redis.asyncio import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisError

from data_plane import redis_keys as keys
from data_plane.group_commit import GroupCommit
from data_plane.redis_connect import RedisClient

log = logging.getLogger(__name__)

Clock = Callable[[], float]

# One bucket per key: KEYS[i] with ARGV[4i-3..4i] rate/s, burst, now ('' = Redis TIME), cost.
# Returns {allowed, retry_s} for each key, in order; a key named twice is taken twice, in order.
# The retry delay is returned as a string: Lua numbers become integers in a Redis reply
# (numbers passed to redis.call keep full precision: Redis formats them with %.17g).
_TOKEN_BUCKET = """
local clock
local out = {}
for i, key in ipairs(KEYS) do
  local j = (i - 1) * 4
  local rate, burst, cost = tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2]), tonumber(ARGV[j + 4])
  local now = tonumber(ARGV[j + 3])
  if not now then
    if not clock then
      local t = redis.call('TIME')
      clock = tonumber(t[1]) + tonumber(t[2]) / 1000000
    end
    now = clock
  end
  local b = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens, ts = tonumber(b[1]) or burst, tonumber(b[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
  local allowed, retry = 0, (cost - tokens) / rate
  if tokens >= cost then
    tokens, allowed, retry = tokens - cost, 1, 0
  end
  redis.call('HSET', key, 'tokens', tokens, 'ts', now)
  redis.call('PEXPIRE', key, math.ceil((burst - tokens) / rate * 1000) + 1000)
  out[#out + 1] = allowed
  out[#out + 1] = tostring(retry)
end
return out
"""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after_s: float  # 0 when allowed


def default_burst(rate: float, burst: int | None) -> int:
    return burst if burst is not None else max(1, math.ceil(rate))


class LocalTokenBucket:
    """One in-process token bucket; starts full."""

    __slots__ = ("_clock", "_tokens", "_updated", "burst", "rate")

    def __init__(self, rate: float, burst: int, clock: Clock = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()

    def take(self, cost: float = 1.0) -> Decision:
        now = self._clock()
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        self._updated = now
        if self._tokens >= cost:
            self._tokens -= cost
            return Decision(True, 0.0)
        return Decision(False, (cost - self._tokens) / self.rate)


class LocalBuckets:
    """Buckets by key, least recently used evicted past `max_keys` (an evicted key simply
    starts again with a full bucket)."""

    def __init__(self, max_keys: int = 10_000, clock: Clock = time.monotonic) -> None:
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, LocalTokenBucket] = OrderedDict()

    def check(self, key: str, rate: float, burst: int, cost: float = 1.0) -> Decision:
        bucket = self._buckets.get(key)
        if bucket is None or bucket.rate != rate or bucket.burst != burst:
            bucket = LocalTokenBucket(rate, burst, self._clock)  # new or reconfigured limit
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        self._buckets.move_to_end(key)
        return bucket.take(cost)

    def __len__(self) -> int:
        return len(self._buckets)


class _Ask(NamedTuple):
    key: str  # the bucket's
    args: tuple[float, int, str, float]  # the script's for it


_Answer = tuple[int, bytes] | None  # (allowed, retry_s) from the script; None: closing


class RateLimiter:
    """`check(key, rate, burst)` against the bucket shared through Redis, or the local one
    while Redis is unavailable (or when `redis` is None: a single-gateway setup)."""

    def __init__(
        self,
        redis: RedisClient | None,
        *,
        timeout_s: float = 0.075,
        recheck_s: float = 1.0,
        max_recheck_s: float = 30.0,
        max_local_keys: int = 10_000,
        clock: Clock = time.monotonic,
    ) -> None:
        self._redis = redis
        self._script = redis.register_script(_TOKEN_BUCKET) if redis is not None else None
        self._local = LocalBuckets(max_local_keys, clock)
        self._clock = clock
        self.recheck_s = recheck_s
        self.max_recheck_s = max_recheck_s
        self._failures = 0
        self._retry_at = 0.0
        self._degraded = False
        self._take: GroupCommit[_Ask, _Answer] = GroupCommit(
            self._take_all, timeout_s=timeout_s, closing=None, name="rate limit flusher")

    @property
    def degraded(self) -> bool:
        """True while limits are enforced per gateway because Redis is unavailable."""
        return self._degraded

    async def check(
        self, key: str, rate: float, burst: int | None = None, cost: float = 1.0
    ) -> Decision:
        burst = default_burst(rate, burst)
        if self._script is None:
            return self._local.check(key, rate, burst, cost)
        now = self._clock()
        if self._degraded:
            if now < self._retry_at:
                return self._local.check(key, rate, burst, cost)
            # Push the next try out first so concurrent requests do not all probe Redis.
            self._retry_at = now + self._pause()
        try:
            answer = await self._take(_Ask(keys.rate_limit_key(key), (rate, burst, "", cost)))
        except (RedisError, OSError, TimeoutError) as exc:
            self._fail(exc, now)
            return self._local.check(key, rate, burst, cost)
        if answer is None:  # closing: no answer is coming
            return self._local.check(key, rate, burst, cost)
        allowed, retry = answer
        if self._degraded:
            log.info("rate limiter: Redis is back, limits are shared again")
        self._degraded = False
        self._failures = 0
        return Decision(bool(allowed), max(0.0, float(retry)))

    async def aclose(self) -> None:
        """Stop the flusher; checks still waiting are decided locally."""
        await self._take.aclose()

    async def _take_all(self, asks: list[_Ask]) -> list[_Answer | BaseException]:
        assert self._script is not None
        answers: list[_Answer | BaseException] = [None] * len(asks)

        async def call(group: list[int]) -> None:
            assert self._script is not None
            try:
                reply = await self._script(keys=[asks[i].key for i in group],
                                           args=[v for i in group for v in asks[i].args])
            except (RedisError, OSError) as exc:
                for i in group:
                    answers[i] = exc
                return
            for n, i in enumerate(group):
                answers[i] = (reply[2 * n], reply[2 * n + 1])

        await asyncio.gather(*(call(group) for group in self._groups(asks)))
        return answers

    def _groups(self, asks: list[_Ask]) -> list[list[int]]:
        """The asks of each script call, by index: all of them, or on a cluster one call per
        hash slot (a script may only touch keys of one slot)."""
        if not isinstance(self._redis, RedisCluster):
            return [list(range(len(asks)))]
        by_slot: dict[int, list[int]] = {}
        for i, ask in enumerate(asks):
            by_slot.setdefault(key_slot(ask.key.encode()), []).append(i)
        return list(by_slot.values())

    def _pause(self) -> float:
        # Equal jitter (half fixed, half random): never ~0, so a dead Redis is not hit, and
        # each try can cost a request up to timeout_s.
        pause = min(self.max_recheck_s, self.recheck_s * 2.0 ** min(self._failures, 16))
        return pause / 2 + random.uniform(0, pause / 2)

    def _fail(self, exc: BaseException, now: float) -> None:
        if not self._degraded:
            log.warning("rate limiter: Redis unavailable (%r); limiting per gateway", exc)
        self._degraded = True
        self._retry_at = now + self._pause()
        self._failures += 1

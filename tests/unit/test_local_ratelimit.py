"""The in-process token bucket (the fallback when Redis is unavailable), with a fake clock."""

from __future__ import annotations

import pytest

from data_plane.ratelimit import (
    Decision,
    LocalBuckets,
    LocalTokenBucket,
    RateLimiter,
    default_burst,
)


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refused_with_retry_after() -> None:
    clock = Clock()
    bucket = LocalTokenBucket(rate=2, burst=3, clock=clock)
    assert [bucket.take().allowed for _ in range(3)] == [True, True, True]
    refused = bucket.take()
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(0.5)


def test_refills_at_rate_and_never_beyond_burst() -> None:
    clock = Clock()
    bucket = LocalTokenBucket(rate=2, burst=3, clock=clock)
    for _ in range(3):
        bucket.take()
    clock.now += 0.5
    assert bucket.take() == Decision(True, 0.0)
    assert not bucket.take().allowed
    clock.now += 3600
    assert sum(bucket.take().allowed for _ in range(10)) == 3


def test_cost_and_clock_going_backwards() -> None:
    clock = Clock()
    bucket = LocalTokenBucket(rate=1, burst=5, clock=clock)
    assert bucket.take(4).allowed
    clock.now -= 10  # a non-monotonic clock must not drain or overfill the bucket
    refused = bucket.take(3)
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(2.0)


def test_invalid_bucket_rejected() -> None:
    with pytest.raises(ValueError):
        LocalTokenBucket(0, 1)
    with pytest.raises(ValueError):
        LocalTokenBucket(1, 0)


def test_buckets_are_per_key_bounded_and_follow_new_limits() -> None:
    clock = Clock()
    buckets = LocalBuckets(max_keys=2, clock=clock)
    assert buckets.check("a", 1, 1).allowed
    assert not buckets.check("a", 1, 1).allowed
    assert buckets.check("b", 1, 1).allowed
    assert buckets.check("c", 1, 1).allowed
    assert len(buckets) == 2  # "a" evicted
    assert buckets.check("a", 1, 1).allowed  # a fresh, full bucket
    assert buckets.check("c", 1, 2).allowed  # limit changed: a bucket with the new burst


def test_default_burst() -> None:
    assert default_burst(0.5, None) == 1
    assert default_burst(7.2, None) == 8
    assert default_burst(100, 3) == 3


async def test_limiter_without_redis_is_local_and_not_degraded() -> None:
    clock = Clock()
    limiter = RateLimiter(None, clock=clock)
    results = [await limiter.check("k", rate=1, burst=2) for _ in range(3)]
    assert [r.allowed for r in results] == [True, True, False]
    assert results[-1].retry_after_s == pytest.approx(1.0)
    assert not limiter.degraded

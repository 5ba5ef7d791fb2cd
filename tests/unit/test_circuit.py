"""The circuit breaker's state machine, driven by a fake clock."""

from __future__ import annotations

import pytest

from data_plane.circuit import CircuitBreaker, Circuits, State


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(threshold: int = 3, cooldown_s: float = 10.0) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker(threshold, cooldown_s, clock), clock


def test_opens_after_threshold_consecutive_failures() -> None:
    b, _ = breaker()
    for _ in range(2):
        b.failure()
        assert b.state is State.CLOSED and b.allow()
    b.failure()
    assert b.state is State.OPEN
    assert not b.allow()
    assert b.retry_after() == pytest.approx(10.0)


def test_success_resets_the_consecutive_count() -> None:
    b, _ = breaker()
    b.failure()
    b.failure()
    b.success()
    b.failure()
    b.failure()
    assert b.state is State.CLOSED


def test_half_open_lets_one_probe_through_and_success_closes() -> None:
    b, clock = breaker()
    for _ in range(3):
        b.failure()
    clock.now += 4
    assert not b.allow()
    assert b.retry_after() == pytest.approx(6.0)
    clock.now += 6
    assert b.state is State.HALF_OPEN
    assert b.allow()  # the probe
    assert not b.allow()  # everyone else waits for its outcome
    assert 0 < b.retry_after() <= 1.0
    b.success()
    assert str(b.state) == "closed" and b.allow() and b.retry_after() == 0.0


def test_failed_probe_reopens_for_a_full_cooldown() -> None:
    b, clock = breaker()
    for _ in range(3):
        b.failure()
    clock.now += 10
    assert b.allow()
    b.failure()
    assert b.state is State.OPEN
    assert b.retry_after() == pytest.approx(10.0)


def test_late_failures_while_open_do_not_extend_it() -> None:
    b, clock = breaker()
    for _ in range(3):
        b.failure()
    clock.now += 5
    b.failure()  # a delivery started before the circuit opened
    assert b.retry_after() == pytest.approx(5.0)


def test_a_probe_that_never_reports_expires() -> None:
    b, clock = breaker()
    for _ in range(3):
        b.failure()
    clock.now += 10
    assert b.allow()  # its delivery is then cancelled: no success(), no failure()
    clock.now += 5
    assert not b.allow()
    clock.now += 5
    assert b.allow()


def test_success_while_open_closes() -> None:
    b, _ = breaker()
    for _ in range(3):
        b.failure()
    b.success()  # a delivery started before opening got through: the destination works
    assert b.state is State.CLOSED


def test_invalid_settings_rejected() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(0)
    with pytest.raises(ValueError):
        CircuitBreaker(1, 0)


def test_circuits_are_per_key_and_bounded() -> None:
    clock = Clock()
    circuits = Circuits(threshold=1, cooldown_s=5, max_size=2, clock=clock)
    circuits.get("a").failure()
    assert not circuits.get("a").allow()
    assert circuits.get("b").allow()
    assert circuits.open_count() == 1
    assert not circuits.get("a").allow()  # "a" is now the most recently used
    circuits.get("c")  # evicts "b", the least recently used
    assert circuits.get("a").state is State.OPEN
    assert circuits.open_count() == 1

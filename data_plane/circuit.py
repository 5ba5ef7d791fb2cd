"""Per-destination circuit breaker: stop hammering a destination that keeps failing.

closed ──N consecutive failures──> open ──cool-down elapsed──> half-open
half-open: one probe delivery goes through; success closes, failure re-opens.

One breaker per Connection (`Clients.circuits`, keyed by the Connection's identity), its
thresholds from the Connection's `circuit: {failures, cooldown_s}`: every webhook delivering
to a destination feeds and obeys the same breaker. The chain consults it before each step and
refuses with `CircuitOpen` (retryable; the worker defers the delivery without spending an
attempt, a sync webhook answers 502).

Pure and clock-injectable; state lives in each gateway process (each learns on its own, which
costs at most N failures per process per outage).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from enum import StrEnum

from data_plane.errors import DeliveryError

Clock = Callable[[], float]


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpen(DeliveryError, retryable=True):
    """The destination's circuit is open: the step was not tried. Worth trying again after
    `retry_after_s`, and no attempt was spent on it."""

    def __init__(self, retry_after_s: float, *, destination: str) -> None:
        super().__init__(f"circuit open, retry in {retry_after_s:.1f}s", destination=destination)
        self.retry_after_s = retry_after_s


def deferral(exc: BaseException) -> float | None:
    """Seconds to defer a delivery whose failure is an open circuit (the exception or, for a
    chain's StepFailed, its cause); None for a real failure."""
    seen: BaseException | None = exc
    for _ in range(4):  # StepFailed -> CircuitOpen; bounded against cycles
        if seen is None:
            return None
        if isinstance(seen, CircuitOpen):
            return seen.retry_after_s
        seen = seen.__cause__
    return None


class CircuitBreaker:
    __slots__ = ("_clock", "_failures", "_opened_at", "_probe_at", "cooldown_s", "threshold")

    def __init__(
        self, threshold: int = 5, cooldown_s: float = 30.0, clock: Clock = time.monotonic
    ) -> None:
        if threshold < 1 or cooldown_s <= 0:
            raise ValueError("threshold must be >= 1 and cooldown_s > 0")
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_at: float | None = None

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return State.CLOSED
        if self._clock() - self._opened_at < self.cooldown_s:
            return State.OPEN
        return State.HALF_OPEN

    def allow(self) -> bool:
        """May a delivery go to the destination now? In half-open, True once per probe."""
        state = self.state
        if state is not State.HALF_OPEN:
            return state is State.CLOSED
        now = self._clock()
        # A probe whose outcome never came (its delivery was cancelled) expires after a
        # cool-down, otherwise the breaker would stay half-open and closed to traffic forever.
        if self._probe_at is not None and now - self._probe_at < self.cooldown_s:
            return False
        self._probe_at = now
        return True

    def retry_after(self) -> float:
        """Seconds after which a refused delivery is worth trying again."""
        if self._opened_at is None:
            return 0.0
        remaining = self._opened_at + self.cooldown_s - self._clock()
        if remaining > 0:
            return remaining
        # Half-open with a probe out: its answer is due soon, whichever way it goes.
        return min(self.cooldown_s, 1.0) if self._probe_at is not None else 0.0

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probe_at = None

    def failure(self) -> None:
        now = self._clock()
        if self._opened_at is not None:
            if now - self._opened_at >= self.cooldown_s:  # the half-open probe failed
                self._opened_at = now
                self._probe_at = None
            # While open, late failures of deliveries started earlier do not extend it.
            return
        self._failures += 1
        if self._failures >= self.threshold:
            self._opened_at = now


class Circuits:
    """One breaker per destination key, least recently used evicted past `max_size`."""

    def __init__(
        self,
        threshold: int = 5,
        cooldown_s: float = 30.0,
        *,
        max_size: int = 10_000,
        clock: Clock = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.max_size = max_size
        self._clock = clock
        self._breakers: OrderedDict[str, CircuitBreaker] = OrderedDict()

    def get(
        self, key: str, threshold: int | None = None, cooldown_s: float | None = None
    ) -> CircuitBreaker:
        """The breaker of `key`; given thresholds (a Connection's) replace the defaults, and a
        breaker whose thresholds changed starts afresh, closed."""
        threshold = self.threshold if threshold is None else threshold
        cooldown_s = self.cooldown_s if cooldown_s is None else cooldown_s
        breaker = self._breakers.get(key)
        if (
            breaker is None
            or breaker.threshold != threshold
            or breaker.cooldown_s != cooldown_s
        ):
            breaker = CircuitBreaker(threshold, cooldown_s, self._clock)
            self._breakers[key] = breaker
            if len(self._breakers) > self.max_size:
                self._breakers.popitem(last=False)
        self._breakers.move_to_end(key)
        return breaker

    def states(self) -> dict[str, State]:
        """The state of every breaker kept, by key (for the metric)."""
        return {key: b.state for key, b in self._breakers.items()}

    def open_count(self) -> int:
        """Breakers not closed (open or half-open), for a gauge."""
        return sum(b.state is not State.CLOSED for b in self._breakers.values())

"""The control plane's own Prometheus metrics, one registry per app."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

T = TypeVar("T")


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.applies = Counter("whplane_applies", "Applies by result", ["result"],
                               registry=self.registry)
        self.apply_seconds = Histogram("whplane_apply_duration_seconds", "Apply latency",
                                       registry=self.registry)
        self.canary_running = Gauge(
            "whplane_canary_running", "1 while a canary runs (as of the last canary check)",
            registry=self.registry)
        self.canary_decisions = Counter(
            "whplane_canary_decisions", "Canaries ended, by action (promote, abort) and by "
            "whom (operator, automatic)", ["action", "by"], registry=self.registry)

    async def timed(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run a write, counted by result (`ok` or the error's class) and timed when it works."""
        t0 = time.perf_counter()
        try:
            out = await op()
        except Exception as exc:
            self.applies.labels(type(exc).__name__.lower()).inc()
            raise
        self.applies.labels("ok").inc()
        self.apply_seconds.observe(time.perf_counter() - t0)
        return out

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

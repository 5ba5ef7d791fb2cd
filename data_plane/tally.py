"""Counters and histograms kept as plain numbers, turned into Prometheus families when scraped.

prometheus_client's `inc()` and `observe()` take a lock and go through a value object per
label set: about a microsecond each, and a webhook records half a dozen. The gateway records
from its event loop only, so a dict entry per label set is all a sample needs; the exposition
(names, `_total`, `le` buckets, `_sum`, `_count`) is the same as prometheus_client's.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class Counts:
    """A counter family: `counts.inc("acme", "delivered")` in the order of `labels`."""

    __slots__ = ("doc", "labels", "name", "values")

    def __init__(self, name: str, doc: str, labels: Sequence[str]) -> None:
        self.name, self.doc, self.labels = name, doc, list(labels)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str) -> None:
        values = self.values
        values[labels] = values.get(labels, 0.0) + 1.0

    def get(self, *labels: str) -> float:
        return self.values.get(labels, 0.0)

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for labels, value in sorted(self.values.items()):
            family.add_metric(list(labels), value)
        return family


class Timings:
    """A histogram family: `timings.observe(0.004, "sync")`."""

    __slots__ = ("bounds", "doc", "edges", "labels", "name", "values")

    def __init__(self, name: str, doc: str, labels: Sequence[str],
                 buckets: Sequence[float]) -> None:
        self.name, self.doc, self.labels = name, doc, list(labels)
        self.bounds = tuple(sorted(float(b) for b in buckets))
        self.edges = [*(floatToGoString(b) for b in self.bounds), "+Inf"]  # type: ignore[no-untyped-call]
        # label values -> [count per bucket (the last is +Inf), sum]
        self.values: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, seconds: float, *labels: str) -> None:
        entry = self.values.get(labels)
        if entry is None:
            entry = self.values[labels] = ([0] * (len(self.bounds) + 1), [0.0])
        entry[0][bisect_left(self.bounds, seconds)] += 1  # first bound >= seconds: `le`
        entry[1][0] += seconds

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for labels, (counts, total) in sorted(self.values.items()):
            cumulative, running = [], 0
            for edge, count in zip(self.edges, counts, strict=True):
                running += count
                cumulative.append((edge, float(running)))
            family.add_metric(list(labels), cumulative, total[0])
        return family


class TallyCollector(Collector):
    """Collects the given families in a registry (each scrape reads their numbers)."""

    def __init__(self, families: Iterable[Counts | Timings]) -> None:
        self._families = tuple(families)

    def collect(self) -> Iterable[Metric]:
        for family in self._families:
            yield family.family()

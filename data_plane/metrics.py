"""Prometheus metrics of a gateway, in a registry the app owns (no process-global registry).

What operators alert on: rejects by reason, delivery failures, retries, DLQ size, queue depth,
the applied config revision, config errors and refused resources, and whether etcd, Vault and
Redis are reachable. Gauges that describe the world (queue depth, DLQ size, provider state) are
read when scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from data_plane.tally import Counts, TallyCollector, Timings

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


Probes = dict[str, tuple[str, Callable[[], float | None]]]
# Outcomes (see data_plane.ingest) a sender would call a failure: 5xx answers and refused
# signatures. What the gateway reports as `stats.errors`, and canaries are judged on.
ERROR_OUTCOMES = frozenset({"unavailable", "overloaded", "misconfigured", "failed",
                            "unauthorized"})


class _Probe(Collector):
    """Gauges and counters read at scrape time from callables (state owned elsewhere)."""

    def __init__(self, gauges: Probes, counters: Probes) -> None:
        self._gauges = gauges
        self._counters = counters

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        for family, probes in ((GaugeMetricFamily, self._gauges),
                               (CounterMetricFamily, self._counters)):
            for name, (doc, fn) in probes.items():
                try:
                    value = fn()
                except Exception:  # a probe must never break the scrape
                    value = None
                if value is not None:
                    yield family(name, doc, value=value)


class _LabelledProbe(Collector):
    """One gauge family with a label, its samples read at scrape time from a callable."""

    def __init__(self, name: str, doc: str, label: str,
                 fn: Callable[[], Mapping[str, float]]) -> None:
        self._name, self._doc, self._label, self._fn = name, doc, label, fn

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(self._name, self._doc, labels=[self._label])
        try:
            samples = self._fn()
        except Exception:  # a probe must never break the scrape
            samples = {}
        for value, sample in sorted(samples.items()):
            family.add_metric([value], sample)
        yield family


@dataclass
class GatewayMetrics:
    registry: CollectorRegistry
    # Plain numbers (data_plane/tally.py): recorded several times per webhook. Labels are
    # bounded: namespaces come from the config ("_unknown" for everything else).
    requests: Counts
    verify_failures: Counts
    deliveries: Counts
    duration: Timings
    # Every webhook request and those in ERROR_OUTCOMES since the process started: the
    # `stats` of the registration record.
    requests_total: int = 0
    errors_total: int = 0

    def request(self, namespace: str, outcome: str) -> None:
        self.requests.inc(namespace, outcome)
        self.requests_total += 1
        if outcome in ERROR_OUTCOMES:
            self.errors_total += 1

    def delivered(self, namespace: str, seconds: float) -> None:
        """A sync webhook delivered: `request`, `delivery` and `took` in one call."""
        self.requests.inc(namespace, "delivered")
        self.requests_total += 1
        self.deliveries.inc(namespace, "sync", "ok")
        self.duration.observe(seconds, "sync")

    def delivery(self, namespace: str, mode: str, result: str) -> None:
        self.deliveries.inc(namespace, mode, result)

    def took(self, mode: str, seconds: float) -> None:
        self.duration.observe(seconds, mode)

    @classmethod
    def create(cls, gauges: Probes, counters: Probes | None = None) -> GatewayMetrics:
        reg = CollectorRegistry(auto_describe=True)
        m = cls(
            registry=reg,
            requests=Counts("whplane_webhook_requests",
                            "Webhook requests by namespace and outcome", ["namespace", "outcome"]),
            verify_failures=Counts("whplane_verification_failures",
                                   "Requests refused by verification", ["namespace", "scheme"]),
            deliveries=Counts("whplane_deliveries", "Deliveries by namespace, mode and result",
                              ["namespace", "mode", "result"]),
            duration=Timings(
                "whplane_webhook_duration_seconds", "Time to answer a webhook", ["mode"],
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            ),
        )  # fmt: skip
        reg.register(TallyCollector((m.requests, m.verify_failures, m.deliveries, m.duration)))
        reg.register(_Probe(gauges, counters or {}))
        return m

    def probe(self, gauges: Probes, counters: Probes | None = None) -> None:
        """Add gauges and counters read at scrape time from state owned elsewhere."""
        self.registry.register(_Probe(gauges, counters or {}))

    def probe_by(self, name: str, doc: str, label: str,
                 fn: Callable[[], Mapping[str, float]]) -> None:
        """Add a gauge with one label whose values `fn` gives at scrape time ({} for none)."""
        self.registry.register(_LabelledProbe(name, doc, label, fn))

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(frozen=True, slots=True)
class RelayMetrics:
    """Counters of the relay (data_plane/relay), by namespace (a label bounded by the config).

    The gauges (sessions by transport, buffer depth by channel) are probes the relay hub
    registers, read at scrape time.
    """

    appended: Counter
    refused_full: Counter
    acked: Counter
    failed: Counter
    dead_lettered: Counter
    redelivered: Counter
    unauthorized: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> RelayMetrics:
        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, ["namespace"], registry=registry)

        return cls(
            appended=counter("whplane_relay_appended",
                             "Webhooks appended to a relay channel's buffer"),
            refused_full=counter("whplane_relay_refused_full",
                                 "Webhooks refused because the channel's buffer was full (503)"),
            acked=counter("whplane_relay_acked",
                          "Relayed messages acknowledged by a connector (local 2xx)"),
            failed=counter("whplane_relay_failed",
                           "Local delivery failures reported by connectors"),
            dead_lettered=counter("whplane_relay_dead_lettered",
                                  "Relayed messages moved to their channel's dead letters"),
            redelivered=counter("whplane_relay_redelivered",
                                "Relayed messages sent again after a local failure"),
            unauthorized=counter("whplane_relay_unauthorized",
                                 "Connect requests refused for a wrong or missing token (401)"),
        )

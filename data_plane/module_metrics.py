"""Delivery metrics per module and the state of each Connection's circuit breaker.

    whplane_module_deliveries_total{module, result}     ok | failed | circuit_open | cancelled
    whplane_module_delivery_duration_seconds{module}    time of each step that ran (ok or failed)
    whplane_circuit_state{connection}                   0 closed, 1 half-open, 2 open

Owned by `Clients` (the chain records into it, both for sync and async deliveries) and
registered in the gateway's registry as one collector. Labels are bounded: modules by the
code, connections by `Circuits.max_size`.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from data_plane.circuit import Circuits, State
from data_plane.tally import Counts, Timings

STATE_VALUE = {State.CLOSED: 0.0, State.HALF_OPEN: 1.0, State.OPEN: 2.0}
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ModuleMetrics(Collector):
    def __init__(self, circuits: Circuits) -> None:
        self._circuits = circuits
        self.deliveries = Counts("whplane_module_deliveries",
                                 "Delivery steps by module and result", ["module", "result"])
        self.duration = Timings("whplane_module_delivery_duration_seconds",
                                "Time of a delivery step, by module", ["module"], _BUCKETS)

    def step(self, module: str, result: str, seconds: float | None) -> None:
        """Record one step; `seconds` is None for a step that did not run (circuit open)."""
        self.deliveries.inc(module, result)
        if seconds is not None:
            self.duration.observe(seconds, module)

    def collect(self) -> Iterable[Metric]:
        yield self.deliveries.family()
        yield self.duration.family()
        family = GaugeMetricFamily(
            "whplane_circuit_state",
            "Circuit breaker of each Connection: 0 closed, 1 half-open (probing), 2 open",
            labels=["connection"],
        )
        for connection, state in sorted(self._circuits.states().items()):
            family.add_metric([connection], STATE_VALUE[state])
        yield family

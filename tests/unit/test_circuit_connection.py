"""One circuit breaker per Connection, in the chain: thresholds from the Connection, shared by
every webhook delivering there, "circuit open" without trying the destination, what counts as
a failure, the metrics, and the worker's deferral of an open circuit (no attempt spent)."""

from __future__ import annotations

from typing import Any

import pytest
from immutables import Map
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import TypeAdapter

from data_plane.chain import run_chain
from data_plane.circuit import CircuitOpen, Circuits, deferral
from data_plane.clients import Clients
from data_plane.delivery import Delivery
from data_plane.errors import DeliveryError, StepFailed
from providers.resources import Connection, Webhook
from providers.snapshot import Endpoint

_WEBHOOK = TypeAdapter(Webhook)
_CONNECTION = TypeAdapter(Connection)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Destination:
    """A fake `http` module: fails (retryable unless told otherwise) while `failing`."""

    def __init__(self) -> None:
        self.failing = False
        self.retryable = True
        self.calls = 0

    async def __call__(self, step: Any, endpoint: Endpoint, delivery: Delivery,
                       clients: Any) -> None:
        self.calls += 1
        if self.failing:
            raise DeliveryError("HTTP 503", destination=f"http:{step.connection}",
                                retryable=self.retryable)


def connection(name: str, namespace: str | None = "acme", **circuit: Any) -> Connection:
    spec: dict[str, Any] = {"type": "http", "url": "https://api.example"}
    if circuit:
        spec["circuit"] = circuit
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return _CONNECTION.validate_python({"apiVersion": "whplane/v1", "kind": "Connection",
                                        "metadata": metadata, "spec": spec})


def endpoint(hook: str, *conns: Connection) -> Endpoint:
    webhook = _WEBHOOK.validate_python({
        "apiVersion": "whplane/v1", "kind": "Webhook",
        "metadata": {"name": hook, "namespace": "acme"},
        "spec": {"verify": {"scheme": "none"}, "chain": {"steps": [
            {"module": "http", "connection": c.metadata.name} for c in conns]}},
    })
    return Endpoint(webhook, None, Map({c.metadata.name: c for c in conns}))


def delivery(hook: str = "a") -> Delivery:
    return Delivery("acme", hook, b"{}", {}, revision=1)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def clients(clock: Clock) -> Any:
    async with Clients(circuits=Circuits(clock=clock)) as c:
        yield c


async def test_thresholds_come_from_the_connection_and_webhooks_share_it(
    clients: Clients, clock: Clock
) -> None:
    api = connection("api", failures=2, cooldown_s=10)
    dest = Destination()
    dest.failing = True
    modules = {"http": dest}
    first, second = endpoint("a", api), endpoint("b", api)
    for ep, hook in ((first, "a"), (second, "b")):  # two webhooks, one destination
        result = await run_chain(ep, delivery(hook), clients, modules=modules)
        assert result.error is not None and not isinstance(result.error.__cause__, CircuitOpen)
    assert dest.calls == 2
    result = await run_chain(first, delivery(), clients, modules=modules)
    assert dest.calls == 2  # not tried: the circuit is open
    assert isinstance(result.error, StepFailed) and result.error.retryable
    assert isinstance(result.error.__cause__, CircuitOpen)
    assert str(result.error) == "step 0 (http) to http:acme/api failed: circuit open, retry in 10.0s"
    assert deferral(result.error) == pytest.approx(10.0)

    clock.now += 10  # cooled down: one probe goes through and, succeeding, closes it
    dest.failing = False
    assert (await run_chain(second, delivery("b"), clients, modules=modules)).ok
    assert (await run_chain(first, delivery(), clients, modules=modules)).ok
    assert dest.calls == 4


async def test_each_connection_has_its_own_breaker(clients: Clients) -> None:
    down, up = connection("down", failures=1), connection("up", failures=1)
    broken, working = Destination(), Destination()
    broken.failing = True

    async def module(step: Any, ep: Endpoint, d: Delivery, c: Any) -> None:
        await (broken if step.connection == "down" else working)(step, ep, d, c)

    await run_chain(endpoint("a", down), delivery(), clients, modules={"http": module})
    assert (await run_chain(endpoint("b", up), delivery("b"), clients,
                            modules={"http": module})).ok
    # The same name in another namespace (or global) is another Connection, another breaker.
    other = connection("down", namespace=None, failures=1)
    assert (await run_chain(endpoint("c", other), delivery("c"), clients,
                            modules={"http": working})).ok
    assert clients.circuits.states() == {"acme/down": "open", "acme/up": "closed",
                                         "down": "closed"}


async def test_non_retryable_failures_do_not_open_it(clients: Clients) -> None:
    api = connection("api", failures=1)
    dest = Destination()
    dest.failing, dest.retryable = True, False  # the destination answered "no" (a 4xx)
    for _ in range(3):
        await run_chain(endpoint("a", api), delivery(), clients, modules={"http": dest})
    assert dest.calls == 3
    assert clients.circuits.states() == {"acme/api": "closed"}


async def test_changed_thresholds_start_a_fresh_breaker(clients: Clients) -> None:
    dest = Destination()
    dest.failing = True
    await run_chain(endpoint("a", connection("api", failures=1)), delivery(), clients,
                    modules={"http": dest})
    assert clients.circuits.states() == {"acme/api": "open"}
    await run_chain(endpoint("a", connection("api", failures=3)), delivery(), clients,
                    modules={"http": dest})
    assert dest.calls == 2 and clients.circuits.states() == {"acme/api": "closed"}


async def test_metrics_by_module_result_and_circuit_state(clients: Clients) -> None:
    api = connection("api", failures=1)
    dest = Destination()
    modules = {"http": dest}
    await run_chain(endpoint("a", api), delivery(), clients, modules=modules)
    dest.failing = True
    await run_chain(endpoint("a", api), delivery(), clients, modules=modules)
    await run_chain(endpoint("a", api), delivery(), clients, modules=modules)
    registry = CollectorRegistry()
    registry.register(clients.metrics)
    text = generate_latest(registry).decode()
    for line in ('whplane_module_deliveries_total{module="http",result="ok"} 1.0',
                 'whplane_module_deliveries_total{module="http",result="failed"} 1.0',
                 'whplane_module_deliveries_total{module="http",result="circuit_open"} 1.0',
                 'whplane_module_delivery_duration_seconds_count{module="http"} 2.0',
                 'whplane_circuit_state{connection="acme/api"} 2.0'):
        assert line in text, text


def test_deferral_only_for_an_open_circuit() -> None:
    opened = CircuitOpen(3.0, destination="http:acme/api")
    wrapped = StepFailed(0, "http", opened.reason, destination=opened.destination,
                         retryable=True)
    wrapped.__cause__ = opened
    assert deferral(opened) == 3.0 and deferral(wrapped) == 3.0
    assert deferral(DeliveryError("HTTP 503", destination="x")) is None

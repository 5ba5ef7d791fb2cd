"""What every destination module shares: `Clients.pooled` (one client per Connection, created
once, replaced and closed when the Connection changes, bounded, closed on stop), the SSRF
guard on the hosts of non-HTTP URLs, the Connection specs' secrets, the tenant rules for the
new types, modules not built yet refused by name, and the worker deferring a delivery whose
circuit is open without spending an attempt (real Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis
from pydantic import TypeAdapter

from cli.servers import RedisServer
from data_plane.circuit import CircuitOpen
from data_plane.clients import Clients, Conn, Target, url_hosts
from data_plane.delivery import Delivery
from data_plane.errors import DeliveryError, SsrfBlocked
from data_plane.queue import DeliveryQueue
from data_plane.worker import Worker
from providers import sandbox
from providers.connection_spec import PostgresConnectionSpec
from providers.errors import DocumentErrors
from providers.loader import load_documents
from providers.resources import Connection, Retry, secret_fields

_CONNECTION = TypeAdapter(Connection)


def conn(url: str = "postgresql://db.example:5432/x", key: str = "acme/db",
         **spec: Any) -> Conn:
    model = PostgresConnectionSpec(type="postgres", url=url, **spec)
    return Conn(key, model, f"postgres:{key}")


class Factory:
    """Counts clients made and closed; `fail` makes the next creation raise."""

    def __init__(self) -> None:
        self.made: list[tuple[Target, ...]] = []
        self.closed: list[int] = []
        self.fail = False
        self.delay = 0.0

    async def make(self, targets: tuple[Target, ...]) -> int:
        await asyncio.sleep(self.delay)
        if self.fail:
            raise OSError(111, "Connection refused")
        self.made.append(targets)
        return len(self.made)

    async def close(self, client: int) -> None:
        self.closed.append(client)


def resolver(answers: Mapping[str, Sequence[str]]) -> Any:
    async def resolve(host: str, port: int) -> Sequence[str]:
        return answers[host]
    return resolve


# Public addresses as a resolver would answer them (nothing is dialled: the factory is fake).
PUBLIC = {"db.example": ["93.184.216.34"], "inside.example": ["93.184.216.35", "10.0.0.5"]}


async def test_one_client_per_connection_created_once() -> None:
    f = Factory()
    f.delay = 0.05
    async with Clients(resolver=resolver(PUBLIC)) as clients:
        got = await asyncio.gather(*(clients.pooled("postgres", conn(), f.make, f.close,
                                                    default_port=5432) for _ in range(20)))
        assert got == [1] * 20
        assert f.made == [(Target("93.184.216.34", 5432, "db.example"),)]  # the checked address
        other = await clients.pooled("postgres", conn(key="acme/other"), f.make, f.close,
                                     default_port=5432)
        assert other == 2
    assert sorted(f.closed) == [1, 2]  # closed with the Clients


async def test_a_changed_connection_gets_a_new_client_and_the_old_one_is_closed() -> None:
    f = Factory()
    async with Clients(resolver=resolver(PUBLIC)) as clients:
        first = await clients.pooled("postgres", conn(timeout_s=0.01), f.make, f.close,
                                     default_port=5432)
        same = await clients.pooled("postgres", conn(timeout_s=0.01), f.make, f.close,
                                    default_port=5432)  # an equal spec: same client
        assert first == same == 1
        changed = await clients.pooled("postgres", conn(timeout_s=0.02), f.make, f.close,
                                       default_port=5432)
        assert changed == 2
        await asyncio.sleep(0.1)  # the old one is closed after a grace of 3 x its timeout
        assert f.closed == [1]


async def test_a_failed_creation_is_not_kept() -> None:
    f = Factory()
    f.fail = True
    async with Clients(resolver=resolver(PUBLIC)) as clients:
        with pytest.raises(OSError):
            await clients.pooled("postgres", conn(), f.make, f.close, default_port=5432)
        f.fail = False
        assert await clients.pooled("postgres", conn(), f.make, f.close,
                                    default_port=5432) == 1


async def test_bounded_least_recently_used_closed() -> None:
    f = Factory()
    async with Clients(resolver=resolver(PUBLIC), max_pooled=2) as clients:
        for key in ("acme/a", "acme/b", "acme/a", "acme/c"):
            await clients.pooled("postgres", conn(key=key, timeout_s=0.01), f.make, f.close,
                                 default_port=5432)
        await asyncio.sleep(0.1)
        assert f.closed == [2]  # "acme/b" was the least recently used


async def test_ssrf_guard_checks_every_address_of_every_host() -> None:
    f = Factory()
    async with Clients(resolver=resolver(PUBLIC)) as clients:
        with pytest.raises(SsrfBlocked) as private:
            await clients.pooled("postgres", conn("postgresql://inside.example/x"), f.make,
                                 f.close, default_port=5432)
        with pytest.raises(SsrfBlocked) as literal:
            await clients.pooled("postgres", conn("postgresql://169.254.169.254/x",
                                                  key="acme/meta"),
                                 f.make, f.close, default_port=5432)
        allowed = await clients.pooled(
            "postgres", conn("postgresql://localhost:6543/x", key="acme/local",
                             allow_private=True), f.make, f.close, default_port=5432)
    assert private.value.destination == "postgres:acme/db" and not private.value.retryable
    assert "10.0.0.5" in str(private.value)
    assert "metadata" in str(literal.value)
    assert allowed == 1 and f.made == [(Target("localhost", 6543, "localhost"),)]


def test_url_hosts() -> None:
    assert url_hosts("kafka://a:9092,b:9093,[2001:db8::1]:9094", 9092) == [
        ("a", 9092), ("b", 9093), ("2001:db8::1", 9094)]
    assert url_hosts("amqp://user:p%40ss@broker/vhost", 5672) == [("broker", 5672)]
    assert url_hosts("nats://n1,n2:4223", 4222) == [("n1", 4222), ("n2", 4223)]
    assert url_hosts("s3://", 443) == []
    with pytest.raises(DeliveryError):
        url_hosts("mysql://db:port/x", 3306)


# --- config ---------------------------------------------------------------------------------


def connection_doc(spec: dict[str, Any], namespace: str | None = "alpha") -> dict[str, Any]:
    meta = {"name": "dest", **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "whplane/v1", "kind": "Connection", "metadata": meta, "spec": spec}


def test_secrets_of_the_new_connection_types() -> None:
    def secrets(spec: dict[str, Any]) -> dict[str, str]:
        return secret_fields(_CONNECTION.validate_python(connection_doc(spec)))

    assert secrets({"type": "amqp", "url": "amqp://broker/", "password": "{$vault:alpha/mq#pw}"}
                   ) == {"spec.password": "{$vault:alpha/mq#pw}"}
    # A password inside the URL makes the URL a secret; a user name alone does not.
    assert secrets({"type": "postgres", "url": "postgresql://u:pw@db/x"}) == {
        "spec.url": "postgresql://u:pw@db/x"}
    assert secrets({"type": "mysql", "url": "mysql://u@db/x"}) == {}
    assert secrets({"type": "nats", "url": "nats://n", "token": "{$T}"}) == {"spec.token": "{$T}"}


def test_urls_are_scheme_checked_and_circuits_validated() -> None:
    def errors(spec: dict[str, Any]) -> str:
        text = json.dumps(connection_doc(spec))
        with pytest.raises(DocumentErrors) as caught:
            load_documents([("c.json", text)])
        return str(caught.value)

    assert "spec.url" in errors({"type": "postgres", "url": "mysql://db/x"})
    assert "spec.url" in errors({"type": "amqp", "url": "http://broker"})
    assert "spec.circuit.failures" in errors({"type": "nats", "url": "nats://n",
                                              "circuit": {"failures": 0}})
    assert "spec.circuit.cooldown_s" in errors({"type": "http", "url": "https://x",
                                                "circuit": {"cooldown_s": -1}})


def test_tenant_rules_for_the_new_types() -> None:
    def problems(doc: dict[str, Any]) -> list[str]:
        return [str(p) for p in sandbox.tenant_problems(doc, "alpha")]

    # Tenants may define their own connections of the new types, never with private targets.
    assert problems(connection_doc({"type": "postgres", "url": "postgresql://db.alpha.example/x",
                                    "password": "{$vault:alpha/db#pw}"})) == []
    assert problems(connection_doc({"type": "amqp", "url": "amqp://10.0.0.5/",
                                    "allow_private": True})) == [
        "spec.allow_private: only the admin may allow private addresses"]

    hook = {"apiVersion": "whplane/v1", "kind": "Webhook",
            "metadata": {"name": "h", "namespace": "alpha"},
            "spec": {"verify": {"scheme": "none"}, "chain": {"steps": [
                {"module": "postgres", "connection": "db", "config": {"table": "beta_events"}},
                {"module": "postgres", "connection": "db", "config": {"table": "alpha_events"}},
                {"module": "mysql", "connection": "db", "config": {"table": "events"}},
                {"module": "nats", "connection": "n", "config": {"subject": "beta.orders"}},
                {"module": "nats", "connection": "n", "config": {"subject": "alpha.orders"}},
                {"module": "rabbitmq", "connection": "q", "config": {"routing_key": "alpha.q"}},
                {"module": "rabbitmq", "connection": "q",
                 "config": {"exchange": "shared", "routing_key": "alpha.q"}},
            ]}}}
    assert problems(hook) == [
        "spec.chain.steps[0].config.table: names of namespace 'alpha' start with 'alpha_'",
        "spec.chain.steps[2].config.table: names of namespace 'alpha' start with 'alpha_'",
        "spec.chain.steps[3].config.subject: names of namespace 'alpha' start with 'alpha.'",
        "spec.chain.steps[6].config.exchange: names of namespace 'alpha' start with 'alpha.'",
    ]


# --- the worker and an open circuit -----------------------------------------------------------


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.Redis.from_url(redis_server.url, socket_timeout=5)
    yield r
    await r.aclose()


async def test_worker_defers_an_open_circuit_without_spending_attempts(
    client: aioredis.Redis,
) -> None:
    stream = f"t:{{{uuid.uuid4().hex[:12]}}}:deliveries"
    seen: list[int] = []

    async def deliver(delivery: Delivery) -> None:
        seen.append(delivery.attempt)
        if len(seen) <= 3:  # the chain refused: the Connection's circuit is open
            raise CircuitOpen(0.05, destination="postgres:acme/db")

    retry = Retry(attempts=1, initial_delay_s=0.01, max_delay_s=0.01)
    w = Worker(client, deliver, lambda _: retry, consumer="w1", stream=stream)
    await DeliveryQueue(client, stream).enqueue(Delivery("acme", "h", b"{}", {}, revision=1))
    task = asyncio.create_task(w.run())
    try:
        async with asyncio.timeout(10):
            while w.stats.delivered < 1:
                await asyncio.sleep(0.02)
    finally:
        await w.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # One attempt allowed, yet delivered after three refusals: none of them was an attempt.
    assert seen == [0, 0, 0, 0]
    assert (w.stats.deferred, w.stats.dead_lettered) == (3, 0)

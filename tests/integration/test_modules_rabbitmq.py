"""`rabbitmq` against a real RabbitMQ (127.0.0.1:5672 guest/guest, or RABBITMQ_URL), read back
with pika: publisher confirms, properties and headers, unroutable messages refused, an
exchange with a binding, failures classified. Through a real gateway process:
test_modules_gateway.py."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pika
import pytest

from cli.servers import free_port
from data_plane.clients import Clients
from data_plane.errors import DeliveryError, SsrfBlocked
from tests.module_kit import delivery, endpoint, run_step


class Broker:
    """pika, the independent client: declares queues and reads them back."""

    def __init__(self, url: str) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()

    def queue(self) -> str:
        name = f"wh-test-{uuid.uuid4().hex[:8]}"
        self.channel.queue_declare(name, durable=False, auto_delete=False)
        return name

    def get(self, queue: str, timeout: float = 10) -> tuple[Any, Any, bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            method, props, body = self.channel.basic_get(queue, auto_ack=True)
            if method is not None:
                return method, props, body
            time.sleep(0.05)
        raise AssertionError(f"nothing arrived in {queue} within {timeout}s")

    def count(self, queue: str) -> int:
        return int(self.channel.queue_declare(queue, passive=True).method.message_count)


@pytest.fixture
def broker(rabbitmq_url: str) -> Iterator[Broker]:
    b = Broker(rabbitmq_url)
    declared: list[str] = []
    original = b.queue

    def queue() -> str:
        declared.append(original())
        return declared[-1]

    b.queue = queue  # type: ignore[method-assign]
    yield b
    for name in declared:
        b.channel.queue_delete(name)
    b.connection.close()


def spec(url: str, **extra: Any) -> dict[str, Any]:
    """The Connection spec for `url`, its password moved out of the URL into a field (a
    password in a URL makes the URL a secret, which the gateway would want as a reference)."""
    parts = urlsplit(url)
    out: dict[str, Any] = {"type": "amqp", "allow_private": True, **extra,
                           "url": urlunsplit(parts._replace(netloc=f"{parts.hostname}:{parts.port or 5672}"))}
    if parts.username:
        out["username"] = parts.username
    if parts.password:
        out["password"] = parts.password
    return out


def step(routing_key: str, **config: Any) -> dict[str, Any]:
    return {"module": "rabbitmq", "connection": "dest",
            "config": {"routing_key": routing_key, **config}}


async def test_publishes_confirmed_with_properties(rabbitmq_url: str, broker: Broker) -> None:
    queue = broker.queue()
    ep = endpoint(step(queue), spec(rabbitmq_url))
    d = delivery(b'{"event":"push"}')
    async with Clients() as clients:
        await run_step(ep, d, clients)
        await run_step(ep, delivery(b"second", headers={}), clients)  # the pooled client
    _, props, body = broker.get(queue)
    assert body == b'{"event":"push"}'
    assert (props.message_id, props.content_type, props.delivery_mode) == (
        d.id, "application/json", 2)
    assert props.headers == {"x-whplane-namespace": "acme", "x-whplane-webhook": "hook",
                             "x-whplane-attempt": 1}
    assert int(props.timestamp) == int(d.received_at)
    assert broker.get(queue)[2] == b"second"


async def test_through_an_exchange_and_binding(rabbitmq_url: str, broker: Broker) -> None:
    exchange = f"wh-test-x-{uuid.uuid4().hex[:8]}"
    broker.channel.exchange_declare(exchange, "topic", auto_delete=True)
    queue = broker.queue()
    broker.channel.queue_bind(queue, exchange, "acme.#")
    ep = endpoint(step("acme.push", exchange=exchange, persistent=False), spec(rabbitmq_url))
    async with Clients() as clients:
        await run_step(ep, delivery(b"routed"), clients)
        with pytest.raises(DeliveryError) as caught:  # no binding matches "globex.push"
            await run_step(endpoint(step("globex.push", exchange=exchange), spec(rabbitmq_url)),
                           delivery(b"lost"), clients)
    _, props, body = broker.get(queue)
    assert (body, props.delivery_mode) == (b"routed", 1)
    assert not caught.value.retryable and "unroutable" in str(caught.value)
    assert broker.count(queue) == 0


async def test_unroutable_and_missing_exchange_are_not_retried(rabbitmq_url: str) -> None:
    async with Clients() as clients:
        with pytest.raises(DeliveryError) as unroutable:
            await run_step(endpoint(step(f"no-queue-{uuid.uuid4().hex}"), spec(rabbitmq_url)),
                           delivery(), clients)
        with pytest.raises(DeliveryError) as missing:
            await run_step(endpoint(step("k", exchange=f"no-exchange-{uuid.uuid4().hex}"),
                                    spec(rabbitmq_url)), delivery(), clients)
    assert not unroutable.value.retryable
    assert not missing.value.retryable and "NotFound" in str(missing.value), missing.value


async def test_refused_credentials_are_not_retried_and_never_shown(rabbitmq_url: str) -> None:
    ep = endpoint(step("q"), spec(rabbitmq_url, username="guest", password="wrong-s3cret"))
    async with Clients() as clients:
        with pytest.raises(DeliveryError) as caught:
            await run_step(ep, delivery(), clients)
    assert not caught.value.retryable, caught.value
    assert str(caught.value).startswith("rabbitmq:acme/dest: ")
    assert "wrong-s3cret" not in str(caught.value)


async def test_down_is_retryable() -> None:
    ep = endpoint(step("q"), {"type": "amqp", "url": f"amqp://127.0.0.1:{free_port()}/",
                              "allow_private": True, "timeout_s": 2})
    async with Clients() as clients:
        with pytest.raises(DeliveryError) as caught:
            await run_step(ep, delivery(), clients)
    assert caught.value.retryable


async def test_loopback_refused_without_allow_private(rabbitmq_url: str) -> None:
    ep = endpoint(step("q"), spec(rabbitmq_url, allow_private=False))
    async with Clients() as clients:
        with pytest.raises(SsrfBlocked):
            await run_step(ep, delivery(), clients)

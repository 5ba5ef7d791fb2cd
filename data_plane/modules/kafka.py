"""`kafka` step: produce the webhook body to a Kafka topic with `acks=all`.

The record's value is the raw body, its key `config.key` with `{id}`, `{namespace}` and
`{webhook}` filled in (no key: the partitioner spreads records), its headers `whplane-id`,
`whplane-namespace`, `whplane-webhook` and the request's `content-type`. The step succeeds
once every in-sync replica has the record. One producer per Connection.

A partition leader that refuses connections fails the attempt at once (retryable), and the
producer is replaced: the next attempt bootstraps again, and fails at once too while every
bootstrap server refuses. (aiokafka itself would retry the send until the step's timeout.)

The SSRF guard checks the bootstrap servers of the URL, and the producer bootstraps from the
checked addresses; the brokers the cluster then advertises are dialled as advertised (that is
how Kafka works), which is why a tenant's Kafka Connection needs the admin's `allow_private`
for any private target (docs/security.md).

aiokafka is imported on first use.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from typing import Any

from data_plane.clients import Clients, Conn, Target, connection
from data_plane.delivery import Delivery
from data_plane.errors import DeliveryError
from providers.connection_spec import KafkaConnectionSpec
from providers.destination_steps import KafkaStep
from providers.snapshot import Endpoint

_KIND = "kafka"
_PLACEHOLDER = re.compile(r"\{(id|namespace|webhook)\}")


def record_key(template: str | None, delivery: Delivery) -> bytes | None:
    if template is None:
        return None
    values = {"id": delivery.id, "namespace": delivery.namespace, "webhook": delivery.webhook}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template).encode()


async def run(step: KafkaStep, endpoint: Endpoint, delivery: Delivery, clients: Clients) -> None:
    from aiokafka.errors import KafkaError

    conn = connection(step, endpoint, KafkaConnectionSpec)
    timeout_s = step.timeout_s or conn.spec.timeout_s
    topic = step.config.topic
    key = record_key(step.config.key, delivery)
    headers = [("whplane-id", delivery.id.encode()),
               ("whplane-namespace", delivery.namespace.encode()),
               ("whplane-webhook", delivery.webhook.encode())]
    content_type = delivery.headers.get("content-type")
    if content_type:
        headers.append(("content-type", content_type.encode()))
    try:
        async with asyncio.timeout(timeout_s):
            producer = await clients.pooled(_KIND, conn, lambda targets: _start(conn, targets),
                                            _stop, default_port=9092)
            partition = await _partition(producer, topic, key)
            if not await _leader_ready(producer, topic, partition):
                # aiokafka would retry the send every retry_backoff_ms until the step's
                # timeout; a broker that refuses fails the attempt now. A new producer
                # bootstraps again: the cluster may be back elsewhere.
                clients.discard(_KIND, conn)
                raise DeliveryError("Kafka broker unreachable", destination=conn.destination)
            await producer.send_and_wait(topic, delivery.body, key=key, partition=partition,
                                         headers=headers)
    except TimeoutError:
        raise DeliveryError(f"timed out after {timeout_s:g}s",
                            destination=conn.destination) from None
    except KafkaError as exc:
        if type(exc).__name__ in ("KafkaConnectionError", "NoBrokersAvailable"):
            clients.discard(_KIND, conn)
        raise DeliveryError(f"Kafka {type(exc).__name__}", destination=conn.destination,
                            retryable=bool(getattr(exc, "retriable", False))
                            or type(exc).__name__ in _RETRYABLE) from None


# Not marked retriable by aiokafka, yet passing: a topic being created, a restarting broker.
_RETRYABLE = frozenset({"KafkaConnectionError", "NoBrokersAvailable", "KafkaTimeoutError",
                        "UnknownTopicOrPartitionError", "RequestTimedOutError"})


async def _partition(producer: Any, topic: str, key: bytes | None) -> int:
    """The partition the producer's default partitioner would pick (by the key's hash, else at
    random among those with a leader): picked here to know the broker the record goes to."""
    from aiokafka.partitioner import DefaultPartitioner

    partitions = sorted(await producer.partitions_for(topic))
    available = producer.client.cluster.available_partitions_for_topic(topic) or ()
    return int(DefaultPartitioner()(key, partitions, list(available)))


async def _leader_ready(producer: Any, topic: str, partition: int) -> bool:
    """False when the partition's leader refuses a connection (one connect attempt when the
    producer has none to it; none when it has); True too while no leader is known."""
    from aiokafka.structs import TopicPartition

    client = producer.client
    leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
    if leader is None or leader < 0:
        return True  # being elected: the send waits for it, within the step's timeout
    return bool(await client.ready(leader))


async def _start(conn: Conn, targets: tuple[Target, ...]) -> Any:
    from aiokafka import AIOKafkaProducer

    spec: KafkaConnectionSpec = conn.spec
    # With TLS the certificate names the broker, so bootstrap by name; else by checked address.
    bootstrap = [f"{t.name if spec.tls else t.host}:{t.port}" for t in targets]
    options: dict[str, Any] = {}
    if spec.username is not None:
        options = {"sasl_mechanism": spec.sasl_mechanism, "sasl_plain_username": spec.username,
                   "sasl_plain_password": spec.password or ""}
    protocol = ("SASL_" if spec.username is not None else "") + ("SSL" if spec.tls else
                                                                 "PLAINTEXT")
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        # Idempotence needs InitProducerId, which not every Kafka-protocol broker has (tansu);
        # delivery is at least once either way: the worker retries a failed step.
        enable_idempotence=False,
        request_timeout_ms=int(spec.timeout_s * 1000),
        security_protocol=protocol,
        ssl_context=ssl.create_default_context() if spec.tls else None,
        client_id="whplane",
        **options,
    )
    try:
        await producer.start()
    except BaseException:
        await producer.stop()
        raise
    return producer


async def _stop(producer: Any) -> None:
    await producer.stop()

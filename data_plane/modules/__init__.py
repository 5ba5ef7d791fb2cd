"""Delivery modules: one per `spec.chain.steps[].module`, each a `Runner`.

    await MODULES[step.module](step, endpoint, delivery, clients)

A runner returns when the destination has the webhook and raises `DeliveryError` when it has
not (`retryable` says whether trying later can help). Runners are cancellation-safe: the chain
cancels them on its timeout or, in parallel mode, when a sibling fails.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any

from data_plane.clients import Clients
from data_plane.delivery import Delivery
from data_plane.modules import (
    clickhouse,
    file,
    http,
    kafka,
    log,
    mqtt,
    mysql,
    nats,
    postgres,
    rabbitmq,
    redis_publish,
    redis_rq,
    redis_stream,
    relay,
    s3,
    sqs,
    stomp,
    websocket,
    zeromq,
)
from providers.snapshot import Endpoint

Runner = Callable[[Any, Endpoint, Delivery, Clients], Awaitable[None]]

MODULES: Mapping[str, Runner] = MappingProxyType(
    {
        "log": log.run,
        "http": http.run,
        "redis_stream": redis_stream.run,
        "redis_publish": redis_publish.run,
        "file": file.run,
        "rabbitmq": rabbitmq.run,
        "postgres": postgres.run,
        "mysql": mysql.run,
        "nats": nats.run,
        "mqtt": mqtt.run,
        "kafka": kafka.run,
        "clickhouse": clickhouse.run,
        "s3": s3.run,
        "sqs": sqs.run,
        "stomp": stomp.run,
        "zeromq": zeromq.run,
        "websocket": websocket.run,
        "redis_rq": redis_rq.run,
        "relay": relay.run,
    }
)

__all__ = ["MODULES", "Runner"]

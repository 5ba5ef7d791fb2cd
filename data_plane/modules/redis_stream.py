"""`redis_stream` step: XADD the webhook to a Redis stream.

Entry fields: id, namespace, webhook, body (raw bytes), headers (JSON object), received_at
(Unix seconds, as `repr(float)`). With `config.maxlen` the stream is capped approximately
(`MAXLEN ~`), which Redis trims in whole macro-nodes: cheap, and never below the cap.
"""

from __future__ import annotations

import orjson

from data_plane.clients import REDIS_ERRORS, Clients, connection_spec, redis_failure
from data_plane.delivery import Delivery
from providers.resources import RedisConnectionSpec
from providers.snapshot import Endpoint
from providers.step_spec import RedisStreamStep


async def run(
    step: RedisStreamStep, endpoint: Endpoint, delivery: Delivery, clients: Clients
) -> None:
    spec, destination = connection_spec(step, endpoint, RedisConnectionSpec)
    headers = delivery.headers
    fields = (
        b"id", delivery.id.encode(),
        b"namespace", delivery.namespace.encode(),
        b"webhook", delivery.webhook.encode(),
        b"body", delivery.body,
        b"headers", orjson.dumps(headers if type(headers) is dict else dict(headers)),
        b"received_at", repr(delivery.received_at).encode(),
    )  # fmt: skip
    try:
        # Group-committed with the other deliveries' XADDs to this Redis: one round trip.
        await clients.stream_appender(spec).append(step.config.stream, step.config.maxlen,
                                                   fields)
    except REDIS_ERRORS as exc:
        raise redis_failure(exc, destination) from None

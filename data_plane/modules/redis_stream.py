"""`redis_stream` step: XADD the webhook to a Redis stream.

Entry fields: id, namespace, webhook, body (raw bytes), headers (JSON object), received_at
(Unix seconds, as `repr(float)`). With `config.maxlen` the stream is capped approximately
(`MAXLEN ~`), which Redis trims in whole macro-nodes: cheap, and never below the cap.
"""

from __future__ import annotations

import json

from redis.typing import EncodableT, FieldT

from data_plane.clients import REDIS_ERRORS, Clients, connection_spec, redis_failure
from data_plane.delivery import Delivery
from providers.resources import RedisConnectionSpec
from providers.snapshot import Endpoint
from providers.step_spec import RedisStreamStep


async def run(
    step: RedisStreamStep, endpoint: Endpoint, delivery: Delivery, clients: Clients
) -> None:
    spec, destination = connection_spec(step, endpoint, RedisConnectionSpec)
    fields: dict[FieldT, EncodableT] = {
        "id": delivery.id,
        "namespace": delivery.namespace,
        "webhook": delivery.webhook,
        "body": delivery.body,
        "headers": json.dumps(dict(delivery.headers), separators=(",", ":")),
        "received_at": repr(delivery.received_at),
    }
    try:
        await clients.redis(spec).xadd(
            step.config.stream, fields, maxlen=step.config.maxlen, approximate=True
        )
    except REDIS_ERRORS as exc:
        raise redis_failure(exc, destination) from None

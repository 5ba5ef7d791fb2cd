"""`redis_publish` step: PUBLISH the webhook to a Redis channel as a JSON envelope.

    {"id": ..., "namespace": ..., "webhook": ..., "received_at": 1700000000.123,
     "headers": {...}, "body": "...", "body_encoding": "utf-8" | "base64"}

The body is text when it is valid UTF-8 (JSON webhooks, form posts), base64 otherwise. Pub/sub
is fire-and-forget: no subscriber listening is not a failure. The `file` module writes the same
envelope.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

from data_plane.clients import REDIS_ERRORS, Clients, connection_spec, redis_failure
from data_plane.delivery import Delivery
from providers.resources import RedisConnectionSpec
from providers.snapshot import Endpoint
from providers.step_spec import RedisPublishStep

log = logging.getLogger(__name__)


def envelope(delivery: Delivery) -> dict[str, Any]:
    """The webhook as a JSON-ready dict (see the module doc)."""
    try:
        body, encoding = delivery.body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        body, encoding = base64.b64encode(delivery.body).decode("ascii"), "base64"
    return {
        "id": delivery.id,
        "namespace": delivery.namespace,
        "webhook": delivery.webhook,
        "received_at": delivery.received_at,
        "headers": dict(delivery.headers),
        "body": body,
        "body_encoding": encoding,
    }


def envelope_json(delivery: Delivery) -> bytes:
    # ensure_ascii keeps the line free of raw control or odd Unicode line separators.
    return json.dumps(envelope(delivery), separators=(",", ":")).encode("ascii")


async def run(
    step: RedisPublishStep, endpoint: Endpoint, delivery: Delivery, clients: Clients
) -> None:
    spec, destination = connection_spec(step, endpoint, RedisConnectionSpec)
    try:
        receivers = await clients.redis(spec).publish(step.config.channel, envelope_json(delivery))
    except REDIS_ERRORS as exc:
        raise redis_failure(exc, destination) from None
    if not receivers and log.isEnabledFor(logging.DEBUG):
        log.debug("published %s to %s with no subscriber", delivery.id, destination)

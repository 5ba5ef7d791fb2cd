"""`relay` step: append the webhook to its relay channel's durable buffer in Redis.

The step succeeds once Redis has the message (see data_plane/relay/store.py for what that
means for durability); connectors take it from there (docs/relay.md). A full buffer is a
`DestinationFull`: a sync sender is answered 503 with Retry-After, an async delivery is
retried like any other failure. Never a silent drop.
"""

from __future__ import annotations

from data_plane.clients import REDIS_ERRORS, Clients, redis_failure
from data_plane.delivery import Delivery
from data_plane.errors import DeliveryError, DestinationFull
from data_plane.relay.store import RelayFull, attached
from providers.snapshot import Endpoint
from providers.step_spec import RelayStep

RETRY_AFTER_FULL_S = 5.0


async def run(step: RelayStep, endpoint: Endpoint, delivery: Delivery, clients: Clients) -> None:
    channel = step.config.channel
    destination = f"relay:{delivery.namespace}/{channel}"
    store = attached(clients)
    if store is None:
        raise DeliveryError("the relay needs Redis (WH_REDIS_URL)", destination=destination)
    try:
        await store.append(delivery.namespace, channel, delivery, step.config.max_messages)
    except RelayFull as exc:
        raise DestinationFull(f"buffer full ({exc.max_messages} messages)",
                              destination=destination,
                              retry_after_s=RETRY_AFTER_FULL_S) from None
    except TimeoutError:
        raise DeliveryError("Redis TimeoutError", destination=destination) from None
    except REDIS_ERRORS as exc:
        raise redis_failure(exc, destination) from None

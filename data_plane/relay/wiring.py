"""How a gateway process gets its relay: the store the `relay` steps write to, and the hub
the connector routes serve from. Both need the gateway's Redis; without it there is no relay
(the steps fail retryably, the routes answer 503)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from data_plane.metrics import RelayMetrics
from data_plane.relay.hub import RelayHub, register_probes
from data_plane.relay.store import RelayStore, attach

if TYPE_CHECKING:
    from data_plane.gateway import Gateway


def relay_store(gateway: Gateway) -> RelayStore | None:
    """The relay store of `gateway`, attached to its clients for the `relay` module."""
    if gateway.redis is None:
        return None
    store = RelayStore(gateway.redis, RelayMetrics.create(gateway.metrics.registry))
    attach(gateway.clients, store)
    return store


def relay_hub(gateway: Gateway) -> RelayHub | None:
    """The store (see `relay_store`) and the hub serving `/connect/`, its probes registered."""
    store = relay_store(gateway)
    if store is None:
        return None
    assert store.metrics is not None
    hub = RelayHub(store, lambda: gateway.holder.current, store.metrics)
    register_probes(hub, gateway.metrics)
    return hub

"""One connection of a connector to a channel: a consumer of the channel's group.

`next(wait_s)` hands out messages while the connection's in-flight window has room (the
window is its consumer's pending entries in Redis, see store.py), waiting up to `wait_s` for
one; `settle` applies the connector's acks and nacks. A session that ends releases what it
still holds, so the next connection gets it at once rather than after the visibility timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time

from data_plane.relay.channels import Channel
from data_plane.relay.store import RelayStore, Taken
from data_plane.relay.wire import Settlement
from providers.backoff import backoff

RETRY_BASE_S = 1.0  # first retry after a local failure: up to 1 s, doubling, up to the timeout


def new_session_id() -> str:
    return secrets.token_hex(8)


class Session:
    def __init__(self, store: RelayStore, channel: Channel, transport: str, window: int,
                 session_id: str | None = None, *, block_s: float = 1.0) -> None:
        self.store = store
        self.channel = channel
        self.transport = transport
        self.window = max(1, min(window, channel.config.max_in_flight))
        self.id = session_id or new_session_id()
        # Poll sessions are named by the connector across requests; the prefix keeps them
        # apart from server-named ones.
        self.consumer = f"{transport}-{self.id}"
        self.block_s = block_s
        self.last_seen = time.monotonic()
        self._settled = asyncio.Event()

    @property
    def visibility_s(self) -> float:
        return self.channel.config.visibility_timeout_s

    def seen(self) -> None:
        self.last_seen = time.monotonic()

    async def next(self, wait_s: float) -> list[Taken]:
        """Messages for this connection (at most its free window), or [] after `wait_s`."""
        ns, name = self.channel.namespace, self.channel.name
        deadline = time.monotonic() + wait_s
        while True:
            # Cleared before the take, not after: an ack landing during it must still wake
            # the wait below.
            self._settled.clear()
            free, taken = await self.store.take(ns, name, self.consumer, self.window,
                                                self.visibility_s)
            if taken:
                return taken
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            # Bounded waits: what becomes claimable meanwhile (a release, a retry falling
            # due) does not wake a blocked read, the next round's take finds it.
            if free > 0:
                taken = await self.store.read_new(ns, name, self.consumer, free,
                                                  min(left, self.block_s))
                if taken:
                    return taken
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, self.block_s)):
                        await self._settled.wait()

    async def settle(self, settlement: Settlement) -> tuple[int, int]:
        """Apply acks and nacks; (acked, dead-lettered)."""
        self.seen()
        acked = dead = 0
        if settlement.acks:
            acked = await self.store.ack(self.channel.namespace, self.channel.name,
                                         list(settlement.acks))
        for entry_id, error in settlement.nacks:
            dead += await nack(self.store, self.channel, entry_id, error)
        if acked or settlement.nacks:
            self._settled.set()
        return acked, dead

    async def release(self) -> int:
        return await self.store.release(self.channel.namespace, self.channel.name,
                                        self.consumer, self.visibility_s)


async def nack(store: RelayStore, channel: Channel, entry_id: str, error: str) -> int:
    """Report one local failure; 1 if it sent the message to the dead letters."""
    config = channel.config
    failures = await store.failures(channel.namespace, channel.name, entry_id)
    delay = backoff(failures, RETRY_BASE_S, config.visibility_timeout_s)
    n = await store.nack(channel.namespace, channel.name, entry_id, error,
                         max_attempts=config.max_attempts,
                         visibility_s=config.visibility_timeout_s, delay_s=delay)
    return int(n == 0)

"""The relay's state in one gateway process: its open sessions, the channel index, the
releases still running, and a housekeeping loop (buffer depth for the metrics, removal of
consumers nobody uses any more). Created and closed by the gateway app's lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

from data_plane.metrics import GatewayMetrics, RelayMetrics
from data_plane.relay.channels import Channel, Channels
from data_plane.relay.session import Session
from data_plane.relay.store import RelayStore
from providers.snapshot import Snapshot

log = logging.getLogger(__name__)

HOUSEKEEPING_S = 10.0
STALE_CONSUMER_S = 3600.0  # a consumer holding nothing, unseen this long, is removed
MAX_PROBED_CHANNELS = 1000  # buffer depth is reported for at most this many channels


class TooManySessions(Exception):
    """The process or the channel has as many open sessions as it allows."""


class RelayHub:
    def __init__(self, store: RelayStore, current: Callable[[], Snapshot],
                 metrics: RelayMetrics, *, heartbeat_s: float = 10.0,
                 max_sessions: int = 1000, max_sessions_per_channel: int = 64) -> None:
        self.store = store
        self.channels = Channels(current)
        self.metrics = metrics
        self.heartbeat_s = heartbeat_s
        self.max_sessions = max_sessions
        self.max_sessions_per_channel = max_sessions_per_channel
        self.sessions: dict[str, Session] = {}  # bounded by max_sessions
        self._per_channel: Counter[tuple[str, str]] = Counter()
        self._releases: set[asyncio.Task[None]] = set()  # bounded by the sessions that ended
        self._housekeeping: asyncio.Task[None] | None = None
        self.depths: dict[str, float] = {}

    # -- sessions -------------------------------------------------------------------------

    def open(self, channel: Channel, transport: str, window: int) -> Session:
        at = (channel.namespace, channel.name)
        if len(self.sessions) >= self.max_sessions:
            raise TooManySessions(f"this gateway serves {self.max_sessions} sessions already")
        if self._per_channel[at] >= self.max_sessions_per_channel:
            raise TooManySessions(f"channel has {self.max_sessions_per_channel} sessions already")
        session = Session(self.store, channel, transport, window)
        self.sessions[session.id] = session
        self._per_channel[at] += 1
        return session

    def close(self, session: Session) -> None:
        """Forget the session and release what it holds, in a task of its own: a connection
        handler ending on cancellation cannot await it reliably."""
        if self.sessions.pop(session.id, None) is None:
            return
        at = (session.channel.namespace, session.channel.name)
        self._per_channel[at] -= 1
        if self._per_channel[at] <= 0:
            del self._per_channel[at]
        task = asyncio.get_running_loop().create_task(self._release(session),
                                                      name=f"relay release {session.id}")
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, session: Session) -> None:
        try:
            held = await session.release()
            if held:
                log.info("relay %s/%s: session %s ended holding %d messages, released",
                         session.channel.namespace, session.channel.name, session.id, held)
        except Exception as exc:  # they come back after the visibility timeout anyway
            log.warning("relay %s/%s: releasing session %s failed (%s); its messages return "
                        "after the visibility timeout", session.channel.namespace,
                        session.channel.name, session.id, type(exc).__name__)

    def by_transport(self) -> dict[str, float]:
        counts: Counter[str] = Counter(s.transport for s in self.sessions.values())
        return {t: float(counts.get(t, 0)) for t in ("ws", "sse")}

    # -- lifespan -------------------------------------------------------------------------

    def start(self) -> None:
        self._housekeeping = asyncio.get_running_loop().create_task(
            self._housekeep(), name="relay housekeeping")

    async def aclose(self, timeout_s: float = 5.0) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            await asyncio.gather(self._housekeeping, return_exceptions=True)
        for session in list(self.sessions.values()):
            self.close(session)
        if self._releases:
            _, late = await asyncio.wait(list(self._releases), timeout=timeout_s)
            for task in late:
                task.cancel()

    async def _housekeep(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            depths: dict[str, float] = {}
            for channel in self.channels.all()[:MAX_PROBED_CHANNELS]:
                ns, name = channel.namespace, channel.name
                try:
                    depths[f"{ns}/{name}"] = await self.store.depth(ns, name)
                    await self.store.sweep(ns, name, STALE_CONSUMER_S)
                except Exception as exc:  # Redis down or no group yet: next round
                    log.debug("relay housekeeping of %s/%s: %r", ns, name, exc)
            self.depths = depths


def register_probes(hub: RelayHub, metrics: GatewayMetrics) -> None:
    metrics.probe_by("whplane_relay_sessions", "Open relay sessions by transport",
                     "transport", hub.by_transport)
    metrics.probe_by("whplane_relay_buffer_depth",
                     "Messages in a relay channel's buffer, not yet acknowledged",
                     "channel", lambda: hub.depths)

"""The background task that promotes or aborts a running canary by itself (`canary.assess`).

One per control-plane process, started and cancelled by the app's lifespan. Every
`WH_CANARY_CHECK_S` it reads the canary record and the gateways; a decision is a
compare-and-swap commit, so several control planes may run it on one store.
"""

from __future__ import annotations

import asyncio
import logging

from control_plane.canary import CanarySettings
from control_plane.metrics import ApiMetrics
from control_plane.service import ControlPlane
from providers.backoff import backoff

log = logging.getLogger(__name__)
CHECK_TIMEOUT_S = 60.0  # one judgement, reads and the commit included


class CanaryWatch:
    def __init__(self, service: ControlPlane, settings: CanarySettings,
                 metrics: ApiMetrics | None = None) -> None:
        self.service = service
        self.settings = settings
        self.metrics = metrics
        self.decisions = 0

    async def run(self) -> None:
        failures = 0
        while True:
            delay = self.settings.check_s
            try:
                async with asyncio.timeout(CHECK_TIMEOUT_S):
                    decision = await self.service.decide_canary()
                    if decision is not None:
                        self.decisions += 1
                    if self.metrics is not None:
                        if decision is not None:
                            self.metrics.canary_decisions.labels(decision.action,
                                                                 "automatic").inc()
                        running = await self.service.store.canary() is not None
                        self.metrics.canary_running.set(1 if running else 0)
                failures = 0
            except Exception as exc:
                # Logged when it happens, then retried: a store outage must not end the watch.
                log.warning("canary check failed (attempt %d): %s: %s", failures + 1,
                            type(exc).__name__, exc, exc_info=failures == 0)
                delay = max(delay, backoff(failures, base=1.0, cap=30.0))
                failures += 1
            await asyncio.sleep(delay)

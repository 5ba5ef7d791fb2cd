"""The gateway's state: every long-lived object, created in one place, started and stopped by the
app's lifespan. Nothing here is module-level; tests build as many gateways as they like."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Mapping
from functools import partial
from typing import Any

from data_plane.chain import run_chain
from data_plane.clients import Clients
from data_plane.compiled import CompiledCache
from data_plane.delivery import Delivery
from data_plane.dlq import DeadLetters
from data_plane.errors import DeliveryError
from data_plane.idempotency import Idempotency
from data_plane.ids import IdSource
from data_plane.metrics import GatewayMetrics
from data_plane.queue import DeliveryQueue
from data_plane.ratelimit import RateLimiter
from data_plane.redis_connect import RedisClient, parse_redis_url
from data_plane.redis_connect import connect as redis_connect
from data_plane.refusals import Refusals
from data_plane.registration import VERSION, heartbeat_loop, registrar_for
from data_plane.settings import GatewaySettings
from data_plane.worker import Worker
from providers.holder import SnapshotHolder
from providers.last_good import LastGood
from providers.open import open_provider
from providers.provider import ProviderState
from providers.resources import Namespace, ResourceKey, Retry, Webhook
from providers.secret_cache import SecretCache
from providers.snapshot import Snapshot
from providers.vault_client import VaultClient, VaultSettings

log = logging.getLogger(__name__)
LOAD_TIMEOUT_S = 120.0


class Gateway:
    def __init__(self, settings: GatewaySettings, env: Mapping[str, str]) -> None:
        self.settings = settings
        self.started_at = time.time()
        self.provider = open_provider(settings.config, env)
        vault = VaultSettings.from_env(env)
        self.vault = VaultClient(vault) if vault is not None else None
        self.secrets = (
            SecretCache(self.vault, ttl_s=settings.secret_ttl) if self.vault is not None else None
        )
        tag = hashlib.sha256(settings.config.encode()).hexdigest()[:12]
        self.holder = SnapshotHolder(
            env=env,
            secrets=self.secrets,
            last_good=LastGood(settings.state_dir / f"last-good-{tag}.jsonl"),
            source=settings.config,
            secret_ttl_s=settings.secret_ttl,
            labels=settings.labels,
        )
        self._refusals = Refusals.of(self.holder.current)
        # Set on every published snapshot: the heartbeat reports a new revision or a changed
        # set of refused resources at once, not a heartbeat later.
        self._published = asyncio.Event()
        self.holder.on_publish(self._on_publish)
        self.compiled = CompiledCache()
        self.ids = IdSource()
        self.clients = Clients()
        self.redis: RedisClient | None = None
        wait_replicas = 0
        if settings.redis_url:
            self.redis = redis_connect(settings.redis_url)
            replicated = parse_redis_url(settings.redis_url).replicated
            wait_replicas = (settings.redis_wait_replicas if settings.redis_wait_replicas
                             is not None else int(replicated))  # fmt: skip
        self.queue = (
            DeliveryQueue(self.redis, max_backlog=settings.max_backlog,
                          wait_replicas=wait_replicas,
                          wait_timeout_ms=settings.redis_wait_timeout_ms)
            if self.redis is not None else None
        )  # fmt: skip
        self.dlq = DeadLetters(self.redis) if self.redis is not None else None
        self.limiter = RateLimiter(self.redis)
        self.idempotency = Idempotency(self.redis) if self.redis is not None else None
        self.worker = (
            Worker(
                self.redis,
                deliver=self.deliver,
                retry_policy=self.retry_policy,
                consumer=settings.gateway_id,
                concurrency=settings.worker_concurrency,
                claim_idle_s=settings.claim_idle_s,
            )
            if self.redis is not None and settings.delivery_worker
            else None
        )
        self.registrar = registrar_for(settings.config, env, settings.gateway_id,
                                       settings.heartbeat_s)
        self._queue_depth: int | None = None
        self._dlq_size: int | None = None
        self.metrics = GatewayMetrics.create({
            "whplane_config_revision": ("Config revision being served",
                                        lambda: self.holder.current.revision),
            "whplane_config_errors": ("Resources whose latest version is not in force",
                                      lambda: len(self.holder.current.errors)),
            "whplane_ready": ("1 once a config is loaded", lambda: float(self.holder.ready)),
            "whplane_provider_connected": (
                "1 while the config store is reachable",
                lambda: float(self.provider.status.state is ProviderState.CONNECTED)),
            "whplane_vault_reachable": ("1 while Vault answers", self._vault_up),
            "whplane_queue_depth": ("Async deliveries waiting", lambda: self._queue_depth),
            "whplane_dlq_size": ("Dead-lettered deliveries", lambda: self._dlq_size),
            "whplane_ratelimit_degraded": (
                "1 while rate limits are local because Redis is unreachable",
                lambda: float(self.limiter.degraded)),
            "whplane_worker_in_flight": (
                "Deliveries being attempted",
                lambda: self.worker.stats.in_flight if self.worker else None),
        }, counters={
            "whplane_worker_delivered": ("Async deliveries completed by this process",
                                         lambda: self._worker_stat("delivered")),
            "whplane_worker_retried": ("Async delivery retries scheduled",
                                       lambda: self._worker_stat("retried")),
            "whplane_worker_dead_lettered": ("Deliveries moved to the dead-letter queue",
                                             lambda: self._worker_stat("dead_lettered")),
            "whplane_worker_reclaimed": ("Deliveries taken over from dead consumers",
                                         lambda: self._worker_stat("reclaimed")),
            "whplane_config_resyncs": ("Full reloads forced by the watch watchdog (a stuck watch)",
                                       lambda: self.provider.status.resyncs),
        })  # fmt: skip
        self.metrics.registry.register(self.clients.metrics)  # per-module deliveries, circuits
        self.metrics.probe_by(
            "whplane_refused_resources",
            "Resources of the served revision this gateway refuses, by namespace",
            "namespace", lambda: self.refusals().by_namespace)
        self._tasks: list[asyncio.Task[Any]] = []

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        # Each page of a full read has its own deadline (a dead store fails fast, and the last
        # good config serves); the whole read of a million resources takes longer than 10 s.
        self._tasks.append(asyncio.create_task(
            self.holder.run(self.provider, load_timeout_s=LOAD_TIMEOUT_S), name="config"))
        if self.worker is not None:
            self._tasks.append(asyncio.create_task(self._run_worker(), name="worker"))
        if self.redis is not None:
            self._tasks.append(asyncio.create_task(self._probe_loop(), name="probes"))
        if self.registrar is not None:
            self._tasks.append(asyncio.create_task(heartbeat_loop(
                self.registrar, self.record, self.settings.heartbeat_s, self._published,
            ), name="registration"))  # fmt: skip

    async def stop(self) -> None:
        """Stop everything, each step bounded: a dead dependency must not hang the shutdown."""
        if self.worker is not None:
            await _bounded("worker", self.worker.stop(timeout=10), 15)
        for task in self._tasks:
            task.cancel()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        for task, result in zip(self._tasks, results, strict=True):
            if isinstance(result, Exception) and not isinstance(result, asyncio.CancelledError):
                log.error("task %s ended with %r", task.get_name(), result)
        await _bounded("last good config", self.holder.flush(paced=False), 10)
        if self.registrar is not None:
            await _bounded("registration", self.registrar.close(), 5)
        await _bounded("config provider", self.provider.close(), 5)
        await _bounded("outbound clients", self.clients.aclose(), 5)
        if self.queue is not None:
            await _bounded("queue", self.queue.aclose(), 5)
        await _bounded("rate limiter", self.limiter.aclose(), 5)
        if self.idempotency is not None:
            await _bounded("idempotency", self.idempotency.aclose(), 5)
        if self.redis is not None:
            await _bounded("redis", self.redis.aclose(), 5)
        if self.vault is not None:
            self.vault.close()

    async def _run_worker(self) -> None:
        # Deliveries are judged against the config: without one, every webhook would look
        # deleted and be dead-lettered.
        await self.holder.wait_ready()
        assert self.worker is not None
        await self.worker.run()

    async def _probe_loop(self) -> None:
        while True:
            try:
                if self.queue is not None:
                    self._queue_depth = await self.queue.depth()
                if self.dlq is not None:
                    self._dlq_size = await self.dlq.size()
            except Exception as exc:  # Redis down: the gauges go stale, the status says why
                log.debug("probe failed: %s", exc)
                self._queue_depth = self._dlq_size = None
            await asyncio.sleep(5)

    def _worker_stat(self, name: str) -> float | None:
        return float(getattr(self.worker.stats, name)) if self.worker is not None else None

    def _vault_up(self) -> float | None:
        if self.secrets is None:
            return None
        reachable = self.secrets.status.reachable
        return None if reachable is None else float(reachable)

    # -- used by the hot path (data_plane.ingest.IngestHost) ----------------------------------

    async def rate_limited(
        self, ns: str, name: str, hook: Webhook, namespace: Namespace | None
    ) -> float | None:
        """Seconds to wait when the webhook's or its namespace's limit is exhausted."""
        limits = hook.spec.limits
        if limits.rate_per_second is not None:
            d = await self.limiter.check(
                f"wh:{ns}:{name}", limits.rate_per_second, limits.burst
            )
            if not d.allowed:
                return d.retry_after_s
        if namespace is not None and namespace.spec.limits.rate_per_second is not None:
            nl = namespace.spec.limits
            d = await self.limiter.check(f"ns:{ns}", nl.rate_per_second, nl.burst)  # type: ignore[arg-type]
            if not d.allowed:
                return d.retry_after_s
        return None

    async def first_time(self, ns: str, name: str, key: str, window_s: float) -> bool:
        if self.idempotency is None:
            return True  # no shared store to remember deliveries in
        try:
            return await self.idempotency.first_time(ns, name, key, window_s)
        except Exception as exc:  # better a duplicate than a lost webhook
            log.warning("idempotency check failed, delivering anyway: %s", exc)
            return True

    async def forget(self, ns: str, name: str, key: str) -> None:
        if self.idempotency is None:
            return
        try:
            await self.idempotency.forget(ns, name, key)
        except Exception as exc:
            log.warning("could not forget delivery key after a failure: %s", exc)

    # -- used by the delivery worker --------------------------------------------------------

    async def deliver(self, delivery: Delivery) -> None:
        endpoint = self.holder.current.endpoint(delivery.namespace, delivery.webhook)
        if endpoint is None:
            raise DeliveryError(
                f"webhook {delivery.namespace}/{delivery.webhook} no longer configured",
                retryable=False, destination="config",
            )  # fmt: skip
        result = await run_chain(endpoint, delivery, self.clients)
        if result.ok:
            self.metrics.delivery(delivery.namespace, "async", "ok")
            return
        self.metrics.delivery(delivery.namespace, "async", "failed")
        assert result.error is not None
        raise result.error

    def _on_publish(self, snap: Snapshot) -> None:
        self._published.set()
        self.clients.retain(partial(_connection_exists, snap))

    def retry_policy(self, delivery: Delivery) -> Retry | None:
        hook = self.holder.current.webhook(delivery.namespace, delivery.webhook)
        return hook.spec.delivery.retry if hook is not None else None

    # -- reporting --------------------------------------------------------------------------

    def refusals(self) -> Refusals:
        """What the served snapshot refuses, computed once per snapshot."""
        snap = self.holder.current
        if self._refusals.snapshot is not snap:
            self._refusals = Refusals.of(snap)
        return self._refusals

    def health(self) -> str:
        if not self.holder.ready:
            return "starting"
        if self.provider.status.state is not ProviderState.CONNECTED or self.refusals().total:
            return "degraded"
        return "ok"

    def record(self) -> dict[str, Any]:
        """The registration record: what the control plane knows of this gateway.

        `revision` is the snapshot served; `refused` lists the resources of it that this
        gateway refuses (bounded, `refused_total` counts them all), so the control plane never
        counts it as serving a revision whose resource it did not take.
        """
        snap = self.holder.current
        refusals = self.refusals()
        last_error = self.provider.status.last_error or next(iter(snap.errors.values()), None)
        return {
            "id": self.settings.gateway_id,
            "revision": snap.revision,
            "version": VERSION,
            "health": self.health(),
            "last_error": last_error,
            "started_at": self.started_at,
            "labels": dict(self.settings.labels),
            "refused": refusals.reported(),
            "refused_total": refusals.total,
            "source_errors": list(refusals.source_errors),
            "stats": {"requests": self.metrics.requests_total,
                      "errors": self.metrics.errors_total},
        }

    def status(self) -> dict[str, Any]:
        snap = self.holder.current
        ps = self.provider.status
        errors = dict(list(snap.errors.items())[:100])
        return {
            **self.record(),
            "ready": self.holder.ready,
            "started_from_last_good": self.holder.started_from_last_good,
            "namespaces": snap.webhook_counts(),
            "resources": len(snap),
            "provider": {"url": ps.url, "state": ps.state.value, "endpoint": ps.endpoint,
                         "last_error": ps.last_error, "reconnects": ps.reconnects,
                         "resyncs": ps.resyncs},
            "vault": _vault_status(self.secrets),
            "redis": {"configured": self.redis is not None,
                      "ratelimit_degraded": self.limiter.degraded,
                      "queue_depth": self._queue_depth, "dlq_size": self._dlq_size},
            "errors": errors,
            "errors_total": len(snap.errors),
        }


async def _bounded(what: str, step: Any, timeout: float) -> None:
    try:
        await asyncio.wait_for(step, timeout)
    except TimeoutError:
        log.warning("stopping %s took over %.0fs; went on without it", what, timeout)
    except Exception as exc:
        log.warning("stopping %s failed: %s", what, exc)


def _vault_status(secrets: SecretCache | None) -> dict[str, Any]:
    if secrets is None:
        return {"configured": False}
    st = secrets.status
    return {"configured": True, "reachable": st.reachable, "cached": st.cached,
            "last_error": st.last_error, "last_refresh": st.last_refresh}


def _connection_exists(snap: Snapshot, key: str) -> bool:
    """Whether the Connection of a pooled client's key ("namespace/name" or "name") is in
    `snap`."""
    namespace, _, name = key.rpartition("/")
    return ResourceKey("Connection", namespace or None, name) in snap.entries

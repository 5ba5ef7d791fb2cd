"""`redis_rq` step: enqueue an RQ job that calls `config.function` with the webhook.

The job's one argument is the `redis_publish` envelope (a dict: id, namespace, webhook,
received_at, headers, body, body_encoding); its job id is the delivery id, enqueued with RQ's
`unique=True`, so a retry or a replay never enqueues the same delivery twice while RQ keeps the
job. The step succeeds once Redis has the job on `config.queue` (RQ's own enqueue, in a worker
thread: RQ speaks synchronous redis-py).

The Connection is a `redis` one (admin-only, like every Redis Connection). rq is imported on
first use.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from data_plane.clients import REDIS_ERRORS, Clients, Conn, connection, redis_failure
from data_plane.delivery import Delivery
from data_plane.errors import DeliveryError
from data_plane.modules.redis_publish import envelope
from providers.destination_steps import RedisRqStep
from providers.resources import RedisConnectionSpec
from providers.snapshot import Endpoint

_KIND = "redis_rq"


@dataclass(frozen=True, slots=True)
class _PoolSpec:
    """What `Clients.pooled` needs of a spec. Redis Connections are the admin's alone (the
    tenant rules refuse them), so there is no SSRF check to make; equal exactly when the
    Connection is, so a changed Connection gets a new client."""

    connection: RedisConnectionSpec
    url: str
    timeout_s: float
    allow_private: bool = True


async def run(step: RedisRqStep, endpoint: Endpoint, delivery: Delivery, clients: Clients) -> None:
    found = connection(step, endpoint, RedisConnectionSpec)
    spec: RedisConnectionSpec = found.spec
    conn = Conn(found.key, _PoolSpec(spec, spec.url, spec.timeout_s), found.destination)
    timeout_s = step.timeout_s or spec.timeout_s
    args = (step.config.queue, step.config.function, envelope(delivery), delivery.id)
    try:
        async with asyncio.timeout(timeout_s):
            client = await clients.pooled(_KIND, conn, lambda _: _connect(spec), _close,
                                          default_port=6379)
            # The socket timeouts bound the thread too: it cannot outlive the step for long.
            await asyncio.to_thread(_enqueue, client, *args)
    except TimeoutError:
        raise DeliveryError(f"timed out after {timeout_s:g}s",
                            destination=conn.destination) from None
    except REDIS_ERRORS as exc:
        raise redis_failure(exc, conn.destination) from None


def _enqueue(client: Any, queue: str, function: str, job: dict[str, Any], job_id: str) -> None:
    from rq import Queue
    from rq.exceptions import DuplicateJobError

    try:
        Queue(queue, connection=client).enqueue(function, job, job_id=job_id, unique=True)
    except DuplicateJobError:
        pass  # enqueued by an earlier attempt: that one counts


async def _connect(spec: RedisConnectionSpec) -> Any:
    import redis

    return redis.Redis.from_url(
        spec.url, username=spec.username, password=spec.password,
        socket_timeout=spec.timeout_s, socket_connect_timeout=spec.timeout_s,
        max_connections=64,
    )  # fmt: skip


async def _close(client: Any) -> None:
    await asyncio.to_thread(client.close)



"""Fleet registration: each gateway records itself in the store so the control plane can tell
which live gateways applied which revision.

etcd: `{prefix}gateways/{id}` under a lease (TTL = 3 heartbeats), so a dead gateway disappears
by itself. Directory store (a `..data`-published directory): `{dir}/gateways/{id}.json`,
rewritten atomically each heartbeat; readers treat an old heartbeat as gone.

Registration heals: a lease that expired (the process was paused longer than its TTL) or was
revoked is replaced within the same beat, and the heartbeat loop outlives any error, logging it
when it happens and retrying with backoff. A gateway leaves the fleet only by stopping.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import aetcd.exceptions
import grpc

from providers.backoff import backoff
from providers.errors import StoreUnavailable
from providers.etcd_conn import EtcdConnection, EtcdSettings
from providers.file import DATA_LINK
from providers.store_keys import gateway_key

log = logging.getLogger(__name__)
VERSION = "0.1.0"


class Registrar(Protocol):
    async def beat(self, record: Mapping[str, Any]) -> None: ...
    async def close(self) -> None: ...


class EtcdRegistrar:
    def __init__(self, settings: EtcdSettings, gateway_id: str, ttl_s: int) -> None:
        self._conn = EtcdConnection(settings)
        self._key = gateway_key(settings.prefix, gateway_id).encode()
        self._ttl = max(2, ttl_s)
        # The lease's id, not aetcd's Lease object: that one is bound to the client it was
        # granted through, which a failover closes.
        self._lease_id: int | None = None
        self.leases_granted = 0

    @property
    def lease_id(self) -> int | None:
        return self._lease_id

    async def beat(self, record: Mapping[str, Any]) -> None:
        value = json.dumps(record).encode()

        async def put(client: Any) -> None:
            lease = await self._live_lease(client)
            try:
                await client.put(self._key, value, lease=lease)
            except aetcd.exceptions.ClientError as exc:
                if not _lease_gone(exc):
                    raise
                # Revoked or expired between the keep-alive and the put.
                log.warning("gateway lease %x: %s; taking a new one", lease, exc)
                self._lease_id = None
                await client.put(self._key, value, lease=await self._live_lease(client))

        try:
            await self._conn.call(put)
        except StoreUnavailable:
            self._lease_id = None  # the next member may be another cluster's view: start over
            raise

    async def _live_lease(self, client: Any) -> int:
        """The current lease, kept alive; a new one when it expired or was revoked."""
        if self._lease_id is not None:
            reply = await client.refresh_lease(self._lease_id)
            # etcd answers a keep-alive of an unknown lease with TTL 0, not an error.
            if reply is not None and reply.TTL > 0:
                return self._lease_id
            log.warning("gateway lease %x expired or was revoked; registering again",
                        self._lease_id)
        lease = await client.lease(self._ttl)
        self._lease_id = int(lease.id)
        self.leases_granted += 1
        return self._lease_id

    async def close(self) -> None:
        lease_id = self._lease_id
        if lease_id is not None:
            try:
                await self._conn.call(lambda c: c.revoke_lease(lease_id))
            except Exception as exc:  # the lease expires by itself anyway
                log.debug("revoking gateway lease: %s", exc)
        await self._conn.close()


def _lease_gone(exc: aetcd.exceptions.ClientError) -> bool:
    """Whether etcd refused a put because its lease does not exist (any more)."""
    cause = exc.__cause__
    if isinstance(cause, grpc.aio.AioRpcError):
        return cause.code() is grpc.StatusCode.NOT_FOUND
    return "lease not found" in str(exc)


class DirectoryRegistrar:
    def __init__(self, root: Path, gateway_id: str) -> None:
        self._dir = root / "gateways"
        self._path = self._dir / f"{gateway_id}.json"

    async def beat(self, record: Mapping[str, Any]) -> None:
        await asyncio.to_thread(self._write, json.dumps(record))

    def _write(self, text: str) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".hb-", dir=self._dir)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, self._path)

    async def close(self) -> None:
        await asyncio.to_thread(self._path.unlink, missing_ok=True)


def registrar_for(config_url: str, env: Mapping[str, str], gateway_id: str,
                  heartbeat_s: float) -> Registrar | None:
    if config_url.startswith("etcd://"):
        return EtcdRegistrar(EtcdSettings.from_url(config_url, env), gateway_id,
                             int(heartbeat_s * 3 + 0.5))
    if config_url.startswith("file:"):
        root = Path(config_url.removeprefix("file:").removeprefix("//"))
        if (root / DATA_LINK).exists():  # a store directory, not an operator's own files
            return DirectoryRegistrar(root, gateway_id)
    return None


async def heartbeat_loop(
    registrar: Registrar, record: Callable[[], Mapping[str, Any]], every_s: float,
    changed: asyncio.Event,
) -> None:
    """Beat every `every_s`, and at once when `changed` is set (a new snapshot was published:
    another revision, or another set of refused resources).

    Never ends but by cancellation: a failed beat is logged when it happens and retried with
    backoff, whatever it raised, so a gateway cannot drop out of the fleet for good.
    """
    attempt = 0
    while True:
        changed.clear()  # before the beat: a publish during it triggers the next one
        try:
            await registrar.beat({**record(), "heartbeat": time.time()})
        except (StoreUnavailable, OSError) as exc:
            log.warning("gateway registration failed: %s", exc)
        except Exception:
            log.exception("gateway registration failed unexpectedly; retrying")
        else:
            if attempt:
                log.info("gateway registered again after %d failed heartbeats", attempt)
            attempt = 0
            try:
                await asyncio.wait_for(changed.wait(), every_s)
            except TimeoutError:
                pass
            continue
        # Within a heartbeat, so a healed store sees the gateway back before its record's
        # TTL (3 heartbeats) runs out; jittered, so a fleet does not retry in step.
        await asyncio.sleep(min(every_s, backoff(attempt, base=0.5)))
        attempt += 1

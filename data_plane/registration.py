"""Fleet registration: each gateway records itself in the store so the control plane can tell
which live gateways applied which revision.

etcd: `{prefix}gateways/{id}` under a lease (TTL = 3 heartbeats), so a dead gateway disappears
by itself. Directory store (a `..data`-published directory): `{dir}/gateways/{id}.json`,
rewritten atomically each heartbeat; readers treat an old heartbeat as gone.
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
        self._lease: Any = None

    async def beat(self, record: Mapping[str, Any]) -> None:
        value = json.dumps(record).encode()

        async def put(client: Any) -> None:
            if self._lease is None:
                self._lease = await client.lease(self._ttl)
            else:
                try:
                    await self._lease.refresh()
                except Exception:  # lease expired or member changed: take a new one
                    self._lease = await client.lease(self._ttl)
            await client.put(self._key, value, lease=self._lease)

        try:
            await self._conn.call(put)
        except StoreUnavailable:
            self._lease = None
            raise

    async def close(self) -> None:
        if self._lease is not None:
            try:
                await self._conn.call(lambda c: c.revoke_lease(self._lease.id))
            except Exception as exc:
                log.debug("revoking gateway lease: %s", exc)
        await self._conn.close()


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
    changed: Callable[[], Any],
) -> None:
    """Beat every `every_s`, and at once when the applied revision changes."""
    attempt = 0
    while True:
        try:
            await registrar.beat({**record(), "heartbeat": time.time()})
            attempt = 0
            timeout = every_s
        except (StoreUnavailable, OSError) as exc:
            log.warning("gateway registration failed: %s", exc)
            timeout = min(every_s, backoff(attempt, base=0.5))
            attempt += 1
        try:
            await asyncio.wait_for(changed(), timeout)
        except TimeoutError:
            pass

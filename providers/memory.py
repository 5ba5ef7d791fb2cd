"""An in-memory provider: a store you drive by hand, for tests and embedding.

Each `commit()` is one revision, delivered to watchers as one batch, like an etcd transaction.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from providers.provider import ChangeBatch, ProviderState, ProviderStatus, RawDoc
from providers.resources import ResourceKey


class MemoryProvider:
    def __init__(self) -> None:
        self._data: dict[ResourceKey, RawDoc] = {}
        self._log: list[ChangeBatch] = []
        self._revision = 0
        self._pending_puts: dict[ResourceKey, RawDoc] = {}
        self._pending_deletes: set[ResourceKey] = set()
        self._changed = asyncio.Condition()
        self._closed = False

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def status(self) -> ProviderStatus:
        state = ProviderState.CLOSED if self._closed else ProviderState.CONNECTED
        return ProviderStatus(state=state, url="memory:")

    def put(self, doc: Mapping[str, Any] | bytes, key: ResourceKey | None = None) -> None:
        if key is None:
            parsed = json.loads(doc) if isinstance(doc, bytes) else doc
            meta = parsed["metadata"]
            key = ResourceKey(parsed["kind"], meta.get("namespace"), meta["name"])
        self._pending_deletes.discard(key)
        self._pending_puts[key] = doc if isinstance(doc, bytes) else json.dumps(doc).encode()

    def delete(self, key: ResourceKey) -> None:
        self._pending_puts.pop(key, None)
        self._pending_deletes.add(key)

    async def commit(self) -> int:
        self._revision += 1
        batch = ChangeBatch(
            revision=self._revision,
            puts=dict(self._pending_puts),
            deletes=frozenset(self._pending_deletes),
        )
        self._data.update(batch.puts)
        for key in batch.deletes:
            self._data.pop(key, None)
        self._pending_puts.clear()
        self._pending_deletes.clear()
        async with self._changed:
            self._log.append(batch)
            self._changed.notify_all()
        return self._revision

    async def load(self) -> ChangeBatch:
        return ChangeBatch(revision=self._revision, puts=dict(self._data), full=True)

    async def watch(self, after_revision: int) -> AsyncIterator[ChangeBatch]:
        sent = after_revision
        while not self._closed:
            async with self._changed:
                await self._changed.wait_for(functools.partial(self._news, sent))
            for batch in [b for b in self._log if b.revision > sent]:
                sent = batch.revision
                yield batch

    def _news(self, after: int) -> bool:
        return self._revision > after or self._closed

    async def close(self) -> None:
        self._closed = True
        async with self._changed:
            self._changed.notify_all()

"""The etcd provider's convergence watchdog: a watch that stops delivering without failing is
noticed by comparing what it delivered with the store's config revision, and a full reload
follows; a watch that keeps up is never second-guessed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import aetcd

from cli.servers import EtcdServer
from control_plane.changes import plan
from control_plane.etcd_store import EtcdStore
from control_plane.store import Draft
from providers.etcd import EtcdProvider
from providers.etcd_conn import EtcdSettings
from providers.provider import ChangeBatch
from providers.resources import ResourceKey
from providers.store_keys import resource_key
from tests.docs import webhook

PREFIX = "/wd/"


class Deaf(EtcdProvider):
    """A provider whose watch goes silent on demand, as a stuck stream would: no error, no
    event, while the store moves on. A full reload hears again."""

    deaf = False

    async def _batches(self, client: aetcd.Client, events: Iterable[Any]
                       ) -> AsyncIterator[ChangeBatch]:
        if self.deaf:
            return
        async for batch in super()._batches(client, events):
            yield batch

    async def load(self) -> ChangeBatch:
        self.deaf = False
        return await super().load()


class Collect:
    def __init__(self, provider: EtcdProvider) -> None:
        self.provider = provider
        self.batches: list[ChangeBatch] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        first = await self.provider.load()
        self.batches.append(first)
        async for batch in self.provider.watch(first.revision):
            self.batches.append(batch)

    async def until(self, check: Any, timeout: float = 10) -> ChangeBatch:
        deadline = time.monotonic() + timeout
        while True:
            for batch in self.batches:
                if check(batch):
                    return batch
            assert time.monotonic() < deadline, [(b.revision, b.full) for b in self.batches]
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.provider.close()


def key(name: str) -> str:
    return resource_key(PREFIX, ResourceKey("Webhook", "acme", name))


def hook(name: str) -> bytes:
    return json.dumps(webhook(name, secret="{$S}")).encode()


async def test_stuck_watch_is_noticed_and_reloaded(etcd_own: EtcdServer) -> None:
    url = f"etcd://{etcd_own.endpoint}{PREFIX}?watchdog=0.3"
    provider = Deaf(EtcdSettings.from_url(url))
    run = Collect(provider)
    try:
        await run.until(lambda b: b.full)
        etcd_own.put(key("a"), hook("a"))
        await run.until(lambda b: not b.full and any(k.name == "a" for k in b.puts))
        provider.deaf = True
        etcd_own.put(key("b"), hook("b"))
        t0 = time.monotonic()
        batch = await run.until(lambda b: b.full and any(k.name == "b" for k in b.puts))
        # Interval plus grace, plus the reload: well under a few seconds.
        assert time.monotonic() - t0 < 3
        assert {k.name for k in batch.puts} == {"a", "b"}
        assert provider.status.resyncs == 1
        # Heard again: the next write arrives as an ordinary change.
        etcd_own.put(key("c"), hook("c"))
        await run.until(lambda b: not b.full and any(k.name == "c" for k in b.puts))
        assert provider.status.resyncs == 1
    finally:
        await run.stop()


async def test_a_watch_that_keeps_up_is_never_reloaded(etcd_own: EtcdServer) -> None:
    """Applies small and large (whose materialization the watch does not deliver), direct
    writes and deletes, checked many times over: no resync."""
    url = f"etcd://{etcd_own.endpoint}{PREFIX}"
    run = Collect(EtcdProvider(EtcdSettings.from_url(url + "?watchdog=0.2")))
    store = EtcdStore(EtcdSettings.from_url(url))
    try:
        await run.until(lambda b: b.full)
        ns = {"apiVersion": "whplane/v1", "kind": "Namespace", "metadata": {"name": "acme"}}
        for size in (1, 300, 5):
            revision, current = await store.read()
            wanted = {ResourceKey("Namespace", None, "acme"): ns}
            wanted.update({ResourceKey("Webhook", "acme", f"h{i}"):
                           webhook(f"h{i}", secret="{$S}", limits={"burst": size})
                           for i in range(size)})
            changes, puts, removed = plan(current, wanted)
            new = await store.commit(Draft(puts, removed, tuple(
                c for c in changes if c.op != "unchanged"), "test", f"{size}"), revision)
            await run.until(lambda b, new=new: b.revision == new)
        etcd_own.put(key("direct"), hook("direct"))
        etcd_own.delete_prefix(key("h1"))
        await asyncio.sleep(1.5)  # several watchdog rounds, materialization included
        assert run.provider.status.resyncs == 0
        assert [b.full for b in run.batches].count(True) == 1
    finally:
        await run.stop()
        await store.close()

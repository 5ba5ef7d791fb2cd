"""Config provider for `etcd://HOST:PORT[,HOST:PORT...]/PREFIX`.

`load()` reads `{prefix}resources/` at one revision R (paged, so 100k keys stay within message
limits); `watch(R)` streams from exactly R + 1, so nothing written between the two is missed.
One batch per store revision: the events of one transaction share their `mod_revision`, and
etcd never splits a revision across watch responses (we do not ask for fragments).

On a broken stream it reconnects (next endpoint, exponential backoff with jitter) and resumes
after the last revision it delivered. If that revision was compacted meanwhile, or the store is
a different cluster or went back in time, it reloads everything and yields a `full` batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aetcd
import aetcd.exceptions
import grpc
from aetcd import rpc

from providers.backoff import backoff
from providers.errors import ProviderError, RevisionCompacted, StoreUnavailable
from providers.etcd_conn import (
    EtcdConnection,
    EtcdSettings,
    describe,
    prefix_range_end,
    range_prefix,
)
from providers.provider import ChangeBatch, ProviderState, ProviderStatus, RawDoc
from providers.resources import ResourceKey
from providers.store_keys import RESOURCES, meta_key, parse_resource_key

log = logging.getLogger(__name__)
_STREAM_ERRORS = (grpc.aio.AioRpcError, aetcd.exceptions.ClientError, OSError, TimeoutError)
_PUT = rpc.Event.PUT


@dataclass(frozen=True, slots=True)
class _Loaded:
    batch: ChangeBatch
    cluster_id: int


class EtcdProvider:
    def __init__(self, settings: EtcdSettings) -> None:
        self.settings = settings
        self._conn = EtcdConnection(settings)
        self._prefix = settings.prefix
        self._key = (settings.prefix + RESOURCES).encode()
        self._meta = meta_key(settings.prefix).encode()
        self._position = 0  # store revision the last full load was read at
        self._end = prefix_range_end(self._key)
        self._state = ProviderState.CONNECTING
        self._last_error: str | None = None
        self._reconnects = 0
        self._cluster_id: int | None = None
        self._closed = asyncio.Event()

    @classmethod
    def from_url(cls, url: str, env: Mapping[str, str] | None = None) -> EtcdProvider:
        return cls(EtcdSettings.from_url(url, env))

    @property
    def status(self) -> ProviderStatus:
        return ProviderStatus(
            state=self._state,
            url=self.settings.url,
            endpoint=self._conn.endpoint,
            last_error=self._last_error,
            reconnects=self._reconnects,
        )

    # -- load -------------------------------------------------------------------------------

    async def load(self) -> ChangeBatch:
        try:
            loaded = await self._conn.call(self._range_all)
        except StoreUnavailable as exc:
            self._mark_down(exc)
            raise
        self._cluster_id = loaded.cluster_id
        self._position = loaded.batch.position
        self._mark_up()
        return loaded.batch

    async def _range_all(self, client: aetcd.Client) -> _Loaded:
        puts: dict[ResourceKey, RawDoc] = {}
        errors: list[str] = []
        header, kvs = await range_prefix(client, self._key, self.settings.timeout_s)
        for kv in kvs:
            self._put(kv, puts, errors)
        # Label the snapshot with the config's own revision (the latest apply, or the newest
        # resource written directly), not etcd's current one, which heartbeats move: every
        # gateway with the same config then reports the same revision.
        meta = await client.kvstub.Range(
            rpc.RangeRequest(key=self._meta, revision=header.revision, keys_only=True),
            timeout=self.settings.timeout_s, metadata=client.metadata,
        )  # fmt: skip
        config_revision = max([kv.mod_revision for kv in (*kvs, *meta.kvs)], default=0)
        return _Loaded(
            ChangeBatch(config_revision, puts, full=True, source_errors=tuple(errors),
                        position=header.revision),
            header.cluster_id,
        )

    def _put(self, kv: rpc.KeyValue, puts: dict[ResourceKey, RawDoc], errors: list[str]) -> None:
        try:
            puts[parse_resource_key(self._prefix, kv.key.decode())] = kv.value
        except (ValueError, UnicodeDecodeError) as exc:
            errors.append(f"{kv.key!r}: {exc}")

    # -- watch ------------------------------------------------------------------------------

    async def watch(self, after_revision: int) -> AsyncIterator[ChangeBatch]:
        last = max(after_revision, self._position)
        attempt = 0
        while not self._closed.is_set():
            try:
                async for batch in self._stream(last):
                    attempt = 0
                    last = batch.revision
                    yield batch
            except (RevisionCompacted, _Restart) as exc:
                log.warning("etcd cannot resume after revision %d (%s): full reload", last, exc)
                reloaded = await self._reload_or_none()
                if reloaded is not None:
                    last = reloaded.resume_after
                    yield reloaded
                    continue
            except (ProviderError, *_STREAM_ERRORS) as exc:
                self._mark_down(exc)
                await self._conn.failover()
            if self._closed.is_set():
                break
            self._reconnects += 1
            delay = backoff(attempt, cap=3.0)  # a config store back up is noticed within 3 s
            attempt += 1
            log.info("reconnecting to etcd in %.2fs (from revision %d)", delay, last + 1)
            try:
                await asyncio.wait_for(self._closed.wait(), delay)
            except TimeoutError:
                pass

    async def _reload_or_none(self) -> ChangeBatch | None:
        try:
            return await self.load()
        except StoreUnavailable:
            return None

    async def _stream(self, after: int) -> AsyncIterator[ChangeBatch]:
        client = await self._conn.client()
        # Ask where the store is first: a cluster that changed identity or went back in time
        # cannot resume from `after`.
        head = await client.kvstub.Range(
            rpc.RangeRequest(key=self._key, range_end=self._end, count_only=True),
            timeout=self.settings.timeout_s,
            metadata=client.metadata,
        )
        if self._cluster_id is not None and head.header.cluster_id != self._cluster_id:
            raise _Restart("cluster identity changed")
        if head.header.revision < after:
            raise _Restart(f"store revision {head.header.revision} is behind {after}")
        self._mark_up()

        stop = asyncio.Event()

        async def requests() -> AsyncIterator[rpc.WatchRequest]:
            yield rpc.WatchRequest(
                create_request=rpc.WatchCreateRequest(
                    key=self._key, range_end=self._end, start_revision=after + 1,
                    progress_notify=True,
                )
            )  # fmt: skip
            await stop.wait()

        call = rpc.WatchStub(client.channel).Watch(requests(), metadata=client.metadata)
        closer = asyncio.create_task(self._cancel_on_close(call))
        try:
            async for resp in call:
                if resp.compact_revision:
                    raise RevisionCompacted(resp.compact_revision)
                if resp.canceled:
                    raise StoreUnavailable(f"watch canceled: {resp.cancel_reason or 'no reason'}")
                for batch in self._batches(resp.events):
                    yield batch
        finally:
            stop.set()
            closer.cancel()
            call.cancel()

    async def _cancel_on_close(self, call: object) -> None:
        await self._closed.wait()
        call.cancel()  # type: ignore[attr-defined]

    def _batches(self, events: object) -> list[ChangeBatch]:
        out: list[ChangeBatch] = []
        revision = None
        puts: dict[ResourceKey, RawDoc] = {}
        deletes: set[ResourceKey] = set()
        errors: list[str] = []
        for ev in events:  # type: ignore[attr-defined]
            rev = ev.kv.mod_revision
            if revision is not None and rev != revision:
                out.append(ChangeBatch(revision, puts, frozenset(deletes), False, tuple(errors)))
                puts, deletes, errors = {}, set(), []
            revision = rev
            if ev.type == _PUT:
                self._put(ev.kv, puts, errors)
                continue
            try:
                key = parse_resource_key(self._prefix, ev.kv.key.decode())
            except (ValueError, UnicodeDecodeError):
                continue  # a stray key that never was a resource
            puts.pop(key, None)
            deletes.add(key)
        if revision is not None:
            out.append(ChangeBatch(revision, puts, frozenset(deletes), False, tuple(errors)))
        return out

    # -- state ------------------------------------------------------------------------------

    def _mark_up(self) -> None:
        self._state = ProviderState.CONNECTED
        self._last_error = None

    def _mark_down(self, exc: BaseException) -> None:
        self._state = ProviderState.DISCONNECTED
        self._last_error = describe(exc)
        log.warning("etcd %s: %s", self._conn.endpoint, self._last_error)

    async def close(self) -> None:
        self._closed.set()
        self._state = ProviderState.CLOSED
        await self._conn.close()


class _Restart(Exception):
    """The watch cannot resume where it stopped; a full reload is needed."""

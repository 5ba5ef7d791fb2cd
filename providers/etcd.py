"""Config provider for `etcd://HOST:PORT[,HOST:PORT...]/PREFIX`.

`load()` reads `[{prefix}r, {prefix}s)` — resources/ and rollout/ — at one revision R (paged, so
100k keys stay within message limits); `watch(R)` streams the same range from exactly R + 1, so
nothing written between the two is missed. One batch per store revision: the events of one
transaction share their `mod_revision`, and etcd never splits a revision across watch
responses (we do not ask for fragments).

An apply too large for one transaction arrives as a commit record naming a staged change set
(providers/staged_commits.py): the whole change set becomes the batch of the commit's revision,
and the writes that later materialize it into resources/ are dropped as echoes, so a gateway
sees the apply at once and its label never moves past the apply's revision.

The canary record `{prefix}rollout/canary` travels in the batch of the revision that set or
removed it; full batches carry the current one and, while it runs, what the canary revision
changed as it was before (from its history record).

On a broken stream it reconnects (next endpoint, exponential backoff with jitter) and resumes
after the last revision it processed. If that revision was compacted meanwhile, or the store is
a different cluster or went back in time, it reloads everything and yields a `full` batch.

A watchdog compares, every `watchdog_s`, the revision the watch has processed with the store's
config revision; a store still ahead after a grace period means the watch is stuck without
knowing it: it reloads everything and counts a resync.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import aetcd
import aetcd.exceptions
import grpc
from aetcd import rpc

from providers.backoff import backoff
from providers.errors import ProviderError, RevisionCompacted, StoreUnavailable
from providers.etcd_conn import (
    FULL_READ_PAGE_BYTES,
    EtcdConnection,
    EtcdSettings,
    describe,
    range_pages,
)
from providers.paged_docs import PagedDocs
from providers.provider import ChangeBatch, ProviderState, ProviderStatus, RawDoc
from providers.resources import GLOBAL, KINDS, ResourceKey
from providers.rollout import Canary
from providers.staged_commits import (
    Marker,
    Materializing,
    Pending,
    StagedCommitError,
    overlay_keyed,
    read_history,
    read_pending,
)
from providers.store_keys import (
    COMMITS,
    RESOURCES,
    canary_key,
    materialized_key,
    meta_key,
    parse_resource_key,
    watch_range,
)

log = logging.getLogger(__name__)
_STREAM_ERRORS = (grpc.aio.AioRpcError, aetcd.exceptions.ClientError, OSError, TimeoutError)
_PUT = rpc.Event.PUT
# A stuck watch is declared only if the store stays ahead this long after being seen ahead.
WATCHDOG_GRACE_S = 5.0


@dataclass(frozen=True, slots=True)
class _Loaded:
    batch: ChangeBatch
    cluster_id: int
    pending: tuple[Pending, ...]


class EtcdProvider:
    def __init__(self, settings: EtcdSettings) -> None:
        self.settings = settings
        self._conn = EtcdConnection(settings)
        p = settings.prefix
        self._prefix = p
        self._start, self._end = watch_range(p)
        self._resources = (p + RESOURCES).encode()
        self._commits = (p + COMMITS).encode()
        self._canary = canary_key(p).encode()
        self._marker = materialized_key(p).encode()
        self._meta = meta_key(p).encode()
        self._position = 0  # store revision the last full load was read at
        self._seen = 0  # store revision the watch has processed up to
        # Since when the watch has been waiting on etcd with nothing to process (None: busy,
        # or its consumer is): only such a wait can be a stuck watch.
        self._idle_since: float | None = None
        self._memory = Materializing()
        # A commit too large to remember: its materialization is not delivered, and a full
        # reload follows it.
        self._blind: str | None = None
        self._state = ProviderState.CONNECTING
        self._last_error: str | None = None
        self._reconnects = 0
        self._resyncs = 0
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
            resyncs=self._resyncs,
        )

    # -- load -------------------------------------------------------------------------------

    async def load(self) -> ChangeBatch:
        try:
            loaded = await self._conn.call(self._range_all, paged=True)
        except StoreUnavailable as exc:
            self._mark_down(exc)
            raise
        self._cluster_id = loaded.cluster_id
        self._position = self._seen = loaded.batch.position
        self._memory.clear()
        self._blind = None
        for pending in loaded.pending:
            self._remember(pending)
        self._mark_up()
        return loaded.batch

    async def _range_all(self, client: aetcd.Client) -> _Loaded:
        # A commit may finish materializing (and its staging vanish) between the range read
        # and reading its staging: then read again, after it.
        for _ in range(5):
            try:
                return await self._range_once(client)
            except StagedCommitError as exc:
                log.info("re-reading: %s", exc)
        raise StoreUnavailable("the store kept changing under a full read")

    async def _range_once(self, client: aetcd.Client) -> _Loaded:
        timeout = self.settings.timeout_s
        header: Any = None
        keys = _KeyParser(self._prefix)
        docs = PagedDocs()  # each etcd key is one resource key: no page repeats a key
        newest = 0
        errors: list[str] = []
        pending: list[Pending] = []
        marker: Marker | None = None
        canary_kv: Any = None
        prefix = self._resources
        async for page in range_pages(client, self._start, self._end, timeout, page=5_000,
                                      page_bytes=FULL_READ_PAGE_BYTES):
            if header is None:
                header = page.header
            kvs = page.kvs
            found: list[ResourceKey | None] = []
            for kv in kvs:
                key = kv.key
                if key.startswith(prefix):
                    found.append(keys.parse(key, errors))
                    newest = max(newest, kv.mod_revision)
                else:
                    found.append(None)
                    if key.startswith(self._commits):
                        pending.append(await read_pending(client, self._prefix, kv, timeout))
                    elif key == self._marker:
                        marker = Marker.parse(kv.value)
                    elif key == self._canary:
                        canary_kv = kv
            docs.add_page(kvs, found)
        meta = await client.kvstub.Range(
            rpc.RangeRequest(key=self._meta, revision=header.revision, keys_only=True),
            timeout=timeout, metadata=client.metadata,
        )  # fmt: skip
        # Label the snapshot with the config's own revision (the latest apply, or the newest
        # resource written directly), not etcd's current one, which heartbeats move: every
        # gateway with the same config then reports the same revision.
        config_revision = max([kv.mod_revision for kv in meta.kvs], default=0)
        puts: Mapping[ResourceKey, RawDoc] = docs
        if pending:
            values = dict(docs.items())
            revisions = dict(zip(docs.keys(), docs.revisions(), strict=True))
            commits = [(p.revision, keys.pending(p, errors)) for p in pending]
            labels = overlay_keyed(values, revisions, commits, marker)
            config_revision = max(config_revision, max(labels.values(), default=0))
            puts = values
        elif marker is not None:
            at = marker.at
            config_revision = max(config_revision, max(
                (marker.revision if rev in at else rev for rev in docs.revisions()), default=0))
        else:
            config_revision = max(config_revision, newest)
        canary = self._parse_canary(canary_kv, errors) if canary_kv is not None else None
        before = await self._canary_before(client, canary, errors) if canary else None
        batch = ChangeBatch(config_revision, puts, full=True, source_errors=tuple(errors),
                            position=header.revision, canary_changed=True, canary=canary,
                            canary_before=before)
        return _Loaded(batch, header.cluster_id, tuple(pending))

    async def _canary_before(self, client: aetcd.Client, canary: Canary,
                             errors: list[str]) -> dict[ResourceKey, RawDoc | None] | None:
        """What the canary revision changed, as it was before it (its history record)."""
        record = await read_history(client, self._prefix, canary.revision,
                                    self.settings.timeout_s)
        if record is None:
            errors.append(f"canary: no history record of revision {canary.revision}")
            return None
        out: dict[ResourceKey, RawDoc | None] = {}
        for change in record.get("changes", ()):
            if change.get("op") == "unchanged":
                continue
            key = ResourceKey(change["kind"], change.get("namespace"), change["name"])
            before = change.get("before")
            out[key] = json.dumps(before).encode() if before is not None else None
        return out

    def _parse_canary(self, kv: Any, errors: list[str]) -> Canary | None:
        try:
            return with_revision(Canary.from_json(bytes(kv.value)), kv.mod_revision)
        except ValueError as exc:
            # Treated as no canary: every gateway serves the store as it is.
            errors.append(f"canary: {exc}")
            return None

    def _put(self, key: bytes, value: bytes, puts: dict[ResourceKey, RawDoc],
             errors: list[str]) -> None:
        try:
            puts[parse_resource_key(self._prefix, key.decode())] = value
        except (ValueError, UnicodeDecodeError) as exc:
            errors.append(f"{key!r}: {exc}")

    def _remember(self, pending: Pending) -> None:
        if not self._memory.remember(pending):
            log.warning("commit %s changes %d resources, more than this gateway keeps track "
                        "of while they materialize: reloading once they have",
                        pending.id, len(pending.changes))
            self._blind = pending.id

    # -- watch ------------------------------------------------------------------------------

    async def watch(self, after_revision: int) -> AsyncIterator[ChangeBatch]:
        self._seen = max(after_revision, self._position)
        attempt = 0
        while not self._closed.is_set():
            try:
                async for batch in self._stream(self._seen):
                    attempt = 0
                    yield batch
            except (RevisionCompacted, _Restart, StagedCommitError) as exc:
                log.warning("etcd cannot resume after revision %d (%s): full reload",
                            self._seen, exc)
                reloaded = await self._reload_or_none()
                if reloaded is not None:
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
            log.info("reconnecting to etcd in %.2fs (from revision %d)", delay, self._seen + 1)
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
            rpc.RangeRequest(key=self._start, range_end=self._end, count_only=True),
            timeout=self.settings.timeout_s,
            metadata=client.metadata,
        )
        if self._cluster_id is not None and head.header.cluster_id != self._cluster_id:
            raise _Restart("cluster identity changed")
        if head.header.revision < after:
            raise _Restart(f"store revision {head.header.revision} is behind {after}")
        self._mark_up()

        stop = asyncio.Event()
        stuck = asyncio.Event()

        async def requests() -> AsyncIterator[rpc.WatchRequest]:
            yield rpc.WatchRequest(
                create_request=rpc.WatchCreateRequest(
                    key=self._start, range_end=self._end, start_revision=after + 1,
                    progress_notify=True,
                )
            )  # fmt: skip
            await stop.wait()

        call = rpc.WatchStub(client.channel).Watch(requests(), metadata=client.metadata)
        helpers = [asyncio.create_task(self._cancel_on_close(call))]
        if self.settings.watchdog_s > 0:
            helpers.append(asyncio.create_task(self._watchdog(stuck)))
        try:
            async for resp in self._responses(call, stuck):
                if resp.compact_revision:
                    raise RevisionCompacted(resp.compact_revision)
                if resp.canceled:
                    raise StoreUnavailable(f"watch canceled: {resp.cancel_reason or 'no reason'}")
                async for batch in self._batches(client, resp.events):
                    yield batch
        finally:
            stop.set()
            for task in helpers:
                task.cancel()
            call.cancel()

    async def _cancel_on_close(self, call: object) -> None:
        await self._closed.wait()
        call.cancel()  # type: ignore[attr-defined]

    async def _batches(self, client: aetcd.Client, events: Iterable[Any]
                       ) -> AsyncIterator[ChangeBatch]:
        group: list[Any] = []
        for ev in events:
            if group and ev.kv.mod_revision != group[0].kv.mod_revision:
                batch = await self._batch(client, group)
                if batch is not None:
                    yield batch
                group = []
            group.append(ev)
        if group:
            batch = await self._batch(client, group)
            if batch is not None:
                yield batch

    async def _batch(self, client: aetcd.Client, events: list[Any]) -> ChangeBatch | None:
        """The batch of one store revision, or None when nothing in it concerns a reader."""
        revision = int(events[0].kv.mod_revision)
        puts: dict[ResourceKey, RawDoc] = {}
        deletes: set[ResourceKey] = set()
        errors: list[str] = []
        canary_changed, canary, relevant = False, None, False
        restart: str | None = None
        for ev in events:
            key = bytes(ev.kv.key)
            value = bytes(ev.kv.value) if ev.type == _PUT else None
            if key.startswith(self._resources):
                if self._blind is not None or self._memory.echo(key, value):
                    continue  # a materialization of what a commit already delivered
                relevant = True
                self._change(key, value, puts, deletes, errors)
            elif key == self._canary:
                relevant = canary_changed = True
                canary = self._parse_canary(ev.kv, errors) if value is not None else None
            elif key.startswith(self._commits):
                if value is None:
                    staged_id = key[len(self._commits):].decode()
                    self._memory.forget(staged_id)
                    if self._blind == staged_id:
                        restart = f"commit {staged_id} materialized"
                    continue
                pending = await read_pending(client, self._prefix, ev.kv,
                                             self.settings.timeout_s)
                relevant = True
                for k, v in pending.changes.items():
                    self._change(k, v, puts, deletes, errors)
                self._remember(pending)
        self._seen = max(self._seen, revision)
        if restart is not None:
            raise _Restart(restart)
        if not relevant:
            return None
        return ChangeBatch(revision, puts, frozenset(deletes), False, tuple(errors),
                           canary_changed=canary_changed, canary=canary)

    def _change(self, key: bytes, value: bytes | None, puts: dict[ResourceKey, RawDoc],
                deletes: set[ResourceKey], errors: list[str]) -> None:
        if value is not None:
            self._put(key, value, puts, errors)
            return
        try:
            rkey = parse_resource_key(self._prefix, key.decode())
        except (ValueError, UnicodeDecodeError):
            return  # a stray key that never was a resource
        puts.pop(rkey, None)
        deletes.add(rkey)

    async def _responses(self, call: Any, stuck: asyncio.Event) -> AsyncIterator[Any]:
        """The stream's responses, until it ends or `stuck` is set (then _Restart)."""
        it = call.__aiter__()
        flagged = asyncio.ensure_future(stuck.wait())
        nxt: asyncio.Future[Any] | None = None
        try:
            while True:
                nxt = asyncio.ensure_future(it.__anext__())
                self._idle_since = time.monotonic()
                await asyncio.wait((nxt, flagged), return_when=asyncio.FIRST_COMPLETED)
                self._idle_since = None
                if not nxt.done():
                    raise _Restart("watch stuck")
                try:
                    resp = nxt.result()
                except StopAsyncIteration:
                    return
                nxt = None
                yield resp
        finally:
            self._idle_since = None
            flagged.cancel()
            if nxt is not None and not nxt.done():
                nxt.cancel()

    # -- watchdog ---------------------------------------------------------------------------

    async def _watchdog(self, stuck: asyncio.Event) -> None:
        grace = min(WATCHDOG_GRACE_S, self.settings.watchdog_s)
        while True:
            await asyncio.sleep(self.settings.watchdog_s)
            try:
                target = await self._conn.call(self._store_revision)
            except (ProviderError, *_STREAM_ERRORS) as exc:
                log.debug("watchdog: store not readable: %s", describe(exc))
                continue
            if target <= self._seen:
                continue
            await asyncio.sleep(grace)  # an event on its way is not a stuck watch
            idle = self._idle_since
            if self._seen >= target or idle is None or time.monotonic() - idle < grace:
                continue  # caught up, or busy with what arrived: a slow reader, not a stuck one
            self._resyncs += 1
            log.warning("watch stuck: the store is at revision %d, the watch delivered up to "
                        "%d and nothing arrived for %.0f s; reloading", target, self._seen, grace)
            stuck.set()
            return

    async def _store_revision(self, client: aetcd.Client) -> int:
        """The newest revision a watcher of our range must have seen: meta/config or a key."""
        timeout = self.settings.timeout_s
        newest = await client.kvstub.Range(
            rpc.RangeRequest(key=self._start, range_end=self._end, limit=1, keys_only=True,
                             sort_order=rpc.RangeRequest.DESCEND,
                             sort_target=rpc.RangeRequest.MOD),
            timeout=timeout, metadata=client.metadata,
        )  # fmt: skip
        meta = await client.kvstub.Range(
            rpc.RangeRequest(key=self._meta, keys_only=True),
            timeout=timeout, metadata=client.metadata)
        return max([kv.mod_revision for kv in (*newest.kvs, *meta.kvs)], default=0)

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


class _KeyParser:
    """Resource keys of one full read; the kinds and namespaces they repeat are one string
    each, not one per key (a hundred thousand webhooks in ten thousand namespaces)."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._skip = len((prefix + RESOURCES).encode())
        self._kinds = {kind.encode(): kind for kind in KINDS}
        self._namespaces: dict[bytes, str | None] = {GLOBAL.encode(): None}
        # `{prefix}resources/<ns>/<Kind>/` of the last key, and its kind and namespace: keys
        # come sorted, so most share it with the one before.
        self._last: tuple[bytes, str, str | None] = (b"\xff", "", None)

    def parse(self, key: bytes, errors: list[str]) -> ResourceKey | None:
        start, kind, ns = self._last
        if key.startswith(start):
            name_b = key[len(start):]
            if name_b and b"/" not in name_b and name_b.isascii():
                return _new_tuple(ResourceKey, (kind, ns, name_b.decode()))  # type: ignore[no-any-return]
        parts = key[self._skip:].split(b"/")
        if len(parts) == 3 and parts[0] and parts[2]:
            ns_b, kind_b, name_b = parts
            known_kind = self._kinds.get(kind_b)
            known_ns = self._namespaces.get(ns_b, _UNSEEN)
            if known_ns is _UNSEEN and ns_b.isascii():  # what the general path makes of it
                known_ns = self._namespaces[ns_b] = ns_b.decode()
            if known_kind is not None and known_ns is not _UNSEEN and name_b.isascii():
                self._last = (key[:len(key) - len(name_b)], known_kind, known_ns)
                return _new_tuple(ResourceKey, (known_kind, known_ns, name_b.decode()))  # type: ignore[no-any-return]
        try:  # the general path, which also words the errors
            rkey = parse_resource_key(self._prefix, key.decode())
        except (ValueError, UnicodeDecodeError) as exc:
            errors.append(f"{key!r}: {exc}")
            return None
        if rkey.namespace is not None:
            ns = self._namespaces.setdefault(rkey.namespace.encode(), rkey.namespace)
            rkey = ResourceKey(self._kinds[rkey.kind.encode()], ns, rkey.name)
        return rkey


    def pending(self, pending: Pending, errors: list[str]) -> dict[ResourceKey, bytes | None]:
        """The changes of a pending commit by resource key (a stray key is left out)."""
        out: dict[ResourceKey, bytes | None] = {}
        for key, value in pending.changes.items():
            rkey = self.parse(key, errors)
            if rkey is not None:
                out[rkey] = value
        return out


_UNSEEN: Any = object()
_new_tuple: Any = tuple.__new__  # ResourceKey(...) without its Python-level __new__


def with_revision(canary: Canary, mod_revision: int) -> Canary:
    """The record with its revision: the control plane drafts it as 0 (an etcd commit learns
    its revision only once done), and the record is written by the canary's own commit."""
    return canary if canary.revision > 0 else replace(canary, revision=int(mod_revision))


class _Restart(Exception):
    """The watch cannot resume where it stopped; a full reload is needed."""

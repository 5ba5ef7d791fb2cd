"""Writing an apply too large for one etcd transaction: stage, commit, materialize, recover.

The protocol and what readers do are in providers/staged_commits.py. Here is the writer's side:

- `commit`: stages the change set and the history record's changes in small writes, then
  commits with one small transaction, conditional on the config revision (like any apply), on
  no other commit being unfinished, and on its staging still being there.
- `materialize`: writes the change set into resources/ in transactions of at most `TXN_OPS`
  keys and about `TXN_BYTES`, each key only if nothing wrote it after the commit; then one
  transaction removes the commit record and the staging and records which revisions did it.
  Idempotent: any number of control planes may run it on the same commit, one after another
  or at once.
- `recover`: finishes commits a killed control plane left (before every apply, and at start),
  and collects staging that no commit names once it is older than `STAGING_TTL_S`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import grpc
from aetcd import rpc

from control_plane.store import Conflict, StoreFailed
from providers.backoff import backoff
from providers.errors import ProviderError
from providers.etcd_conn import EtcdConnection, EtcdSettings, prefix_range_end, range_prefix
from providers.staged_commits import (
    Marker,
    Pending,
    StagedCommitError,
    commit_value,
    encode_chunks,
    read_pending,
    split_history,
)
from providers.store_keys import (
    COMMITS,
    RESOURCES,
    STAGING,
    commit_key,
    history_part_key,
    history_parts_prefix,
    materialized_key,
    pending_history_key,
    staging_key,
    staging_prefix,
)

log = logging.getLogger(__name__)
# Under etcd's defaults (128 operations, 1.5 MiB per request) with room for the compares and
# the request's own overhead.
TXN_OPS = 100
TXN_BYTES = 512 * 1024
STAGING_TTL_S = 60.0
GC_EVERY_S = 30.0
STAGE_PARALLEL = 4
MATERIALIZE_ATTEMPTS = 8


class LargeCommits:
    def __init__(self, conn: EtcdConnection, settings: EtcdSettings) -> None:
        self._conn = conn
        self._timeout = settings.timeout_s
        p = self._prefix = settings.prefix
        self._commits = (p + COMMITS).encode()
        self._resources = (p + RESOURCES).encode()
        self._lock = asyncio.Lock()  # one materializer per process
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_gc = 0.0

    # -- commit -----------------------------------------------------------------------------

    async def commit(self, changes: Sequence[tuple[str, str | None]], record: dict[str, Any],
                     meta_op: Any, extra_ops: Sequence[Any], base_revision: int,
                     author: str) -> tuple[int, str, dict[str, Any]]:
        """Stage `changes` (etcd key -> value text, None to delete), then commit them.

        Returns (revision, staged id, history header): the header is under the staged id's
        pending-history key until it is moved to its revision's.
        """
        staged_id = f"{int(time.time() * 1000):013d}-{uuid.uuid4().hex[:12]}"
        chunks = encode_chunks(changes)
        header, parts = split_history(record, staged_id)
        try:
            await self._stage(staged_id, chunks, parts)
            revision = await self._commit(staged_id, len(chunks), header, meta_op, extra_ops,
                                          base_revision, author)
        except BaseException:
            self._spawn(self._drop_staging(staged_id))
            raise
        pending = Pending(staged_id, revision,
                          {k.encode(): v.encode() if v is not None else None for k, v in changes})
        self._spawn(self._materialize_locked(pending, fresh=True))
        return revision, staged_id, header

    async def _stage(self, staged_id: str, chunks: list[bytes], parts: list[bytes]) -> None:
        # Chunk 0 first: the commit checks it is still there, and collecting staging deletes
        # it with everything else of the id, history parts included.
        await self._put(staging_key(self._prefix, staged_id, 0), chunks[0])
        writes = [(history_part_key(self._prefix, staged_id, i), p) for i, p in enumerate(parts)]
        writes += [(staging_key(self._prefix, staged_id, i), c)
                   for i, c in enumerate(chunks) if i > 0]
        gate = asyncio.Semaphore(STAGE_PARALLEL)

        async def put(key: str, value: bytes) -> None:
            async with gate:
                await self._put(key, value)

        await asyncio.gather(*(put(k, v) for k, v in writes))

    async def _put(self, key: str, value: bytes) -> None:
        req = rpc.PutRequest(key=key.encode(), value=value)
        await self._conn.call(lambda c: c.kvstub.Put(req, timeout=self._timeout,
                                                     metadata=c.metadata))

    async def _commit(self, staged_id: str, n_chunks: int, header: dict[str, Any],
                      meta_op: Any, extra_ops: Sequence[Any], base_revision: int,
                      author: str) -> int:
        first = staging_key(self._prefix, staged_id, 0).encode()
        meta_key = meta_op.request_put.key
        txn = rpc.TxnRequest(
            compare=[
                rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.MOD, key=meta_key,
                            mod_revision=base_revision),
                # No other commit still materializing: readers apply pending commits in
                # revision order, and a materializer must never overwrite a later commit.
                rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.VERSION,
                            key=self._commits, range_end=prefix_range_end(self._commits),
                            version=0),
                # Our staging was not collected meanwhile (a commit more than a minute late).
                rpc.Compare(result=rpc.Compare.GREATER, target=rpc.Compare.VERSION, key=first,
                            version=0),
            ],
            success=[
                _put(commit_key(self._prefix, staged_id),
                     commit_value(staged_id, n_chunks, base_revision, author, time.time())),
                meta_op,
                _put(pending_history_key(self._prefix, staged_id), json.dumps(header)),
                *extra_ops,
            ],
            failure=[
                rpc.RequestOp(request_range=rpc.RangeRequest(key=meta_key, keys_only=True)),
                rpc.RequestOp(request_range=rpc.RangeRequest(
                    key=self._commits, range_end=prefix_range_end(self._commits),
                    count_only=True)),
                rpc.RequestOp(request_range=rpc.RangeRequest(key=first, count_only=True)),
            ],
        )  # fmt: skip
        for _ in range(3):
            resp = await self._txn(txn)
            if resp.succeeded:
                return int(resp.header.revision)
            meta, commits, staged = (r.response_range for r in resp.responses)
            current = meta.kvs[0].mod_revision if meta.kvs else 0
            if current != base_revision:
                raise Conflict(f"the config changed since revision {base_revision} "
                               f"(now {current})", current)
            if not staged.count:
                raise StoreFailed("the staged apply was collected before it could commit "
                                  "(it took longer than a minute); apply again")
            if commits.count:
                await self.recover()  # another control plane's commit, unfinished
        raise StoreFailed("another large apply kept being unfinished; try again")

    # -- materialize ------------------------------------------------------------------------

    async def _materialize_locked(self, pending: Pending, fresh: bool) -> None:
        async with self._lock:
            for attempt in range(MATERIALIZE_ATTEMPTS):
                try:
                    await self.materialize(pending, fresh)
                    return
                except (ProviderError, grpc.aio.AioRpcError, OSError, TimeoutError) as exc:
                    log.warning("materializing revision %d (attempt %d): %s",
                                pending.revision, attempt + 1, exc)
                    fresh = False
                    await asyncio.sleep(backoff(attempt, 0.5, 10.0))
            log.error("revision %d is committed but not yet materialized; the next apply or "
                      "start of a control plane finishes it", pending.revision)

    async def materialize(self, pending: Pending, fresh: bool) -> None:
        """Write `pending`'s change set into resources/, then close the commit.

        `fresh`: nothing of it was written yet (our own commit, just made), so there is no
        need to look at what the keys hold first.
        """
        todo = list(pending.changes.items())
        at: set[int] = set()
        if not fresh:
            _, kvs = await self._conn.call(lambda c: range_prefix(
                c, self._resources, self._timeout))
            current = {bytes(kv.key): kv for kv in kvs}
            todo = [(k, v) for k, v in todo
                    if not _settled(current.get(k), v, pending.revision, at)]
        for group in _groups(todo):
            await self._write(group, pending.revision, at)
        txn = rpc.TxnRequest(
            compare=[rpc.Compare(result=rpc.Compare.GREATER, target=rpc.Compare.VERSION,
                                 key=commit_key(self._prefix, pending.id).encode(), version=0)],
            success=[
                _delete(commit_key(self._prefix, pending.id)),
                _delete_prefix(staging_prefix(self._prefix, pending.id)),
                _put(materialized_key(self._prefix),
                     Marker(pending.revision, frozenset(at)).dumps()),
            ],
        )  # fmt: skip
        await self._txn(txn)
        log.info("revision %d materialized: %d resources in %d transactions",
                 pending.revision, len(pending.changes), len(at))

    async def _write(self, group: list[tuple[bytes, bytes | None]], revision: int,
                     at: set[int]) -> None:
        while group:
            txn = rpc.TxnRequest(
                # Only keys nothing wrote since the commit: a later apply, or a value put
                # straight into etcd, wins (readers apply the same rule).
                compare=[rpc.Compare(result=rpc.Compare.LESS, target=rpc.Compare.MOD, key=k,
                                     mod_revision=revision + 1) for k, _ in group],
                success=[_put(k, v) if v is not None else _delete(k) for k, v in group],
                failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=k))
                         for k, _ in group],
            )  # fmt: skip
            resp = await self._txn(txn)
            if resp.succeeded:
                at.add(int(resp.header.revision))
                return
            group = [(k, v) for (k, v), r in zip(group, resp.responses, strict=True)
                     if not _settled(r.response_range.kvs[0] if r.response_range.kvs else None,
                                     v, revision, at)]

    # -- recovery ---------------------------------------------------------------------------

    async def recover(self) -> None:
        """Finish every unfinished commit; collect old staging no commit names."""
        async with self._lock:
            _, kvs = await self._conn.call(lambda c: range_prefix(
                c, self._commits, self._timeout))
            for kv in sorted(kvs, key=lambda kv: kv.mod_revision):
                try:
                    pending = await self._read_pending(kv)
                except StagedCommitError as exc:
                    # Nothing can finish it and it would block every large apply.
                    log.error("dropping a commit record that cannot be finished: %s", exc)
                    await self._txn(rpc.TxnRequest(
                        compare=[rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.MOD,
                                             key=kv.key, mod_revision=kv.mod_revision)],
                        success=[_delete(kv.key)]))
                    continue
                log.info("finishing revision %d (%d changes) left unmaterialized",
                         pending.revision, len(pending.changes))
                await self.materialize(pending, fresh=False)
            if time.monotonic() - self._last_gc >= GC_EVERY_S:
                self._last_gc = time.monotonic()
                await self._collect()

    async def _collect(self) -> None:
        """Delete staging (and its history parts) that no commit names and that is old."""
        start = (self._prefix + STAGING).encode()
        resp = await self._conn.call(lambda c: c.kvstub.Range(
            rpc.RangeRequest(key=start, range_end=prefix_range_end(start), keys_only=True),
            timeout=self._timeout, metadata=c.metadata))
        ids = {kv.key[len(start):].split(b"/", 1)[0].decode() for kv in resp.kvs}
        now_ms = time.time() * 1000
        for staged_id in ids:
            born = staged_id.split("-", 1)[0]
            if born.isdigit() and now_ms - int(born) < STAGING_TTL_S * 1000:
                continue
            await self._drop_staging(staged_id)

    async def _drop_staging(self, staged_id: str) -> None:
        """Staging of a commit that never happened: gone, unless a commit record names it."""
        txn = rpc.TxnRequest(
            compare=[rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.VERSION,
                                 key=commit_key(self._prefix, staged_id).encode(), version=0)],
            success=[_delete_prefix(staging_prefix(self._prefix, staged_id)),
                     _delete_prefix(history_parts_prefix(self._prefix, staged_id))],
        )  # fmt: skip
        try:
            await self._txn(txn)
        except (ProviderError, grpc.aio.AioRpcError) as exc:
            log.warning("staging %s left for later collection: %s", staged_id, exc)

    async def _read_pending(self, commit: Any) -> Pending:
        return await self._conn.call(lambda c: read_pending(c, self._prefix, commit,
                                                            self._timeout))

    async def _txn(self, txn: Any) -> Any:
        return await self._conn.call(lambda c: c.kvstub.Txn(txn, timeout=self._timeout,
                                                            metadata=c.metadata))

    # -- tasks ------------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self) -> None:
        """Let this process's materializations finish (they are recoverable if cut short)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    async def close(self, timeout: float) -> None:
        tasks = set(self._tasks)
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)


def _settled(kv: Any, value: bytes | None, revision: int, at: set[int]) -> bool:
    """True when `kv` needs no write for a commit at `revision` that sets it to `value`."""
    if kv is None:
        return value is None
    if kv.mod_revision <= revision:
        return False
    if value is not None and bytes(kv.value) == value:
        at.add(int(kv.mod_revision))  # written by a materializer: its revision counts as ours
    return True  # written after the commit: it wins


def _groups(todo: list[tuple[bytes, bytes | None]]) -> list[list[tuple[bytes, bytes | None]]]:
    groups: list[list[tuple[bytes, bytes | None]]] = []
    group: list[tuple[bytes, bytes | None]] = []
    size = 0
    for key, value in todo:
        cost = 2 * len(key) + (len(value) if value is not None else 0) + 16
        if group and (len(group) >= TXN_OPS or size + cost > TXN_BYTES):
            groups.append(group)
            group, size = [], 0
        group.append((key, value))
        size += cost
    if group:
        groups.append(group)
    return groups


def _put(key: str | bytes, value: str | bytes) -> Any:
    k = key.encode() if isinstance(key, str) else key
    v = value.encode() if isinstance(value, str) else value
    return rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=v))


def _delete(key: str | bytes) -> Any:
    k = key.encode() if isinstance(key, str) else key
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=k))


def _delete_prefix(prefix: str) -> Any:
    k = prefix.encode()
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(
        key=k, range_end=prefix_range_end(k)))

"""The etcd store: one apply is one revision, all or nothing, at any size.

An apply that fits one etcd transaction under etcd's default limits is one transaction. A larger
one is staged, committed by one small transaction and then materialized
(control_plane/etcd_commit.py, providers/staged_commits.py): every reader, `read()` here
included, sees it whole from its commit on.

The config revision is the mod revision of `{prefix}meta/config`, which every apply rewrites in
the same transaction as its resources. Comparing it in the transaction makes an apply
conditional on "nothing was applied since I read": optimistic concurrency without locks, and
the `expected_revision` check for free. Gateway heartbeats move etcd's global revision all the
time; they do not touch this key.

History is kept under `{prefix}history/{revision}`, but the revision is only known once the
transaction commits. So the transaction writes the record under a pending key; right after,
it is moved to its final key. A crash in between leaves a pending record whose own mod revision
*is* the apply's revision: readers finish the move (`_settle_pending`). History keys are live
keys, so they survive compaction.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

import aetcd
import grpc
from aetcd import rpc

from control_plane.etcd_commit import TXN_BYTES, TXN_OPS, LargeCommits
from control_plane.store import (
    Conflict,
    Draft,
    HistoryRecord,
    Stored,
    StoreFailed,
    StoreRefused,
    stored_doc,
)
from providers.etcd import with_revision
from providers.etcd_conn import (
    EtcdConnection,
    EtcdSettings,
    prefix_range_end,
    range_keys,
    range_prefix,
)
from providers.resources import ResourceKey
from providers.rollout import Canary
from providers.staged_commits import (
    Marker,
    Pending,
    StagedCommitError,
    join_history,
    overlay,
    read_pending,
)
from providers.store_keys import (
    COMMITS,
    GATEWAYS,
    HISTORY,
    RESOURCES,
    canary_key,
    history_key,
    materialized_key,
    meta_key,
    parse_resource_key,
    pending_history_key,
    resource_key,
)

log = logging.getLogger(__name__)


class EtcdStore:
    def __init__(self, settings: EtcdSettings) -> None:
        self.settings = settings
        self.url = settings.url
        self._conn = EtcdConnection(settings)
        p = settings.prefix
        self._prefix = p
        self._meta = meta_key(p).encode()
        self._pending = pending_history_key(p, "").encode()
        self._commits = f"{p}{COMMITS}".encode()
        self._marker = materialized_key(p).encode()
        self._canary = canary_key(p)
        self._tokens = f"{p}tokens/"
        self._settling: set[asyncio.Task[None]] = set()
        self._cache: tuple[tuple[int, int, int], int, dict[ResourceKey, Stored]] | None = None
        self._large = LargeCommits(self._conn, settings)
        self._started = False

    @classmethod
    def from_url(cls, url: str, env: Mapping[str, str]) -> EtcdStore:
        return cls(EtcdSettings.from_url(url, env))

    async def read(self) -> tuple[int, dict[ResourceKey, Stored]]:
        """The config, from a cache while a cheap check says nothing changed in etcd.

        The check covers applies (the meta key) and direct writes (newest mod revision and
        count under resources/), so it costs two small range reads instead of parsing every
        resource on each apply.
        """
        if not self._started:
            # At start: finish what a killed control plane left. Readers do not need it (they
            # see unfinished commits whole), so it runs aside.
            self._started = True
            self._spawn(self._recover_quietly())
        fingerprint = await self._conn.call(self._fingerprint)
        if self._cache is not None and self._cache[0] == fingerprint:
            return self._cache[1], dict(self._cache[2])
        revision, resources = await self._conn.call(self._read_all)
        self._cache = (fingerprint, revision, resources)
        return revision, dict(resources)

    async def _fingerprint(self, client: aetcd.Client) -> tuple[int, int, int]:
        start = f"{self._prefix}{RESOURCES}".encode()
        newest = await client.kvstub.Range(
            rpc.RangeRequest(key=start, range_end=prefix_range_end(start), limit=1,
                             keys_only=True, sort_order=rpc.RangeRequest.DESCEND,
                             sort_target=rpc.RangeRequest.MOD),
            timeout=self.settings.timeout_s, metadata=client.metadata,
        )  # fmt: skip
        meta = await client.kvstub.Range(
            rpc.RangeRequest(key=self._meta, keys_only=True),
            timeout=self.settings.timeout_s, metadata=client.metadata,
        )  # fmt: skip
        return (
            meta.kvs[0].mod_revision if meta.kvs else 0,
            newest.kvs[0].mod_revision if newest.kvs else 0,
            int(newest.count),
        )

    async def _read_all(self, client: aetcd.Client) -> tuple[int, dict[ResourceKey, Stored]]:
        # A commit may finish materializing (its staging gone) between the two reads below.
        for _ in range(5):
            try:
                return await self._read_once(client)
            except StagedCommitError as exc:
                log.debug("re-reading: %s", exc)
        raise StoreFailed("the config kept changing under a full read; try again")

    async def _read_once(self, client: aetcd.Client) -> tuple[int, dict[ResourceKey, Stored]]:
        timeout = self.settings.timeout_s
        header, kvs = await range_prefix(client, f"{self._prefix}{RESOURCES}".encode(), timeout)
        _, commits = await range_keys(client, self._commits, prefix_range_end(self._commits),
                                      timeout, revision=header.revision)
        marker_resp = await client.kvstub.Range(
            rpc.RangeRequest(key=self._marker, revision=header.revision),
            timeout=timeout, metadata=client.metadata)
        meta = await client.kvstub.Range(
            rpc.RangeRequest(key=self._meta, revision=header.revision),
            timeout=timeout, metadata=client.metadata,
        )  # fmt: skip
        pending: list[Pending] = [await read_pending(client, self._prefix, kv, timeout)
                                  for kv in commits]
        marker = Marker.parse(marker_resp.kvs[0].value) if marker_resp.kvs else None
        out: dict[ResourceKey, Stored] = {}
        for raw_key, (value, revision) in overlay(kvs, pending, marker).items():
            try:
                key = parse_resource_key(self._prefix, raw_key.decode())
            except ValueError:
                continue  # not ours to manage (a stray key)
            out[key] = Stored(key, stored_doc(key, value), revision)
        return (meta.kvs[0].mod_revision if meta.kvs else 0), out

    async def commit(self, draft: Draft, base_revision: int) -> int:
        # Unfinished commits first (ours or a killed control plane's): a large commit may not
        # start while one is materializing.
        await self._large.recover()
        record = draft.record(0).as_dict()
        record_text = json.dumps(record)
        changes: list[tuple[str, str | None]] = [
            (resource_key(self._prefix, k), json.dumps(d)) for k, d in draft.puts.items()]
        changes += [(resource_key(self._prefix, k), None) for k in draft.deletes]
        meta_op = _put(self._meta, json.dumps({"author": draft.author, "time": draft.time}))
        extra: list[Any] = []
        if draft.canary is not None:
            extra.append(_put(self._canary, json.dumps(draft.canary.to_json())))
        elif draft.clear_canary:
            extra.append(_delete(self._canary))
        size = len(record_text) + sum(len(k) + len(v or "") for k, v in changes)
        try:
            if len(changes) + 2 + len(extra) <= TXN_OPS and size <= TXN_BYTES:
                revision, pending, header = await self._commit_one(
                    changes, record, record_text, meta_op, extra, base_revision)
            else:
                revision, staged_id, header = await self._large.commit(
                    changes, record, meta_op, extra, base_revision, draft.author)
                pending = pending_history_key(self._prefix, staged_id).encode()
        except grpc.aio.AioRpcError as exc:
            raise _refused(exc) from exc
        self._remember(draft, base_revision, revision)
        # Moving the record to its final key is not needed for the answer: readers settle
        # pending records themselves, so it may finish after we reply.
        self._spawn(self._settle_quietly(pending, revision, header))
        return revision

    async def _commit_one(self, changes: list[tuple[str, str | None]], record: dict[str, Any],
                          record_text: str, meta_op: Any, extra: list[Any],
                          base_revision: int) -> tuple[int, bytes, dict[str, Any]]:
        """An apply small enough for one transaction: resources, meta, history, canary."""
        pending = self._pending + uuid.uuid4().hex.encode()
        ops = [_put(k, v) if v is not None else _delete(k) for k, v in changes]
        ops += [meta_op, _put(pending, record_text), *extra]
        txn = rpc.TxnRequest(
            compare=[rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.MOD,
                                 key=self._meta, mod_revision=base_revision)],
            success=ops,
        )  # fmt: skip

        async def go(client: aetcd.Client) -> Any:
            return await client.kvstub.Txn(
                txn, timeout=self.settings.timeout_s * 4, metadata=client.metadata
            )

        resp = await self._conn.call(go)
        if not resp.succeeded:
            current, _ = await self.read()
            raise Conflict(
                f"the config changed since revision {base_revision} (now {current})", current
            )
        return int(resp.header.revision), pending, record

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _recover_quietly(self) -> None:
        try:
            await self._large.recover()
        except Exception as exc:  # the next apply tries again
            log.warning("finishing unfinished commits failed: %s", exc)

    async def canary(self) -> Canary | None:
        resp = await self._conn.call(lambda c: c.kvstub.Range(
            rpc.RangeRequest(key=self._canary.encode()), timeout=self.settings.timeout_s,
            metadata=c.metadata))
        if not resp.kvs:
            return None
        try:
            return with_revision(Canary.from_json(resp.kvs[0].value), resp.kvs[0].mod_revision)
        except ValueError as exc:
            log.error("%s: %s; treated as no canary", self._canary, exc)
            return None

    def _remember(self, draft: Draft, base_revision: int, revision: int) -> None:
        """Carry the cache over our own write, so the next apply need not re-read it all."""
        cache, self._cache = self._cache, None
        if cache is None or cache[1] != base_revision or not draft.puts:
            return
        resources = dict(cache[2])
        for key in draft.deletes:
            resources.pop(key, None)
        for key, doc in draft.puts.items():
            resources[key] = Stored(key, doc, revision)
        self._cache = ((revision, revision, len(resources)), revision, resources)

    async def _settle_quietly(self, pending: bytes, revision: int, record: dict[str, Any]) -> None:
        try:
            await self._settle(pending, revision, record)
        except Exception as exc:  # the next history read settles it
            log.warning("history for revision %d left pending: %s", revision, exc)

    async def _settle(self, pending: bytes, revision: int, record: dict[str, Any]) -> None:
        record["revision"] = revision
        txn = rpc.TxnRequest(success=[
            _put(history_key(self._prefix, revision), json.dumps(record)),
            _delete(pending.decode()),
        ])  # fmt: skip
        await self._conn.call(lambda c: c.kvstub.Txn(
            txn, timeout=self.settings.timeout_s, metadata=c.metadata))

    async def _settle_pending(self) -> None:
        """Finish history moves a crash interrupted (see the module docstring)."""
        _, kvs = await self._conn.call(
            lambda c: range_prefix(c, self._pending, self.settings.timeout_s)
        )
        for kv in kvs:
            await self._settle(kv.key, kv.mod_revision, json.loads(kv.value))

    async def history(self, limit: int = 100) -> list[HistoryRecord]:
        await self._settle_pending()

        async def go(client: aetcd.Client) -> Any:
            start = f"{self._prefix}{HISTORY}".encode()
            return await client.kvstub.Range(
                rpc.RangeRequest(
                    key=start, range_end=prefix_range_end(start), limit=limit,
                    sort_order=rpc.RangeRequest.DESCEND, sort_target=rpc.RangeRequest.KEY,
                ),
                timeout=self.settings.timeout_s, metadata=client.metadata,
            )  # fmt: skip

        resp = await self._conn.call(go)
        return [HistoryRecord.from_dict(await self._joined(json.loads(kv.value)))
                for kv in resp.kvs]

    async def _joined(self, header: dict[str, Any]) -> dict[str, Any]:
        """A history record whole: a large one keeps its changes in parts."""
        if not header.get("parts"):
            return header
        return await self._conn.call(lambda c: join_history(
            c, self._prefix, header, self.settings.timeout_s))

    async def history_get(self, revision: int) -> HistoryRecord | None:
        await self._settle_pending()
        raw = await self._get(history_key(self._prefix, revision))
        if raw is None:
            return None
        return HistoryRecord.from_dict(await self._joined(json.loads(raw)))

    async def gateways(self) -> list[dict[str, Any]]:
        _, kvs = await self._conn.call(lambda c: range_prefix(
            c, f"{self._prefix}{GATEWAYS}".encode(), self.settings.timeout_s))
        out = []
        now = time.time()
        for kv in kvs:
            try:
                record = json.loads(kv.value)
            except ValueError:
                continue
            # The lease removes a dead gateway's key; present means live.
            out.append({**record, "live": True, "age_s": now - record.get("heartbeat", now)})
        return out

    async def _txn(self, txn: Any) -> Any:
        return await self._conn.call(lambda c: c.kvstub.Txn(
            txn, timeout=self.settings.timeout_s, metadata=c.metadata))

    async def put_token(self, digest: str, record: Mapping[str, Any]) -> None:
        await self._txn(rpc.TxnRequest(
            success=[_put(self._tokens + digest, json.dumps(dict(record)))]))

    async def get_token(self, digest: str) -> dict[str, Any] | None:
        raw = await self._get(self._tokens + digest)
        return json.loads(raw) if raw is not None else None

    async def list_tokens(self) -> dict[str, dict[str, Any]]:
        _, kvs = await self._conn.call(lambda c: range_prefix(
            c, self._tokens.encode(), self.settings.timeout_s))
        out = {}
        for kv in kvs:
            try:
                record = json.loads(kv.value)
            except ValueError:
                continue
            if isinstance(record, dict):
                out[kv.key.decode().removeprefix(self._tokens)] = record
        return out

    async def touch_token(self, digest: str, fields: Mapping[str, Any]) -> None:
        key = (self._tokens + digest).encode()
        resp = await self._conn.call(lambda c: c.kvstub.Range(
            rpc.RangeRequest(key=key), timeout=self.settings.timeout_s, metadata=c.metadata))
        if not resp.kvs:
            return
        kv = resp.kvs[0]
        record = {**json.loads(kv.value), **fields}
        # Only over the version read: a revoke in between must not be undone.
        await self._txn(rpc.TxnRequest(
            compare=[rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.MOD, key=key,
                                 mod_revision=kv.mod_revision)],
            success=[_put(key, json.dumps(record))]))

    async def delete_token(self, digest: str) -> bool:
        resp = await self._txn(rpc.TxnRequest(success=[_delete(self._tokens + digest)]))
        return bool(resp.responses[0].response_delete_range.deleted)

    async def _get(self, key: str) -> bytes | None:
        resp = await self._conn.call(lambda c: c.kvstub.Range(
            rpc.RangeRequest(key=key.encode()), timeout=self.settings.timeout_s,
            metadata=c.metadata))
        return bytes(resp.kvs[0].value) if resp.kvs else None

    async def close(self) -> None:
        if self._settling:
            await asyncio.wait(self._settling, timeout=5)
        # A materialization cut short is finished by the next control plane.
        await self._large.close(timeout=10)
        await self._conn.close()


def _put(key: str | bytes, value: str) -> Any:
    k = key.encode() if isinstance(key, str) else key
    return rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=value.encode()))


def _delete(key: str) -> Any:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key.encode()))


def _refused(exc: grpc.aio.AioRpcError) -> Exception:
    details = exc.details() or ""
    if "too many operations" in details:
        return StoreRefused(
            f"etcd refused a transaction as having too many operations ({details}): its "
            f"--max-txn-ops is below {TXN_OPS + 3}, the most whplane puts in one transaction"
        )
    if "request is too large" in details or exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # RESOURCE_EXHAUSTED: gRPC's message size limit on either side, which etcd sets a
        # little above its --max-request-bytes. Applies are split far below etcd's default:
        # only a single resource too large for one etcd value gets here.
        return StoreRefused(
            f"etcd refused a write as too large ({details}): a resource (with its history "
            "record) must fit one etcd request: keep each resource well under etcd's "
            "--max-request-bytes (default 1.5 MiB)"
        )
    return StoreFailed(f"etcd refused the transaction: {exc.code().name}: {details}")

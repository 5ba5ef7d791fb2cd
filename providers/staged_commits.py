"""Applies larger than one etcd transaction, as every reader of the store must see them.

etcd refuses a transaction of more than `--max-txn-ops` (128) operations or
`--max-request-bytes` (1.5 MiB), so an apply of any size cannot be one transaction that writes
every resource. The control plane (control_plane/etcd_commit.py) writes a large apply in three
steps instead, and every reader follows the same rules, so that one apply is still one
revision, all or nothing:

1. stage: the change set goes in chunks under `{prefix}staging/{id}/{n}` and the history
   record's changes under `{prefix}history-parts/{id}/{n}`, in as many small writes as needed.
   Nobody reads staging unless a commit record names it.
2. commit: ONE small transaction, conditional on the config revision, writes the commit record
   `{prefix}rollout/commits/{id}` (`{"id", "chunks", ...}`), `{prefix}meta/config`, the
   history header and the canary record if any. Its revision C is the apply's revision: from
   then on every reader sees the whole change set, read from staging.
3. materialize: the resources are written to `{prefix}resources/` in small transactions, each
   key only if nothing wrote it after C; then one transaction deletes the commit record and
   the staging keys and records in `{prefix}rollout/materialized` which revisions wrote
   C's resources, so their later mod revisions still count as C.

Readers (`overlay`): resources at a revision R, plus the change set of every commit record
present at R, applied in revision order; a resource written after C (by a later apply or
straight into etcd) wins over C's staged value. The config revision of a resource is C when
C's materialization wrote it, so a snapshot label never moves past the apply that made it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aetcd
import grpc
from aetcd import rpc

from providers.etcd_conn import prefix_range_end, range_keys, range_prefix
from providers.store_keys import (
    history_key,
    history_parts_prefix,
    pending_history_key,
    staging_prefix,
)

# One staged chunk or history part: well under etcd's default 1.5 MiB request limit, and under
# the 1 MiB some deployments set.
CHUNK_BYTES = 512 * 1024


class StagedCommitError(Exception):
    """A commit record whose staged change set is not (or no longer) complete."""


@dataclass(slots=True)
class Pending:
    """A committed change set: etcd key -> value (None: delete), in the order it was staged."""

    id: str
    revision: int  # the commit's revision
    changes: dict[bytes, bytes | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Marker:
    """`{prefix}rollout/materialized`: the revisions that wrote commit `revision`'s resources."""

    revision: int
    at: frozenset[int]

    @classmethod
    def parse(cls, raw: bytes) -> Marker | None:
        try:
            d = json.loads(raw)
            return cls(int(d["revision"]), frozenset(int(r) for r in d["at"]))
        except (ValueError, KeyError, TypeError):
            return None

    def dumps(self) -> str:
        return json.dumps({"revision": self.revision, "at": sorted(self.at)})


# -- chunks ----------------------------------------------------------------------------------


def encode_chunks(changes: Iterable[tuple[str, str | None]],
                  limit: int = CHUNK_BYTES) -> list[bytes]:
    """Chunks of `[[key, value text or null], ...]`, each at most `limit` bytes when possible."""
    chunks: list[bytes] = []
    items: list[bytes] = []
    size = 2
    for key, value in changes:
        item = json.dumps([key, value]).encode()
        if items and size + len(item) + 1 > limit:
            chunks.append(b"[" + b",".join(items) + b"]")
            items, size = [], 2
        items.append(item)
        size += len(item) + 1
    if items:
        chunks.append(b"[" + b",".join(items) + b"]")
    return chunks


def decode_chunk(raw: bytes, into: dict[bytes, bytes | None]) -> None:
    for key, value in json.loads(raw):
        into[key.encode()] = value.encode() if value is not None else None


def commit_value(staged_id: str, chunks: int, base: int, author: str, at: float) -> str:
    return json.dumps({"id": staged_id, "chunks": chunks, "base": base, "author": author,
                       "time": at})


async def read_pending(client: aetcd.Client, prefix: str, commit: Any,
                       timeout_s: float) -> Pending:
    """The change set a commit record (a KeyValue) names, read from staging.

    Read at the commit's revision: the materializer deletes staging as soon as it is done,
    often before a slow reader gets here. Staged chunks are written once and never changed,
    so when that revision is compacted away the current ones do as well, if still there.
    """
    try:
        record = json.loads(commit.value)
        staged_id, chunks = str(record["id"]), int(record["chunks"])
    except (ValueError, KeyError, TypeError) as exc:
        raise StagedCommitError(f"commit record {commit.key!r} is invalid: {exc}") from None
    start = staging_prefix(prefix, staged_id).encode()
    try:
        _, kvs = await range_keys(client, start, prefix_range_end(start), timeout_s,
                                  revision=int(commit.mod_revision))
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.OUT_OF_RANGE:  # compacted
            raise
        _, kvs = await range_prefix(client, start, timeout_s)
    if len(kvs) != chunks:
        raise StagedCommitError(
            f"commit {staged_id}: {len(kvs)} of {chunks} staged chunks present")
    pending = Pending(staged_id, int(commit.mod_revision))
    for kv in kvs:
        decode_chunk(kv.value, pending.changes)
    return pending


# -- what readers see ------------------------------------------------------------------------


def overlay(kvs: Iterable[Any], pending: Sequence[Pending],
            marker: Marker | None) -> dict[bytes, tuple[bytes, int]]:
    """etcd key -> (value, config revision) of every resource, pending commits included.

    `kvs` are the resource key-values read at one revision; `pending` the commit records
    present at that revision. The rules are the materializer's, so what a reader sees before
    materialization is what the keys hold after it.
    """
    values: dict[bytes, bytes] = {}
    revisions: dict[bytes, int] = {}
    for kv in kvs:
        key = bytes(kv.key)
        values[key] = bytes(kv.value)
        revisions[key] = int(kv.mod_revision)
    labels = overlay_keyed(values, revisions, [(p.revision, p.changes) for p in pending], marker)
    return {k: (v, labels[k]) for k, v in values.items()}


K = TypeVar("K")


def overlay_keyed(values: dict[K, bytes], revisions: Mapping[K, int],
                  pending: Sequence[tuple[int, Mapping[K, bytes | None]]],
                  marker: Marker | None) -> dict[K, int]:
    """`overlay` of resources read under any key: `values` and their mod `revisions`, and the
    (commit revision, changes) of the pending commits. Applies the commits to `values` in
    place and returns the config revision of each resource."""
    at = marker.at if marker is not None else frozenset()
    labels = {k: (marker.revision if marker is not None and rev in at else rev)
              for k, rev in revisions.items()}
    revs = dict(revisions)
    for commit, changes in sorted(pending, key=lambda p: p[0]):
        for key, value in changes.items():
            rev = revs.get(key)
            if rev is not None and rev > commit:
                if value is not None and values[key] == value:
                    labels[key] = min(labels[key], commit)  # materialized already
                continue  # written after the commit: the later write wins
            if value is None:
                values.pop(key, None)
                revs.pop(key, None)
                labels.pop(key, None)
            else:
                values[key] = value
                revs[key] = labels[key] = commit
    return labels


def digest(value: bytes | None) -> bytes | None:
    return None if value is None else hashlib.blake2b(value, digest_size=16).digest()


class Materializing:
    """What commits delivered whole but not yet materialized will write, to drop those echoes.

    Values are kept as 16-byte digests and the whole memory is bounded: a commit beyond the
    bound is not remembered, and its materialization then arrives as ordinary changes.
    """

    def __init__(self, limit: int = 1_000_000) -> None:
        self._limit = limit
        self._keys: dict[bytes, tuple[str, bytes | None]] = {}
        self._ids: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def remember(self, pending: Pending) -> bool:
        if len(self._keys) + len(pending.changes) > self._limit:
            return False
        for key, value in pending.changes.items():
            self._keys[key] = (pending.id, digest(value))
        self._ids[pending.id] = len(pending.changes)
        return True

    def echo(self, key: bytes, value: bytes | None) -> bool:
        """True when this write only repeats what a remembered commit delivered."""
        entry = self._keys.pop(key, None)
        return entry is not None and entry[1] == digest(value)

    def forget(self, staged_id: str) -> None:
        if self._ids.pop(staged_id, None) is not None:
            for key in [k for k, (i, _) in self._keys.items() if i == staged_id]:
                del self._keys[key]

    def clear(self) -> None:
        self._keys.clear()
        self._ids.clear()


# -- history records larger than one value ---------------------------------------------------


def split_history(record: Mapping[str, Any], staged_id: str,
                  limit: int = CHUNK_BYTES) -> tuple[dict[str, Any], list[bytes]]:
    """(header, parts): the header names the parts and carries no changes when it is split."""
    changes = [json.dumps(c).encode() for c in record.get("changes", ())]
    if sum(len(c) + 1 for c in changes) <= limit:
        return dict(record), []
    parts: list[bytes] = []
    items: list[bytes] = []
    size = 2
    for item in changes:
        if items and size + len(item) + 1 > limit:
            parts.append(b"[" + b",".join(items) + b"]")
            items, size = [], 2
        items.append(item)
        size += len(item) + 1
    if items:
        parts.append(b"[" + b",".join(items) + b"]")
    header = {**record, "changes": [], "parts": {"id": staged_id, "count": len(parts)}}
    return header, parts


async def join_history(client: aetcd.Client, prefix: str, header: dict[str, Any],
                       timeout_s: float) -> dict[str, Any]:
    """The whole record of a header, its parts read back in order."""
    parts = header.get("parts")
    if not parts:
        return header
    _, kvs = await range_prefix(
        client, history_parts_prefix(prefix, str(parts["id"])).encode(), timeout_s)
    if len(kvs) != int(parts["count"]):
        raise StagedCommitError(
            f"history of revision {header.get('revision')}: {len(kvs)} of {parts['count']} "
            "parts present")
    changes: list[Any] = []
    for kv in kvs:
        changes.extend(json.loads(kv.value))
    out = {k: v for k, v in header.items() if k != "parts"}
    out["changes"] = changes
    return out


async def read_history(client: aetcd.Client, prefix: str, revision: int,
                       timeout_s: float) -> dict[str, Any] | None:
    """The history record of `revision`, whether settled or still under its pending key."""
    resp = await client.kvstub.Range(
        rpc.RangeRequest(key=history_key(prefix, revision).encode()),
        timeout=timeout_s, metadata=client.metadata)
    if resp.kvs:
        return await join_history(client, prefix, json.loads(resp.kvs[0].value), timeout_s)
    _, kvs = await range_prefix(client, pending_history_key(prefix, "").encode(), timeout_s)
    for kv in kvs:
        if kv.mod_revision == revision:  # a pending record's own revision is the apply's
            header = {**json.loads(kv.value), "revision": revision}
            return await join_history(client, prefix, header, timeout_s)
    return None

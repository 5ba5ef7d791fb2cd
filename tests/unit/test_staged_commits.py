"""What readers make of resources plus unfinished commits (providers/staged_commits.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from providers.staged_commits import (
    Marker,
    Materializing,
    Pending,
    decode_chunk,
    encode_chunks,
    overlay,
    split_history,
)


@dataclass
class KV:
    key: bytes
    value: bytes
    mod_revision: int


def test_chunks_round_trip_and_stay_under_the_limit() -> None:
    changes = [(f"/p/resources/acme/Webhook/h{i}", "x" * 300 if i % 3 else None)
               for i in range(1000)]
    chunks = encode_chunks(changes, limit=8192)
    assert len(chunks) > 10 and all(len(c) <= 8192 for c in chunks)
    out: dict[bytes, bytes | None] = {}
    for c in chunks:
        decode_chunk(c, out)
    assert out == {k.encode(): v.encode() if v is not None else None for k, v in changes}


def test_overlay_pending_commit_then_later_writes_win() -> None:
    kvs = [KV(b"a", b"a0", 5), KV(b"b", b"b0", 5), KV(b"c", b"c-direct", 12),
           KV(b"d", b"d1", 14)]
    # Commit at 10 sets a, b, c, d and deletes e; c was written straight into etcd after it,
    # d was already materialized (same value, later mod revision).
    pending = Pending("x", 10, {b"a": b"a1", b"b": None, b"c": b"c1", b"d": b"d1",
                                b"e": None})
    state = overlay(kvs, [pending], None)
    assert state == {b"a": (b"a1", 10), b"c": (b"c-direct", 12), b"d": (b"d1", 10)}


def test_marker_keeps_materialized_keys_at_their_commit_revision() -> None:
    kvs = [KV(b"a", b"a1", 11), KV(b"b", b"b1", 12), KV(b"z", b"direct", 13)]
    state = overlay(kvs, [], Marker(10, frozenset({11, 12})))
    assert state == {b"a": (b"a1", 10), b"b": (b"b1", 10), b"z": (b"direct", 13)}


def test_materializing_drops_echoes_only() -> None:
    memory = Materializing()
    assert memory.remember(Pending("x", 10, {b"a": b"a1", b"b": None, b"c": b"c1"}))
    assert memory.echo(b"a", b"a1")  # the materializer's write
    assert not memory.echo(b"a", b"a1")  # only once
    assert memory.echo(b"b", None)
    assert not memory.echo(b"c", b"other")  # a different value: a real change
    assert not memory.echo(b"c", b"c1")  # ... after which c is no longer remembered
    memory.forget("x")
    assert len(memory) == 0
    assert not Materializing(limit=1).remember(Pending("y", 11, {b"a": b"1", b"b": b"2"}))


def test_large_history_records_are_split_and_name_their_parts() -> None:
    record: dict[str, Any] = {"revision": 0, "author": "a", "message": "m", "time": 1.0,
              "changes": [{"op": "create", "kind": "Webhook", "namespace": "acme",
                           "name": f"h{i}", "before": None, "after": {"x": "y" * 200}}
                          for i in range(500)]}
    header, parts = split_history(record, "sid", limit=16384)
    assert header["changes"] == [] and header["parts"] == {"id": "sid", "count": len(parts)}
    assert len(parts) > 5 and all(len(p) <= 16384 for p in parts)
    small, none = split_history({**record, "changes": record["changes"][:2]}, "sid")
    assert none == [] and len(small["changes"]) == 2 and "parts" not in small

"""The last good file's lines: documents written and read back as the bytes they were."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from providers.holder import SnapshotHolder
from providers.last_good import LastGood
from providers.resources import ResourceKey
from tests.docs import namespace, webhook

ENV = {"S": "s3cret"}


def test_documents_come_back_as_their_bytes(tmp_path: Path) -> None:
    odd = ResourceKey("Webhook", 'a",doc":x', "b\\c")  # not names: keys written by json.dumps
    docs = {ResourceKey("Namespace", None, "a"): json.dumps(namespace("a")).encode(),
            ResourceKey("Webhook", "a", "h"): json.dumps(webhook("h", "a", secret="{$S}"),
                                                         separators=(",", ":")).encode(),
            odd: b'{"kind": "x", "text": "},\\"doc\\":{"}'}
    lg = LastGood(tmp_path / "lg.jsonl")
    lg.write(3, docs.items(), "src", count=len(docs))
    lg.append(4, [(ResourceKey("Namespace", None, "b"), {"kind": "Namespace"})])
    saved = lg.read("src")
    assert saved is not None and saved.revision == 4
    for key, raw in docs.items():
        assert saved.puts[key] == raw
    assert saved.puts[ResourceKey("Namespace", None, "b")] == b'{"kind": "Namespace"}'
    for line in lg.path.read_text().splitlines():
        json.loads(line)  # every line stays JSON


def test_torn_last_line_is_ignored(tmp_path: Path) -> None:
    lg = LastGood(tmp_path / "lg.jsonl")
    key = ResourceKey("Namespace", None, "a")
    lg.write(1, [(key, json.dumps(namespace("a")).encode())], "src", count=1)
    lg.append(2, [(key, None)])
    with lg.path.open("ab") as f:
        f.write(b'{"key":["Namespace", null, "b"],"doc":{"apiVersion": "whpl')
    saved = lg.read("src")
    assert saved is not None and saved.revision == 2 and not saved.puts


async def test_holder_starts_from_saved_bytes(tmp_path: Path) -> None:
    lg = LastGood(tmp_path / "lg.jsonl")
    docs = {ResourceKey("Namespace", None, f"n{i}"): json.dumps(namespace(f"n{i}")).encode()
            for i in range(5)}
    lg.write(7, docs.items(), "src", count=len(docs))
    saved = lg.read("src")
    assert saved is not None
    snap = await SnapshotHolder(env=ENV).apply(saved)
    assert not snap.errors and len(snap) == 5
    assert all(entry.shape is not None for entry in snap.entries.values())


def test_count_must_match(tmp_path: Path) -> None:
    lg = LastGood(tmp_path / "lg.jsonl")
    key = ResourceKey("Namespace", None, "a")
    with pytest.raises(ValueError):
        lg.write(1, [(key, b"{}")], "src", count=2)
    assert not lg.path.exists() and not list(tmp_path.iterdir())


def test_lines_of_a_whole_file_are_the_general_lines() -> None:
    from providers.last_good import _line, _Lines

    lines = _Lines()
    for key in (ResourceKey("Webhook", "ns-1", "h"), ResourceKey("Webhook", "ns-1", "h2"),
                ResourceKey("Namespace", None, "a"), ResourceKey("Webhook", "ns-1", "H"),
                ResourceKey("Webhook", "N", "h"), ResourceKey("Other", "ns-1", "h")):
        assert lines(key, b'{"x": 1}') == _line(key, b'{"x": 1}'), key

"""The last good file: a base plus a journal of changes, read back as one full batch."""

from __future__ import annotations

import json
from pathlib import Path

from providers.holder import SnapshotHolder
from providers.last_good import LastGood
from providers.provider import ChangeBatch
from providers.resources import ResourceKey
from tests.docs import connection, namespace, webhook

ENV = {"GITHUB_SECRET": "s3cret", "API_TOKEN": "t0ken"}
A = ResourceKey("Namespace", None, "a")
B = ResourceKey("Namespace", None, "b")


def raw(doc: dict) -> bytes:  # type: ignore[type-arg]
    return json.dumps(doc).encode()


def test_journal_applies_committed_changes_only(tmp_path: Path) -> None:
    lg = LastGood(tmp_path / "lg.jsonl")
    lg.write(5, [(A, raw(namespace("a")))], "src")
    lg.append(6, [(B, raw(namespace("b")))])
    lg.append(7, [(A, None)])
    saved = lg.read("src")
    assert saved is not None and saved.full
    assert saved.revision == 7 and set(saved.puts) == {B}
    # A crash half-way through an append: that revision never happened.
    with lg.path.open("a") as f:
        f.write(json.dumps({"key": list(A), "doc": namespace("a")}) + "\n")
        f.write('{"revision":')
    saved = lg.read("src")
    assert saved is not None and saved.revision == 7 and set(saved.puts) == {B}


def test_file_without_document_count_is_all_base(tmp_path: Path) -> None:
    path = tmp_path / "lg.jsonl"
    path.write_text(json.dumps({"format": "whplane-last-good/1", "revision": 3, "source": "s"})
                    + "\n" + json.dumps({"key": list(A), "doc": namespace("a")}) + "\n")
    saved = LastGood(path).read("s")
    assert saved is not None and saved.revision == 3 and set(saved.puts) == {A}


async def test_holder_appends_changes_and_rewrites_after_a_full_batch(tmp_path: Path) -> None:
    lg = LastGood(tmp_path / "lg.jsonl")
    holder = SnapshotHolder(env=ENV, last_good=lg, source="src")
    conn = ResourceKey("Connection", "a", "api")
    hook = ResourceKey("Webhook", "a", "h")
    await holder.apply(ChangeBatch(1, {A: raw(namespace("a")), conn: raw(connection(
        "api", "a", type="http", url="https://a.example/")), hook: raw(webhook(
            "h", "a", secret="{$GITHUB_SECRET}", connections=("api",)))}, full=True))
    await holder.flush()
    assert lg.journal_lines == 0 and lg.base_docs == 3
    await holder.apply(ChangeBatch(2, {B: raw(namespace("b"))}))
    await holder.apply(ChangeBatch(3, deletes=frozenset({hook})))
    await holder.flush()
    assert lg.journal_lines == 3  # two changes and one commit line
    saved = lg.read("src")
    assert saved is not None and saved.revision == 3 and set(saved.puts) == {A, B, conn}
    await holder.flush()  # nothing new: nothing written
    assert lg.journal_lines == 3
    await holder.apply(ChangeBatch(4, {A: raw(namespace("a"))}, full=True))
    await holder.flush()
    assert lg.journal_lines == 0 and lg.base_docs == 1
    saved = lg.read("src")
    assert saved is not None and saved.revision == 4 and set(saved.puts) == {A}

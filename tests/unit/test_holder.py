"""The RCU holder's rules, driven through the in-memory provider (no real store needed)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from providers.holder import SnapshotHolder
from providers.last_good import LastGood
from providers.memory import MemoryProvider
from providers.provider import ChangeBatch
from providers.resources import ResourceKey
from tests.docs import connection, webhook

HOOK = ResourceKey("Webhook", "acme", "gh")


def holder(**env: str) -> SnapshotHolder:
    return SnapshotHolder(env={"S": "s3cret", **env})


async def test_put_delete_and_revision() -> None:
    h = holder()
    await h.apply(ChangeBatch(5, {HOOK: json.dumps(webhook("gh", secret="{$S}")).encode()}))
    snap = h.current
    assert snap.revision == 5
    assert snap.webhook("acme", "gh").spec.verify.secret == ("s3cret",)  # type: ignore[union-attr]
    assert snap.entries[HOOK].raw.startswith(b"{")  # type: ignore[union-attr]
    assert b"s3cret" not in snap.entries[HOOK].raw  # type: ignore[operator]
    await h.apply(ChangeBatch(6, deletes=frozenset({HOOK})))
    assert h.current.webhook("acme", "gh") is None
    assert snap.webhook("acme", "gh") is not None  # the old snapshot is a value, unchanged


async def test_invalid_update_keeps_previous_version_and_records_error() -> None:
    h = holder()
    await h.apply(ChangeBatch(1, {HOOK: json.dumps(webhook("gh", secret="{$S}")).encode()}))
    good = h.current.webhook("acme", "gh")
    bad = webhook("gh", secret="{$S}", chain={"steps": [{"module": "ftp"}]})
    await h.apply(ChangeBatch(2, {HOOK: json.dumps(bad).encode()}))
    assert h.current.revision == 2
    assert h.current.webhook("acme", "gh") is good
    err = h.current.errors[str(HOOK)]
    assert "spec.chain.steps[0]: unknown module 'ftp'" in err and "previous version kept" in err
    await h.apply(ChangeBatch(3, {HOOK: b"{not json"}))
    assert "value is not JSON" in h.current.errors[str(HOOK)]
    await h.apply(ChangeBatch(4, {HOOK: json.dumps(webhook("gh", secret="{$S}")).encode()}))
    assert str(HOOK) not in h.current.errors


async def test_key_must_match_document() -> None:
    h = holder()
    other = ResourceKey("Webhook", "other", "gh")
    await h.apply(ChangeBatch(1, {other: json.dumps(webhook("gh", secret="{$S}")).encode()}))
    assert h.current.webhook("other", "gh") is None
    assert "is stored as Webhook/other/gh" in h.current.errors[str(other)]


async def test_unresolvable_reference_is_skipped() -> None:
    h = holder()
    await h.apply(ChangeBatch(1, {HOOK: json.dumps(webhook("gh", secret="{$MISSING}")).encode()}))
    assert h.current.webhook("acme", "gh") is None
    assert "environment variable MISSING is not set" in h.current.errors[str(HOOK)]


async def test_connections_dangling_and_refused_deletion() -> None:
    h = holder()
    conn = ResourceKey("Connection", "acme", "api")
    glob = ResourceKey("Connection", None, "api")
    hook = json.dumps(webhook("gh", secret="{$S}", connections=("api",))).encode()
    # A webhook naming a connection that exists nowhere is refused.
    await h.apply(ChangeBatch(1, {HOOK: hook}))
    assert h.current.webhook("acme", "gh") is None
    assert "connection 'api' exists neither" in h.current.errors[str(HOOK)]
    # With a global connection it is served, and the endpoint carries the connection.
    await h.apply(ChangeBatch(2, {glob: json.dumps(connection("api")).encode(), HOOK: hook}))
    ep = h.current.endpoint("acme", "gh")
    assert ep is not None and ep.connections["api"].metadata.namespace is None
    # A namespace connection of the same name takes precedence.
    await h.apply(ChangeBatch(3, {conn: json.dumps(connection("api", "acme")).encode()}))
    assert h.current.endpoint("acme", "gh").connections["api"].metadata.namespace == "acme"  # type: ignore[union-attr]
    # Deleting the local one falls back to the global one; deleting that too is refused.
    await h.apply(ChangeBatch(4, deletes=frozenset({conn})))
    assert h.current.connection("acme", "api").metadata.namespace is None  # type: ignore[union-attr]
    await h.apply(ChangeBatch(5, deletes=frozenset({glob})))
    assert h.current.connection("acme", "api") is not None
    assert "deletion refused: still used by Webhook/acme/gh" in h.current.errors[str(glob)]
    h.current.check_consistent()


async def test_full_batch_replaces_everything() -> None:
    h = holder()
    a, b = ResourceKey("Webhook", "acme", "a"), ResourceKey("Webhook", "acme", "b")
    await h.apply(ChangeBatch(1, {a: json.dumps(webhook("a", secret="{$S}")).encode()}))
    await h.apply(ChangeBatch(9, {b: json.dumps(webhook("b", secret="{$S}")).encode()}, full=True))
    assert [k.name for k in h.current.entries.keys()] == ["b"]


async def test_run_follows_provider_and_wait_newer(tmp_path: Path) -> None:
    store = MemoryProvider()
    store.put(webhook("gh", secret="{$S}"))
    await store.commit()
    h = SnapshotHolder(env={"S": "x"}, last_good=LastGood(tmp_path / "lg.jsonl"), source="mem")
    task = asyncio.create_task(h.run(store))
    try:
        await h.wait_ready(5)
        assert h.current.revision == 1
        store.put(webhook("gh2", secret="{$S}"))
        store.put(webhook("gh3", secret="{$S}"))
        rev = await store.commit()
        snap = await h.wait_newer(1, timeout=5)
        assert snap.revision == rev and len(snap) == 3
        await h.flush()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    saved = LastGood(tmp_path / "lg.jsonl").read("mem")
    assert saved is not None and saved.revision == 2 and len(saved.puts) == 3
    assert LastGood(tmp_path / "lg.jsonl").read("other-source") is None


async def test_starts_from_last_good_when_store_down(tmp_path: Path) -> None:
    lg = LastGood(tmp_path / "lg.jsonl")
    lg.write(7, [(HOOK, json.dumps(webhook("gh", secret="{$S}")).encode())], "mem")

    class Down(MemoryProvider):
        async def load(self) -> ChangeBatch:
            raise OSError("connection refused")

    h = SnapshotHolder(env={"S": "x"}, last_good=lg, source="mem")
    task = asyncio.create_task(h.run(Down()))
    try:
        await h.wait_ready(5)
        assert h.started_from_last_good and h.current.revision == 7
        assert h.current.webhook("acme", "gh") is not None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("n", [1, 50])
async def test_change_cost_does_not_copy(n: int) -> None:
    h = holder()
    puts = {ResourceKey("Webhook", "acme", f"h{i}"): json.dumps(webhook(f"h{i}", secret="{$S}"))
            .encode() for i in range(n)}
    await h.apply(ChangeBatch(1, puts))
    before = h.current
    await h.apply(ChangeBatch(2, {ResourceKey("Webhook", "acme", "h0"): puts[
        ResourceKey("Webhook", "acme", "h0")]}))
    # Untouched entries are the very same objects: structural sharing, not a copy.
    for key in list(puts)[1:]:
        assert h.current.entries[key] is before.entries[key]

"""Documents validated once per shape must come out exactly as if each were validated alone."""

from __future__ import annotations

import json
from typing import Any

import pytest

from providers import build, shapes
from providers.holder import SnapshotHolder
from providers.loader import RESOURCE_ADAPTER
from providers.provider import ChangeBatch, RawDoc
from providers.resources import ResourceKey
from providers.snapshot import Snapshot
from tests.docs import connection, namespace, webhook

ENV = {"GITHUB_SECRET": "s3cret", "API_TOKEN": "t0ken"}


def raw(doc: dict[str, Any], **dumps: Any) -> bytes:
    return json.dumps(doc, **dumps).encode()


def hook(name: str, ns: str, **extra: Any) -> dict[str, Any]:
    doc = webhook(name, ns, secret="{$GITHUB_SECRET}", connections=("api",))
    doc["metadata"].update(extra)
    return doc


def fleet(n_ns: int = 3, per_ns: int = 3) -> dict[ResourceKey, RawDoc]:
    docs: dict[ResourceKey, RawDoc] = {}
    docs[ResourceKey("Connection", None, "api")] = raw(connection(
        "api", type="http", url="https://api.example/", headers={"X": "{$API_TOKEN}"}))
    for n in range(n_ns):
        ns = f"t{n}"
        docs[ResourceKey("Namespace", None, ns)] = raw(namespace(ns))
        for i in range(per_ns):
            docs[ResourceKey("Webhook", ns, f"h{i}")] = raw(hook(f"h{i}", ns,
                                                                 labels={"team": "a"}))
    return docs


def built(docs: dict[ResourceKey, RawDoc]) -> Snapshot:
    batch = ChangeBatch(1, docs, full=True)
    return build.build_snapshot(Snapshot(0), batch, build.plan(batch),
                                lambda ref: ENV[ref.name],  # type: ignore[union-attr]
                                build.Indexes())


def one_by_one(docs: dict[ResourceKey, RawDoc], monkeypatch: pytest.MonkeyPatch) -> Snapshot:
    """The same documents on the ordinary path (no shapes), each alone in its batch."""
    snap = Snapshot(0)
    indexes = build.Indexes()
    with monkeypatch.context() as m:
        m.setattr(shapes.Cutter, "__call__", lambda *_args: None)
        for key, value in docs.items():
            batch = ChangeBatch(1, {key: value})
            snap = build.build_snapshot(snap, batch, build.plan(batch),
                                        lambda ref: ENV[ref.name],  # type: ignore[union-attr]
                                        indexes)
    assert all(e.shape is None for e in snap.entries.values())
    return snap


def test_cut_and_render_give_the_bytes_back() -> None:
    for dumps in ({}, {"separators": (",", ":")}, {"indent": 2}):
        doc = raw(hook("h1", "t1", labels={"x": "y"}), **dumps)
        found = shapes.cut("h1", "t1", doc)
        assert found is not None, dumps
        shape = shapes.Shape(*found)
        assert b"h1" not in shape.text and b"t1" not in shape.text
        assert shape.render("h1", "t1") == doc
        other = raw(hook("h2", "t9", labels={"x": "y"}), **dumps)
        assert shapes.cut("h2", "t9", other) == found


def test_render_in_either_order_and_without_namespace() -> None:
    flipped = hook("h1", "t1")
    flipped["metadata"] = {"namespace": "t1", "labels": {"a": "b"}, "name": "h1"}
    docs = [(("h1", "t1"), raw(flipped)), (("h1", "t1"), raw(hook("h1", "t1"))),
            (("n1", None), raw(namespace("n1"))),
            (("n1", None), raw(namespace("n1"), separators=(",", ":")))]
    for (name, ns), doc in docs:
        found = shapes.cut(name, ns, doc)
        assert found is not None
        shape = shapes.Shape(*found)
        assert shape.render(name, ns) == doc
        other = shape.render("zz-9", "y" if ns else None)
        assert other == doc.replace(f'"{name}"'.encode(), b'"zz-9"').replace(
            f'"{ns}"'.encode(), b'"y"')


def test_no_shape_for_names_that_are_not_names_or_not_there() -> None:
    assert shapes.cut("H1", "t1", raw(hook("H1", "t1"))) is None  # not a name
    assert shapes.cut("h1", "T1", raw(hook("h1", "T1"))) is None
    escaped = raw(hook("h1", "t1")).replace(b'"h1"', b'"\\u0068\\u0031"')
    assert shapes.cut("h1", "t1", escaped) is None
    # A document holding a placeholder's own text: its shape is unsound, never rendered wrong.
    tricky = raw(hook("h1", "t1", labels={"name": shapes.NAME_PLACEHOLDER}))
    found = shapes.cut("h1", "t1", tricky)
    assert found is not None and not shapes.sound(shapes.Shape(*found))


def test_shaped_snapshot_equals_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = fleet()
    fast, slow = built(docs), one_by_one(docs, monkeypatch)
    assert not fast.errors and not slow.errors
    assert set(fast.entries.keys()) == set(slow.entries.keys())
    for key, entry in fast.entries.items():
        other = slow.entries[key]
        assert entry.resource == other.resource, key
        assert entry.raw == docs[key] == other.raw, key
        assert entry.vault_paths == other.vault_paths
        assert entry.resource == RESOURCE_ADAPTER.validate_python(
            {**json.loads(docs[key]), **({"spec": entry.resource.spec} if key.kind != "Namespace"
                                         else {})})  # resolved spec
    hooks = [e for k, e in fast.entries.items() if k.kind == "Webhook"]
    assert all(e.shape is not None for e in hooks)
    # One validated body for all of them, and one resolved secret.
    assert len({id(e.resource.spec) for e in hooks}) == 1
    assert hooks[0].resource.spec.verify.secret == ("s3cret",)  # type: ignore[union-attr]
    assert len({id(e.shape) for e in hooks}) == 1


def test_a_document_failing_alone_fails_with_its_own_message(
        monkeypatch: pytest.MonkeyPatch) -> None:
    docs = fleet(1, 2)
    bad = hook("h9", "t0")
    bad["spec"]["chain"]["timeout_s"] = -1
    docs[ResourceKey("Webhook", "t0", "h9")] = raw(bad)
    docs[ResourceKey("Webhook", "t0", "h8")] = raw(bad).replace(b'"h9"', b'"h8"')
    wrong = ResourceKey("Webhook", "t0", "elsewhere")
    docs[wrong] = raw(hook("h7", "t0", labels={"team": "a"}))  # stored under another name
    bad_name = ResourceKey("Webhook", "t0", "Bad")
    docs[bad_name] = raw(hook("Bad", "t0", labels={"team": "a"}))
    fast, slow = built(docs), one_by_one(docs, monkeypatch)
    assert dict(fast.errors) == dict(slow.errors)
    assert "Webhook/t0/h9" in fast.errors and "Webhook/t0/h8" in fast.errors
    assert "stored as" in fast.errors[str(wrong)]
    assert "invalid name" in fast.errors[str(bad_name)]
    assert ResourceKey("Webhook", "t0", "h0") in fast.entries


def test_neighbours_in_store_order_share_a_shape_only_when_equal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A store reads keys in order: a document is first compared with the shape of the one
    before it (same kind and namespace). Neighbours that differ anywhere else must not pass."""
    docs = fleet(1, 0)
    ns = "t0"
    for name, doc in [
        ("h0", hook("h0", ns, labels={"team": "a"})),
        ("h1", hook("h1", ns, labels={"team": "a"})),  # the shape of h0
        ("h2", hook("h2", ns, labels={"team": "b"})),  # another shape
        ("h3", hook("h3", ns, labels={"team": "a"})),  # h0's again, after h2's
        ("h4", hook("h5", ns, labels={"team": "a"})),  # stored under another name
        ("Bad", hook("Bad", ns, labels={"team": "a"})),  # not a name
        ("h6", hook("h6", ns, labels={"team": "a"}, generation=3)),
    ]:
        docs[ResourceKey("Webhook", ns, name)] = raw(doc)
    escaped = raw(hook("h7", ns, labels={"team": "a"})).replace(b'"h7"', b'"\\u0068\\u0037"')
    docs[ResourceKey("Webhook", ns, "h7")] = escaped
    docs[ResourceKey("Webhook", ns, "h8")] = raw(hook("h8", ns, labels={"team": "a"}))[:-1]
    fast, slow = built(docs), one_by_one(docs, monkeypatch)
    assert dict(fast.errors) == dict(slow.errors)
    assert sorted(fast.errors) == ["Webhook/t0/Bad", "Webhook/t0/h4", "Webhook/t0/h8"]
    assert set(fast.entries.keys()) == set(slow.entries.keys())
    for key, entry in fast.entries.items():
        assert entry.resource == slow.entries[key].resource, key
        assert entry.raw == docs[key], key
    hooks = {k.name: e for k, e in fast.entries.items() if k.kind == "Webhook"}
    assert hooks["h0"].shape is hooks["h1"].shape is hooks["h3"].shape
    assert hooks["h2"].shape is not hooks["h0"].shape


def test_tenant_rules_are_checked_with_each_namespace() -> None:
    docs: dict[ResourceKey, RawDoc] = {}
    for ns in ("alpha", "beta"):
        docs[ResourceKey("Namespace", None, ns)] = raw(namespace(ns))
        doc = webhook("h", ns, secret="{$vault:alpha/gh#secret}")
        doc["metadata"]["sandbox"] = True
        docs[ResourceKey("Webhook", ns, "h")] = raw(doc)
    batch = ChangeBatch(1, docs, full=True)
    planned = build.plan(batch)
    assert [str(k) for k, _raw, _exc in planned.failed] == ["Webhook/beta/h"]
    assert "start with 'beta/'" in planned.failed[0][2].message


def test_global_resources_have_shapes_too() -> None:
    docs = {ResourceKey("Namespace", None, f"n{i}"): raw(namespace(f"n{i}")) for i in range(3)}
    snap = built(docs)
    assert all(e.shape is not None and e.raw == docs[k] for k, e in snap.entries.items())
    assert snap.namespace("n2").metadata.name == "n2"  # type: ignore[union-attr]
    assert snap.namespace("n2").metadata.namespace is None  # type: ignore[union-attr]


async def test_unresolvable_shape_is_refused_for_every_document_and_retried() -> None:
    docs = fleet(2, 2)
    h = SnapshotHolder(env={"API_TOKEN": "t"})  # no GITHUB_SECRET
    snap = await h.apply(ChangeBatch(1, docs, full=True))
    refused = {k for k in snap.errors if k.startswith("Webhook/")}
    assert len(refused) == 4
    assert all("GITHUB_SECRET" in snap.errors[k] for k in refused)


def test_documents_holding_the_placeholders_come_out_right(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = fleet(1, 1)
    for i, labels in enumerate(({"a": shapes.NAME_PLACEHOLDER},
                                {"name": shapes.NAME_PLACEHOLDER},
                                {"namespace": shapes.NAMESPACE_PLACEHOLDER},
                                {"name": "p3"}, {"namespace": "t0"}, {"namespace": "t1"})):
        for ns in ("t0", "t1"):
            docs[ResourceKey("Namespace", None, ns)] = raw(namespace(ns))
            docs[ResourceKey("Webhook", ns, f"p{i}")] = raw(hook(f"p{i}", ns, labels=labels))
    docs[ResourceKey("Webhook", "t0", shapes.NAME_PLACEHOLDER)] = raw(hook(
        shapes.NAME_PLACEHOLDER, "t0", labels={"team": "a"}))
    # The names met first elsewhere than in metadata: the shape does not fit.
    first = hook("p9", "t0")
    first["metadata"] = {"labels": {"name": "p9", "namespace": "t0"}, **first["metadata"]}
    docs[ResourceKey("Webhook", "t0", "p9")] = raw(first)
    fast, slow = built(docs), one_by_one(docs, monkeypatch)
    assert not fast.errors and not slow.errors
    for key, entry in fast.entries.items():
        assert entry.resource == slow.entries[key].resource, key
        assert entry.raw == docs[key], key


def test_is_name_is_the_name_pattern() -> None:
    import random

    from providers.model import NAME_RE

    rng = random.Random(7)
    alphabet = "az09-_A.\n é"
    words = ["", "-", "a", "a-", "-a", "a-b", "a" * 63, "a" * 64, "ab\n", "x-whplane"]
    words += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 8)))
              for _ in range(3000)]
    for word in words:
        assert shapes.is_name(word) == bool(NAME_RE.fullmatch(word)), repr(word)


def full_build(docs: dict[ResourceKey, RawDoc],
               indexes: build.Indexes) -> tuple[Snapshot, build.Plan]:
    batch = ChangeBatch(1, docs, full=True)
    planned = build.plan(batch)
    return build.build_snapshot(Snapshot(0), batch, planned,
                                lambda ref: ENV[ref.name],  # type: ignore[union-attr]
                                indexes), planned


def test_full_build_checks_connections_per_shape_and_namespace(
        monkeypatch: pytest.MonkeyPatch) -> None:
    docs = fleet(3, 2)
    for ns in ("t0", "t2"):  # t1 has no `local` connection: its webhooks are refused
        docs[ResourceKey("Connection", ns, "local")] = raw(connection(
            "local", ns, type="http", url="https://local.example/"))
    for n in range(3):
        for i in range(2):
            doc = webhook(f"l{i}", f"t{n}", secret="{$GITHUB_SECRET}", connections=("local",))
            docs[ResourceKey("Webhook", f"t{n}", f"l{i}")] = raw(doc)
    fast_indexes = build.Indexes()
    fast, planned = full_build(docs, fast_indexes)
    assert len(planned.shaped) > len(docs) // 2
    assert sorted(fast.errors) == ["Webhook/t1/l0", "Webhook/t1/l1"]
    assert "connection 'local'" in fast.errors["Webhook/t1/l0"]
    with monkeypatch.context() as m:
        m.setattr(shapes.Cutter, "__call__", lambda *_args: None)
        slow_indexes = build.Indexes()
        slow, planned = full_build(docs, slow_indexes)
        assert not len(planned.shaped)
    assert dict(slow.errors) == dict(fast.errors)
    assert set(slow.entries.keys()) == set(fast.entries.keys())
    assert slow_indexes.conn_users == fast_indexes.conn_users
    assert slow_indexes.path_users == fast_indexes.path_users


async def test_shaped_webhooks_hold_their_connection() -> None:
    h = SnapshotHolder(env=ENV)
    docs = fleet(2, 3)
    await h.apply(ChangeBatch(1, docs, full=True))
    api = ResourceKey("Connection", None, "api")
    snap = await h.apply(ChangeBatch(2, deletes=frozenset({api})))
    assert api in snap.entries and "still used by" in snap.errors[str(api)]
    # A reload whose webhooks' shape no longer resolves keeps the versions in force, which
    # still hold their connection.
    h = SnapshotHolder(env=ENV)
    await h.apply(ChangeBatch(1, docs, full=True))
    reload = {k: (v.replace(b"GITHUB_SECRET", b"MISSING")  # type: ignore[union-attr]
                  if k.kind == "Webhook" else v) for k, v in docs.items()}
    snap = await h.apply(ChangeBatch(3, reload, full=True))
    hook = ResourceKey("Webhook", "t1", "h2")
    assert "previous version kept" in snap.errors[str(hook)]
    assert snap.entries[hook].raw == docs[hook]
    snap = await h.apply(ChangeBatch(4, deletes=frozenset({api})))
    assert api in snap.entries and "still used by" in snap.errors[str(api)]

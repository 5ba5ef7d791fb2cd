"""Pure change-set logic: what an apply, a delete or a rollback does to the stored config.

No I/O here: given what the store holds and what the operator wants, compute the changes, the
documents to write (with their generation), and the problems that must stop the apply.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from control_plane.store import Change, Doc, HistoryRecord, Stored, scope
from providers.resources import ResourceKey

# Kinds `prune` may delete: Namespaces are never pruned (that would cascade).
PRUNABLE = ("Webhook", "Connection")


def comparable(doc: Mapping[str, Any]) -> Doc:
    """The document without the fields the store manages."""
    meta = {k: v for k, v in doc.get("metadata", {}).items() if k not in ("generation",)}
    return {**doc, "metadata": meta}


def with_generation(doc: Mapping[str, Any], generation: int) -> Doc:
    return {**doc, "metadata": {**doc.get("metadata", {}), "generation": generation}}


def plan(
    current: Mapping[ResourceKey, Stored],
    wanted: Mapping[ResourceKey, Doc],
    deletes: Iterable[ResourceKey] = (),
) -> tuple[list[Change], dict[ResourceKey, Doc], list[ResourceKey]]:
    """(changes, documents to write, keys to delete) turning `current` into `wanted` + deletes."""
    changes: list[Change] = []
    puts: dict[ResourceKey, Doc] = {}
    for key, doc in wanted.items():
        old = current.get(key)
        if old is None:
            stored = with_generation(comparable(doc), 1)
            changes.append(Change("create", key, None, stored))
            puts[key] = stored
        elif comparable(old.doc) == comparable(doc):
            changes.append(Change("unchanged", key, old.doc, old.doc))
        else:
            generation = int(old.doc.get("metadata", {}).get("generation") or 0) + 1
            stored = with_generation(comparable(doc), generation)
            changes.append(Change("update", key, old.doc, stored))
            puts[key] = stored
    removed: list[ResourceKey] = []
    for key in deletes:
        old = current.get(key)
        if old is not None and key not in wanted:
            changes.append(Change("delete", key, old.doc, None))
            removed.append(key)
    return changes, puts, removed


def prune_targets(
    current: Mapping[ResourceKey, Stored], wanted: Mapping[ResourceKey, Doc]
) -> list[ResourceKey]:
    """Webhooks and connections of the scopes the documents touch that the documents omit."""
    scopes = {scope(k) for k in wanted}
    return sorted(
        (k for k in current if k.kind in PRUNABLE and scope(k) in scopes and k not in wanted),
        key=str,
    )


def cascade(current: Mapping[ResourceKey, Stored], namespace: str) -> list[ResourceKey]:
    """A namespace and everything in it."""
    keys = [k for k in current if k.namespace == namespace]
    return [*sorted(keys, key=str), ResourceKey("Namespace", None, namespace)]


def state_at(
    current: Mapping[ResourceKey, Stored],
    history: Iterable[HistoryRecord],
    revision: int,
    namespace: str,
) -> dict[ResourceKey, Doc]:
    """The namespace's resources as they were right after `revision`.

    Walks back from the present, undoing every recorded change newer than `revision`.
    """
    state: dict[ResourceKey, Doc] = {
        k: s.doc for k, s in current.items() if scope(k) == namespace}
    for record in sorted(history, key=lambda r: r.revision, reverse=True):
        if record.revision <= revision:
            break
        for change in record.changes:
            if scope(change.key) != namespace or change.op == "unchanged":
                continue
            if change.before is None:
                state.pop(change.key, None)
            else:
                state[change.key] = change.before
    return state

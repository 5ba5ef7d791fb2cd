"""What the control plane needs of a config store, and the records it keeps there.

Two backends implement `Store`: etcd (`etcd_store.py`) and a local directory (`dir_store.py`).
Both make one apply one revision, all or nothing, together with its history record.

Errors (`control_plane.errors`): `StoreError` and its leaves `Conflict` (the config moved since it
was read), `StoreRefused` (the store would not take the write, with the fix) and `StoreFailed`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from control_plane.errors import Conflict, StoreError, StoreFailed, StoreRefused
from providers.resources import GLOBAL, ResourceKey
from providers.rollout import Canary

__all__ = ["Change", "Conflict", "Doc", "Draft", "HistoryRecord", "Store", "StoreError",
           "StoreFailed", "StoreRefused", "Stored", "scope", "stored_doc"]

Op = Literal["create", "update", "delete", "unchanged"]
Doc = dict[str, Any]


def scope(key: ResourceKey) -> str:
    """The namespace a resource belongs to: a Namespace resource belongs to itself."""
    return key.name if key.kind == "Namespace" else key.namespace or GLOBAL


@dataclass(frozen=True, slots=True)
class Stored:
    """A resource as the store holds it, with the revision that last wrote it."""

    key: ResourceKey
    doc: Doc
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Change:
    op: Op
    key: ResourceKey
    before: Doc | None = None
    after: Doc | None = None

    def summary(self) -> dict[str, Any]:
        return {"op": self.op, "kind": self.key.kind, "namespace": self.key.namespace,
                "name": self.key.name}

    def as_dict(self) -> dict[str, Any]:
        return {**self.summary(), "before": self.before, "after": self.after}


@dataclass(frozen=True, slots=True)
class HistoryRecord:
    revision: int
    author: str
    message: str
    time: float
    changes: tuple[Change, ...]
    # A rollout decision recorded with this revision: {"action": "canary" | "promote" |
    # "abort", "canary": <Canary.to_json()>, "reason": "..."}; None for a plain change.
    rollout: Mapping[str, Any] | None = None

    def namespaces(self) -> set[str]:
        return {scope(c.key) for c in self.changes}

    def as_dict(self, full: bool = True) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "author": self.author,
            "message": self.message,
            "time": self.time,
            "changes": [c.as_dict() if full else c.summary() for c in self.changes],
            **({"rollout": dict(self.rollout)} if self.rollout is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], revision: int | None = None) -> HistoryRecord:
        return cls(
            revision=int(d["revision"] if revision is None else revision),
            author=str(d.get("author", "")),
            message=str(d.get("message", "")),
            time=float(d.get("time", 0)),
            changes=tuple(
                Change(c["op"], ResourceKey(c["kind"], c["namespace"], c["name"]),
                       c.get("before"), c.get("after"))
                for c in d.get("changes", ())
            ),
            rollout=d.get("rollout"),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Draft:
    """A change set ready to commit: what to write, and the record to keep of it."""

    puts: Mapping[ResourceKey, Doc]
    deletes: Sequence[ResourceKey]
    changes: tuple[Change, ...]
    author: str
    message: str
    time: float = field(default_factory=time.time)
    # The canary record this commit starts (`canary`), or the end of the running one
    # (`clear_canary`: a promote or an abort), in the same transaction as the resources.
    canary: Canary | None = None
    clear_canary: bool = False
    rollout: Mapping[str, Any] | None = None  # the history record's rollout decision

    def record(self, revision: int) -> HistoryRecord:
        return HistoryRecord(revision, self.author, self.message, self.time, self.changes,
                             self.rollout)


class Store(Protocol):
    url: str

    async def read(self) -> tuple[int, dict[ResourceKey, Stored]]:
        """(config revision, every resource): the revision of the latest apply, 0 if none."""
        ...

    async def commit(self, draft: Draft, base_revision: int) -> int:
        """Write `draft` atomically if the config revision is still `base_revision`.

        Returns the new revision; raises Conflict if anything was applied meanwhile.
        """
        ...

    async def history(self, limit: int = 100) -> list[HistoryRecord]:
        """Newest first."""
        ...

    async def history_get(self, revision: int) -> HistoryRecord | None: ...

    async def canary(self) -> Canary | None:
        """The running canary's record, None when no canary runs."""
        ...

    async def gateways(self) -> list[dict[str, Any]]: ...

    async def put_token(self, digest: str, record: Mapping[str, Any]) -> None: ...

    async def get_token(self, digest: str) -> dict[str, Any] | None: ...

    async def list_tokens(self) -> dict[str, dict[str, Any]]:
        """Every token record by digest."""
        ...

    async def touch_token(self, digest: str, fields: Mapping[str, Any]) -> None:
        """Update fields of a token record, only if it still exists (never revive a revoked one)."""
        ...

    async def delete_token(self, digest: str) -> bool:
        """Remove a token record; False if there was none."""
        ...

    async def close(self) -> None: ...


def stored_doc(key: ResourceKey, value: bytes | str) -> Doc:
    """The stored document; a value that is not a JSON object (an etcdctl put, say) shown as
    what it is, never hidden: gateways skip it and keep the previous version, and an apply
    of the resource reads as the update it is."""
    try:
        doc = json.loads(value)
    except ValueError as exc:
        return invalid_doc(key, f"the stored value is not valid JSON ({exc})")
    if not isinstance(doc, dict):
        return invalid_doc(key, "the stored value is JSON but not an object")
    return doc


def invalid_doc(key: ResourceKey, reason: str) -> Doc:
    metadata = {"name": key.name} | ({"namespace": key.namespace} if key.namespace else {})
    return {"apiVersion": "whplane/v1", "kind": key.kind, "metadata": metadata,
            "invalid": f"{reason}: gateways skip it and serve the previous version; apply the "
                       "resource again or delete it"}

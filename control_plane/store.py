"""What the control plane needs of a config store, and the records it keeps there.

Two backends implement `Store`: etcd (`etcd_store.py`) and a local directory (`dir_store.py`).
Both make one apply one revision, all or nothing, together with its history record.

Errors:

    StoreError               base
    ├── Conflict             the config moved since it was read (expected revision, or a race)
    └── StoreRefused         the store would not take the write (size limits), with the fix
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from providers.resources import GLOBAL, ResourceKey

Op = Literal["create", "update", "delete", "unchanged"]
Doc = dict[str, Any]


class StoreError(Exception):
    pass


class Conflict(StoreError):
    def __init__(self, message: str, current_revision: int) -> None:
        self.current_revision = current_revision
        super().__init__(message)


class StoreRefused(StoreError):
    pass


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

    def namespaces(self) -> set[str]:
        return {c.key.namespace or GLOBAL for c in self.changes}

    def as_dict(self, full: bool = True) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "author": self.author,
            "message": self.message,
            "time": self.time,
            "changes": [c.as_dict() if full else c.summary() for c in self.changes],
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

    def record(self, revision: int) -> HistoryRecord:
        return HistoryRecord(revision, self.author, self.message, self.time, self.changes)


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

    async def gateways(self) -> list[dict[str, Any]]: ...

    async def put_token(self, digest: str, record: Mapping[str, Any]) -> None: ...

    async def get_token(self, digest: str) -> dict[str, Any] | None: ...

    async def close(self) -> None: ...

"""Errors of the config layer.

    ProviderError                 base of everything raised by `providers`
    ├── DocumentError             one invalid resource document (file, index, field, reason)
    │   └── DocumentErrors        several of them, from one load or one apply
    ├── ReferenceError_           a `{$...}` reference is malformed or cannot be resolved
    ├── SecretBackendError        Vault could not be reached or refused us
    ├── StoreUnavailable          the config store (etcd, Vault, directory) cannot be read now
    │   └── RevisionCompacted     etcd compacted the revision we wanted to watch from
    └── InconsistentSnapshot      a snapshot would reference something it does not hold

Every message names what is wrong; none of them ever carries a secret value.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


class ProviderError(Exception):
    """Base class of config layer errors."""


@dataclass(frozen=True, slots=True)
class Location:
    """Where a document came from: a file and the index of the document in it, or a store key."""

    source: str
    index: int | None = None

    def __str__(self) -> str:
        return self.source if self.index is None else f"{self.source}[{self.index}]"


class DocumentError(ProviderError):
    def __init__(self, location: Location | str, path: str, reason: str) -> None:
        self.location = location if isinstance(location, Location) else Location(location)
        self.path = path
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.location}"
        return f"{where}: {self.path}: {self.reason}" if self.path else f"{where}: {self.reason}"

    def as_dict(self) -> dict[str, object]:
        return {
            "source": self.location.source,
            "document": self.location.index,
            "field": self.path,
            "reason": self.reason,
        }


class DocumentErrors(ProviderError):
    def __init__(self, errors: Iterable[DocumentError]) -> None:
        self.errors: Sequence[DocumentError] = tuple(errors)
        super().__init__(str(self))

    def __str__(self) -> str:
        n = len(self.errors)
        head = f"{n} invalid document{'s' if n != 1 else ''}"
        return head + "".join(f"\n  {e}" for e in self.errors)


class ReferenceError_(ProviderError):
    """A reference is malformed, or names a variable or secret that cannot be resolved."""


class SecretBackendError(ProviderError):
    """Vault is unreachable, timed out, or refused our credentials."""


class StoreUnavailable(ProviderError):
    """The config store cannot be read right now; the last good snapshot keeps serving."""


class RevisionCompacted(StoreUnavailable):
    def __init__(self, compacted_revision: int) -> None:
        self.compacted_revision = compacted_revision
        super().__init__(f"revision compacted (oldest available: {compacted_revision})")


class InconsistentSnapshot(ProviderError):
    def __init__(self, revision: int, missing: Sequence[str]) -> None:
        self.revision = revision
        self.missing = tuple(missing)
        super().__init__(f"snapshot at revision {revision} is missing: {', '.join(missing)}")

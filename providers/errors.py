"""Errors of the config layer.

    ProviderError                 base of everything raised by `providers`
    ├── DocumentError             one invalid resource document (file, index, line, field, reason)
    │   └── DocumentErrors        several of them, from one load or one apply
    ├── ReferenceError_           a `{$...}` reference is malformed or cannot be resolved
    ├── SecretBackendError        Vault could not be reached or refused us
    ├── StoreUnavailable          the config store (etcd, Vault, directory) cannot be read now
    │   └── RevisionCompacted     etcd compacted the revision we wanted to watch from
    └── InconsistentSnapshot      a snapshot would reference something it does not hold

Every message names what is wrong; none of them ever carries a secret value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field


class ProviderError(Exception):
    """Base class of config layer errors."""


@dataclass(frozen=True, slots=True)
class Location:
    """Where a document came from: a file and the index of the document in it, or a store key.

    Text read from a file also knows the document's first line, the resource it declares
    (`Webhook acme/github-push`) and the line of each field path; none of them takes part in
    equality, so a location stays the same key whether or not its text was seen.
    """

    source: str
    index: int | None = None
    line: int | None = field(default=None, compare=False)
    resource: str = field(default="", compare=False)
    lines: Mapping[str, int] | None = field(default=None, compare=False, repr=False)
    number: int | None = field(default=None, compare=False)  # a text error's document, 1-based

    def __str__(self) -> str:
        if self.index is not None:
            return f"{self.source}[{self.index}]"
        return self.source if self.line is None else f"{self.source}:{self.line}"

    def line_of(self, path: str) -> int | None:
        """The line of field `path`, or of the nearest enclosing field the text shows."""
        if self.lines:
            path = path.split(" (", 1)[0]  # "headers.{$X} (a mapping key)": a remark
            while path:
                line = self.lines.get(path)
                if line is not None:
                    return line
                path = _parent(path)
        return self.line

    def heading(self, path: str = "") -> str:
        """`examples/acme.yaml:14 (document 2, Webhook acme/github-push)`: one-based."""
        line = self.line_of(path)
        where = self.source if line is None else f"{self.source}:{line}"
        number = self.index + 1 if self.index is not None else self.number
        about = [f"document {number}"] if number is not None else []
        if self.resource:
            about.append(self.resource)
        return f"{where} ({', '.join(about)})" if about else where


def _parent(path: str) -> str:
    cut = max(path.rfind("."), path.rfind("["))
    return path[:cut] if cut > 0 else ""


class DocumentError(ProviderError):
    def __init__(self, location: Location | str, path: str, reason: str) -> None:
        self.location = location if isinstance(location, Location) else Location(location)
        self.path = path
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.location}"
        return f"{where}: {self.path}: {self.reason}" if self.path else f"{where}: {self.reason}"

    @property
    def line(self) -> int | None:
        return self.location.line_of(self.path)

    def readable(self) -> str:
        """The message for people: file, line, document number, resource, field and reason."""
        head = self.location.heading(self.path)
        # A key that is not Unicode (a lone surrogate) is named, escaped: no terminal takes it.
        path = self.path.strip().encode("utf-8", "backslashreplace").decode("utf-8")
        return f"{head}: {path}: {self.reason}" if path else f"{head}: {self.reason}"

    def as_dict(self) -> dict[str, object]:
        return {
            "source": self.location.source,
            "document": self.location.index,
            "field": self.path,
            "reason": self.reason,
            "line": self.line,
            "resource": self.location.resource or None,
        }


class DocumentErrors(ProviderError):
    """`valid`: the (location, resource) pairs that did validate, for checks beyond them."""

    def __init__(self, errors: Iterable[DocumentError], valid: Sequence[object] = ()) -> None:
        self.errors: Sequence[DocumentError] = tuple(errors)
        self.valid = valid
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

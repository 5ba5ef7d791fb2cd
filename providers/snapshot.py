"""The immutable, namespaced config snapshot a gateway serves from.

A `Snapshot` is a value: built once for a store revision, never changed afterwards. Its maps are
persistent hash maps (`immutables.Map`), so the next snapshot shares everything with this one
except the entries a change touched: building it costs O(size of the change · log n), not
O(total config).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from immutables import Map

from providers.errors import InconsistentSnapshot
from providers.provider import RawDoc
from providers.resources import (
    AnyResource,
    Connection,
    Lookup,
    Namespace,
    ResourceKey,
    Webhook,
    connection_keys,
    find_connection,
)
from providers.shapes import Shape


class _EntryFields(NamedTuple):
    stored: RawDoc  # the document's bytes (or mapping); empty when `shape` gives them
    resource: AnyResource
    vault_paths: frozenset[str]
    revision: int
    shape: Shape | None


class Entry(_EntryFields):
    """One resource in force: the document as stored (references unresolved) and resolved.

    A document of a shape (providers/shapes.py) keeps the shape, shared with every document
    like it, instead of its own bytes: `raw` renders them from the shape and the resource's
    name and namespace.

    A tuple: immutable, and made in a sixth of the time of a frozen dataclass, which counts at
    a million entries (`new_entry`).
    """

    __slots__ = ()

    def __new__(cls, raw: RawDoc, resource: AnyResource,
                vault_paths: frozenset[str] = frozenset(), revision: int = 0,
                shape: Shape | None = None) -> Entry:
        return tuple.__new__(cls, (b"" if shape is not None else raw, resource, vault_paths,
                                   revision, shape))

    @property
    def raw(self) -> RawDoc:
        shape = self.shape
        if shape is None:
            return self.stored
        md = self.resource.metadata
        return shape.render(md.name, md.namespace)

    def __repr__(self) -> str:
        return (f"Entry(resource={self.resource!r}, vault_paths={self.vault_paths!r}, "
                f"revision={self.revision!r})")


def new_entry(resource: AnyResource, vault_paths: frozenset[str], revision: int,
              shape: Shape) -> Entry:
    """`Entry(b"", resource, vault_paths, revision, shape)`, without the Python-level call."""
    return _new_tuple(Entry, (b"", resource, vault_paths, revision, shape))  # type: ignore[no-any-return]


_new_tuple: Any = tuple.__new__


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What the data plane needs to serve one webhook: it, its namespace, its connections.

    `revision` is the config revision a request served from it may claim (X-Whplane-Revision):
    the snapshot's when each of these is in force at its latest stored version; when one of
    them is refused (an entry in `Snapshot.errors`), the newest revision that wrote a version
    actually in force, so an answer never names a revision whose version it did not get.
    """

    webhook: Webhook
    namespace: Namespace | None
    connections: Map[str, Connection]
    revision: int = 0


def _written(entry: Entry) -> int:
    """The revision that wrote the version `entry` holds.

    `Entry.revision` is the batch that brought the version in, which a full reload moves
    forward for versions it merely found again; `metadata.revision`, when the control plane
    set it, is the write itself (never trusted above the batch: a hand-written value may lie).
    """
    written = entry.resource.metadata.revision
    return min(written, entry.revision) if written else entry.revision


_EMPTY: Map[ResourceKey, Entry] = Map()
_NO_ERRORS: Map[str, str] = Map()


@dataclass(frozen=True, slots=True)
class Snapshot:
    revision: int
    entries: Map[ResourceKey, Entry] = _EMPTY
    # Resource key (as text) or source -> why the latest version there is not in force.
    errors: Map[str, str] = _NO_ERRORS
    built_at: float = field(default_factory=time.time)
    # Derived on first use, like a lazy attribute: the snapshot itself never changes, so
    # neither does an endpoint built from it. Only found webhooks are cached (bounded).
    _endpoints: dict[tuple[str, str], Endpoint] = field(
        default_factory=dict, repr=False, compare=False
    )

    # -- reads (the hot path) --------------------------------------------------------------

    def webhook(self, namespace: str, name: str) -> Webhook | None:
        entry = self.entries.get(ResourceKey("Webhook", namespace, name))
        return entry.resource if entry is not None else None  # type: ignore[return-value]

    def connection(self, namespace: str | None, name: str) -> Connection | None:
        """The namespace's connection of that name, else the global one."""
        entry = find_connection(self.entries, namespace, name)
        return entry.resource if entry is not None else None  # type: ignore[return-value]

    def namespace(self, name: str) -> Namespace | None:
        entry = self.entries.get(ResourceKey("Namespace", None, name))
        return entry.resource if entry is not None else None  # type: ignore[return-value]

    def endpoint(self, namespace: str, name: str) -> Endpoint | None:
        cached = self._endpoints.get((namespace, name))
        if cached is not None:
            return cached
        wkey = ResourceKey("Webhook", namespace, name)
        hook_entry = self.entries.get(wkey)
        if hook_entry is None:
            return None
        hook: Webhook = hook_entry.resource  # type: ignore[assignment]
        nkey = ResourceKey("Namespace", None, namespace)
        ns_entry = self.entries.get(nkey)
        in_force = [hook_entry] if ns_entry is None else [hook_entry, ns_entry]
        keys = [wkey, nkey]
        conns: dict[str, Connection] = {}
        for cname in hook.spec.connections():
            # Both candidates count: a refused namespaced connection leaves the global one
            # serving, which is not what the store says either.
            keys.extend(connection_keys(namespace, cname))
            entry = find_connection(self.entries, namespace, cname)
            if entry is not None:
                conns[cname] = entry.resource  # type: ignore[assignment]
                in_force.append(entry)
        revision = self.revision
        if self.errors and any(str(k) in self.errors for k in keys):
            revision = max(_written(e) for e in in_force)
        endpoint = Endpoint(hook, ns_entry.resource if ns_entry is not None else None,  # type: ignore[arg-type]
                            Map(conns), revision)
        self._endpoints[(namespace, name)] = endpoint
        return endpoint

    # -- reads for status, persistence, tooling --------------------------------------------

    def __len__(self) -> int:
        return len(self.entries)

    def resources(self) -> Iterator[AnyResource]:
        return (e.resource for e in self.entries.values())

    def raw_documents(self) -> Iterator[tuple[ResourceKey, RawDoc]]:
        return ((k, e.raw) for k, e in self.entries.items())

    def webhook_counts(self) -> dict[str, int]:
        return dict(
            Counter(k.namespace or "" for k in self.entries.keys() if k.kind == "Webhook")
        )

    def check_consistent(self, keys: Iterable[ResourceKey] | None = None) -> None:
        """Raise InconsistentSnapshot when a webhook (of `keys`, or any) lacks a connection."""
        found = dangling(self.entries, self.entries.keys() if keys is None else keys)
        missing = [f"{key} -> Connection/{name}" for key, name in found]
        if missing:
            raise InconsistentSnapshot(self.revision, sorted(missing))


def dangling(
    entries: Lookup[Entry], keys: Iterable[ResourceKey],
    instead: Mapping[ResourceKey, Entry] | None = None,
) -> list[tuple[ResourceKey, str]]:
    """(webhook, connection name) for each webhook of `keys` whose connection `entries` lacks,
    its first missing one; `instead` puts other versions of webhooks in the place of theirs.

    The one consistency check: the snapshot builder refuses what it finds, and tests assert
    that it finds nothing.
    """
    out: list[tuple[ResourceKey, str]] = []
    instead = instead or {}
    # A full build checks every webhook: most share their spec (providers/shapes.py) and their
    # namespace's connections, so each is looked at once.
    names: dict[int, tuple[str, ...]] = {}
    present: dict[tuple[str | None, str], bool] = {}
    for key in keys:
        entry = instead.get(key) or entries.get(key)
        if entry is None or not isinstance(entry.resource, Webhook):
            continue
        spec = entry.resource.spec
        cnames = names.get(id(spec))
        if cnames is None:
            cnames = names[id(spec)] = spec.connections()
        for cname in cnames:
            at = (key.namespace, cname)
            found = present.get(at)
            if found is None:
                found = present[at] = find_connection(entries, key.namespace, cname) is not None
            if not found:
                out.append((key, cname))
                break
    return out

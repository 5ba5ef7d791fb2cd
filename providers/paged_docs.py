"""The documents of a full read, left in the store's answer pages until someone reads them.

A full read of a hundred thousand resources holds as many stored documents, each a few hundred
bytes, for as long as the snapshot takes to build. Copied out as Python bytes up front, they
would fill the small-object allocator's arenas side by side with what the snapshot keeps (its
keys, names and models), and once freed leave those arenas pinned: tens of MB of resident
memory a gateway never gives back. Left in the pages (the protobuf library's own large
allocations, freed whole with the batch), a document becomes bytes only when the snapshot build
reads it, and those bytes are freed before the next one is read.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, Mapping, Sequence
from typing import Any

from providers.build import Planner
from providers.resources import ResourceKey


class PagedDocs(Mapping[ResourceKey, bytes]):
    """Resource key -> stored document, the documents read from key-value pages on access.

    Each page is also planned as it is added (`planned`, providers/build.py), while the store
    reads the next one: the snapshot build then starts from a plan already made.
    """

    def __init__(self) -> None:
        # (the page's key-values, the resource key of each, None where it is not a resource)
        self._pages: list[tuple[Sequence[Any], list[ResourceKey | None]]] = []
        self._keys: dict[ResourceKey, None] = {}
        self._at: dict[ResourceKey, tuple[int, int]] | None = None  # built on first lookup
        self.planned = Planner()

    def add_page(self, kvs: Sequence[Any], keys: list[ResourceKey | None]) -> None:
        """Add a page: its key-values and the resource key of each (None: not a resource).
        A key must not be in an earlier page (each etcd key is one resource key)."""
        self._pages.append((kvs, keys))
        self._keys.update(dict.fromkeys(k for k in keys if k is not None))
        self._at = None
        add = self.planned.add
        for key, kv in zip(keys, kvs, strict=True):
            if key is not None:
                add(key, kv.value)

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[ResourceKey]:
        return iter(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __getitem__(self, key: ResourceKey) -> bytes:
        at = self._at
        if at is None:
            at = self._at = {k: (p, i) for p, (_kvs, keys) in enumerate(self._pages)
                             for i, k in enumerate(keys) if k is not None}
        p, i = at[key]
        return self._pages[p][0][i].value  # type: ignore[no-any-return]

    def items(self) -> ItemsView[ResourceKey, bytes]:
        return _Items(self)

    def revisions(self) -> Iterator[int]:
        """The mod revision of every document."""
        for kvs, keys in self._pages:
            for key, kv in zip(keys, kvs, strict=True):
                if key is not None:
                    yield kv.mod_revision


class _Items(ItemsView[ResourceKey, bytes]):
    _mapping: PagedDocs

    def __iter__(self) -> Iterator[tuple[ResourceKey, bytes]]:
        for kvs, keys in self._mapping._pages:
            for key, kv in zip(keys, kvs, strict=True):
                if key is not None:
                    yield key, kv.value

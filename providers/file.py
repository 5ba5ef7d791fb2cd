"""Config provider for `file:PATH`: a YAML/JSON file, or a directory of them.

A directory holding `..data` is read through that symlink, resolved once per read: this is how a
Kubernetes ConfigMap volume and the control plane's local store publish a new generation (write
a new directory, then swap one symlink), so each swap is seen whole, never half old, half new.

The revision is the integer in `.revision` of the data directory when the control plane wrote
it, and otherwise a counter local to this process that moves on each change.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import watchfiles

from providers.errors import DocumentErrors, StoreUnavailable
from providers.loader import iter_files, parse_text
from providers.provider import ChangeBatch, ProviderState, ProviderStatus, RawDoc
from providers.resources import ResourceKey
from providers.rollout import CANARY_FILE, Canary

log = logging.getLogger(__name__)
REVISION_FILE = ".revision"
CHANGE_FILE = ".change.json"  # the control plane's history record of the data directory
DATA_LINK = "..data"


class FileProvider:
    def __init__(self, path: Path | str, poll_interval_s: float = 5.0) -> None:
        self.path = Path(path)
        self._poll_ms = int(max(0.5, poll_interval_s) * 1000)
        self._docs: dict[ResourceKey, Mapping[str, Any]] = {}
        self._by_file: dict[str, dict[ResourceKey, Mapping[str, Any]]] = {}
        self._revision = 0
        self._fingerprint: object = None
        self._canary: Canary | None = None
        self._read_canary: Canary | None = None
        self._state = ProviderState.CONNECTING
        self._last_error: str | None = None
        self._stop = asyncio.Event()

    @property
    def status(self) -> ProviderStatus:
        return ProviderStatus(self._state, f"file:{self.path}", last_error=self._last_error)

    def _root(self) -> Path:
        data = self.path / DATA_LINK
        return data.resolve() if data.exists() else self.path

    def _fingerprint_now(self) -> object:
        root = self._root()
        files = list(iter_files(root)) if root.exists() else []
        stats = []
        extra = (root / CANARY_FILE,) if root.is_dir() else ()
        for f in (*files, *extra):
            try:
                st = f.stat()
            except FileNotFoundError:
                continue
            stats.append((str(f), st.st_mtime_ns, st.st_size, st.st_ino))
        return (str(root), tuple(stats))

    def _read(self) -> tuple[int | None, dict[ResourceKey, Mapping[str, Any]], list[str]]:
        """(revision, documents, errors) of the data directory, and its canary record in
        `self._read_canary`."""
        root = self._root()
        if not root.exists():
            raise StoreUnavailable(f"config path {self.path} does not exist")
        errors: list[str] = []
        docs: dict[ResourceKey, Mapping[str, Any]] = {}
        by_file: dict[str, dict[ResourceKey, Mapping[str, Any]]] = {}
        for f in iter_files(root):
            name = str(f.relative_to(root)) if f != root else f.name
            try:
                parsed = parse_text(f.read_text(encoding="utf-8"), name)
            except (DocumentErrors, OSError, UnicodeDecodeError) as exc:
                # A file caught mid-edit keeps its previous resources rather than losing them.
                errors.append(f"{name}: {exc}")
                by_file[name] = self._by_file.get(name, {})
                docs.update(by_file[name])
                continue
            mine: dict[ResourceKey, Mapping[str, Any]] = {}
            for loc, doc in parsed:
                key = _key(doc)
                if key is None:
                    errors.append(f"{loc}: not a resource (needs kind and metadata.name)")
                elif key in docs:
                    errors.append(f"{loc}: {key} is defined twice")
                else:
                    mine[key] = doc  # type: ignore[assignment]
                    docs[key] = doc  # type: ignore[assignment]
            by_file[name] = mine
        self._by_file = by_file
        revision = None
        rev_file = root / REVISION_FILE if root.is_dir() else None
        if rev_file is not None and rev_file.exists():
            try:
                revision = int(rev_file.read_text().strip())
            except ValueError:
                errors.append(f"{REVISION_FILE}: not an integer")
        self._read_canary = self._canary_in(root, errors)
        return revision, docs, errors

    def _canary_in(self, root: Path, errors: list[str]) -> Canary | None:
        path = root / CANARY_FILE
        if not root.is_dir() or not path.exists():
            return None
        try:
            return Canary.from_json(path.read_bytes())
        except (OSError, ValueError) as exc:
            errors.append(f"{CANARY_FILE}: {exc}")
            return None

    def _before(self, canary: Canary) -> dict[ResourceKey, RawDoc | None]:
        """What the canary revision changed, as it was before: from its history record."""
        candidates = [self.path / "history" / f"{canary.revision:020d}.json",
                      self._root() / CHANGE_FILE]
        for path in candidates:
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if int(record.get("revision", -1)) != canary.revision:
                continue
            out: dict[ResourceKey, RawDoc | None] = {}
            for change in record.get("changes", ()):
                key = ResourceKey(change["kind"], change.get("namespace"), change["name"])
                out[key] = change.get("before")
            return out
        log.warning("no history record of canary revision %d: serving the store as it is",
                    canary.revision)
        return {}

    async def load(self) -> ChangeBatch:
        try:
            fingerprint = await asyncio.to_thread(self._fingerprint_now)
            revision, docs, errors = await asyncio.to_thread(self._read)
        except (OSError, StoreUnavailable) as exc:
            self._state = ProviderState.DISCONNECTED
            self._last_error = str(exc)
            raise StoreUnavailable(str(exc)) from exc
        self._state = ProviderState.CONNECTED
        self._fingerprint = fingerprint
        self._docs = docs
        self._revision = revision if revision is not None else max(self._revision, 0) + 1
        puts: dict[ResourceKey, RawDoc] = dict(docs)
        canary = self._canary = self._read_canary
        before = await asyncio.to_thread(self._before, canary) if canary is not None else None
        return ChangeBatch(self._revision, puts, full=True, source_errors=tuple(errors),
                           canary_changed=True, canary=canary, canary_before=before)

    async def _changes(self) -> ChangeBatch | None:
        fingerprint = await asyncio.to_thread(self._fingerprint_now)
        if fingerprint == self._fingerprint:
            return None
        revision, docs, errors = await asyncio.to_thread(self._read)
        self._fingerprint = fingerprint
        puts = {k: d for k, d in docs.items() if self._docs.get(k) != d}
        deletes = frozenset(k for k in self._docs if k not in docs)
        self._docs = docs
        canary_changed = self._read_canary != self._canary
        self._canary = self._read_canary
        if not puts and not deletes and not errors and not canary_changed:
            return None
        self._revision = revision if revision is not None else self._revision + 1
        return ChangeBatch(self._revision, puts, deletes, source_errors=tuple(errors),
                           canary_changed=canary_changed, canary=self._canary)

    async def watch(self, after_revision: int) -> AsyncIterator[ChangeBatch]:
        watch_dir = self.path if self.path.is_dir() else self.path.parent
        self._revision = max(self._revision, after_revision)
        async for _ in watchfiles.awatch(
            watch_dir,
            stop_event=self._stop,
            debounce=50,
            step=20,
            rust_timeout=self._poll_ms,
            yield_on_timeout=True,  # a periodic re-check, in case an event was missed
            recursive=True,
        ):
            try:
                batch = await self._changes()
            except (OSError, StoreUnavailable) as exc:
                self._state = ProviderState.DISCONNECTED
                self._last_error = str(exc)
                log.warning("reading %s: %s", self.path, exc)
                continue
            self._state = ProviderState.CONNECTED
            self._last_error = None
            if batch is not None:
                yield batch

    async def close(self) -> None:
        self._stop.set()
        self._state = ProviderState.CLOSED


def _key(doc: object) -> ResourceKey | None:
    if not isinstance(doc, Mapping):
        return None
    meta = doc.get("metadata")
    kind = doc.get("kind")
    if not isinstance(meta, Mapping) or not isinstance(kind, str):
        return None
    name, ns = meta.get("name"), meta.get("namespace")
    if not isinstance(name, str) or not (ns is None or isinstance(ns, str)):
        return None
    return ResourceKey(kind, ns, name)


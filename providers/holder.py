"""The RCU holder: owns the current snapshot and is the only one that replaces it.

Requests read `holder.current` once and use that object to the end. One task (`run`) takes
change batches from a provider off the request path, builds the next snapshot from the previous
one plus the change, and swaps one reference. A document that fails validation or reference
resolution is skipped: its previous good version stays in force and the error is recorded in the
snapshot. A connection deletion that would leave webhooks pointing at nothing is refused the same
way.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from immutables import Map

from providers import reference_fields, sandbox
from providers.backoff import backoff
from providers.errors import (
    DocumentErrors,
    Location,
    ProviderError,
    ReferenceError_,
)
from providers.last_good import LastGood
from providers.loader import RESOURCE_ADAPTER, validate_document
from providers.provider import ChangeBatch, ConfigProvider, RawDoc
from providers.references import VaultRef, env_resolver, parse, refs_in
from providers.resources import AnyResource, ResourceKey, Webhook, key_of
from providers.snapshot import Entry, Snapshot

log = logging.getLogger(__name__)
_NO_PATHS: frozenset[str] = frozenset()
# Building a snapshot allocates many objects that all stay alive; the cyclic GC would rescan
# the growing heap again and again (measured: 9 s instead of 3 s for 110k resources).
GC_PAUSE_THRESHOLD = 1000


class SecretSource(Protocol):
    """What the holder needs of a secret cache (providers.secret_cache.SecretCache)."""

    async def fetch(self, paths: Iterable[str]) -> None: ...
    def lookup(self, ref: VaultRef) -> str: ...
    async def refresh(self) -> set[str]: ...
    def retain(self, paths: Iterable[str]) -> None: ...


@dataclass(frozen=True, slots=True)
class _Prepared:
    key: ResourceKey
    raw: RawDoc
    resource: AnyResource  # as written: references not resolved
    sites: tuple[reference_fields.Site, ...]  # where its references are
    vault_paths: frozenset[str]
    revision: int


class _Failed(Exception):
    def __init__(self, message: str, retryable: bool = False) -> None:
        self.message = message
        self.retryable = retryable
        super().__init__(message)


class SnapshotHolder:
    def __init__(
        self,
        env: Mapping[str, str],
        secrets: SecretSource | None = None,
        last_good: LastGood | None = None,
        source: str = "",
        secret_ttl_s: float = 60.0,
        persist_interval_s: float = 2.0,
    ) -> None:
        self._env = env
        self._secrets = secrets
        self._resolve = env_resolver(env, secrets.lookup if secrets is not None else None)
        self._last_good = last_good
        self._source = source
        self._secret_ttl_s = secret_ttl_s
        self._persist_interval_s = persist_interval_s
        self._current = Snapshot(revision=0)
        self._ready = asyncio.Event()
        self._changed = asyncio.Condition()
        # Indexes owned by the single writer task; requests never read them.
        self._conn_users: dict[str, set[ResourceKey]] = {}
        self._path_users: dict[str, set[ResourceKey]] = {}
        self._retry: dict[ResourceKey, RawDoc] = {}
        self._dirty = asyncio.Event()
        self._persist_lock = asyncio.Lock()
        self._listeners: list[Callable[[Snapshot], None]] = []
        self.started_from_last_good = False

    # -- reading ----------------------------------------------------------------------------

    @property
    def current(self) -> Snapshot:
        return self._current

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def wait_newer(self, revision: int, timeout: float | None = None) -> Snapshot:
        """Wait until the current snapshot's revision is above `revision`."""

        async def _wait() -> Snapshot:
            async with self._changed:
                await self._changed.wait_for(lambda: self._current.revision > revision)
                return self._current

        return await asyncio.wait_for(_wait(), timeout)

    def on_publish(self, listener: Callable[[Snapshot], None]) -> None:
        self._listeners.append(listener)

    # -- building ---------------------------------------------------------------------------

    async def apply(self, batch: ChangeBatch) -> Snapshot:
        """Build the snapshot for `batch` on top of the current one and publish it."""
        with _gc_paused(len(batch) >= GC_PAUSE_THRESHOLD):
            return await self._apply(batch)

    async def _apply(self, batch: ChangeBatch) -> Snapshot:
        prev = self._current
        entries = prev.entries.mutate()
        errors = (Map() if batch.full else prev.errors).mutate()
        if batch.full:
            self._conn_users.clear()
            self._path_users.clear()
            self._retry.clear()
            for key in prev.entries.keys():
                if key not in batch.puts:
                    del entries[key]
        for err_source in batch.source_errors:
            errors[f"source:{err_source.split(':', 1)[0]}"] = err_source

        prepared: list[_Prepared] = []
        for key, raw in batch.puts.items():
            try:
                prepared.append(self._prepare(key, raw, batch.revision))
            except _Failed as exc:
                self._fail(key, raw, exc, entries, errors)
        await self._fetch_secrets(p.vault_paths for p in prepared)
        memo: dict[str, str] = {}  # resolved references, for this build only
        for p in prepared:
            self._build(p, entries, errors, batch.full, memo)

        for key in batch.deletes:
            self._retry.pop(key, None)
            if str(key) in errors:
                del errors[str(key)]
            old = entries.get(key)
            if old is None:
                continue
            del entries[key]
            self._unindex(key, old)
        self._refuse_dangling(batch, prev, entries, errors)
        snapshot = Snapshot(batch.revision, entries.finish(), errors.finish())
        if batch.full:
            for key, entry in snapshot.entries.items():
                self._index(key, entry)
        return await self._publish(snapshot)

    def _prepare(self, key: ResourceKey, raw: RawDoc, revision: int) -> _Prepared:
        """Validate the document as written and hold it to the rules, before any secret is read.

        References are resolved later, and only in the fields that take them (see
        `providers/reference_fields.py`): never by substituting text across the document.
        """
        resource = self._validate_written(key, raw)
        doc: Mapping[str, Any] | None = raw if isinstance(raw, Mapping) else None
        sites = reference_fields.locate(resource)
        if isinstance(raw, bytes):
            in_sites = sum(reference_fields.count_in_text(site.text) for site in sites)
            # Every reference opener in the text sits in a field that takes references: the
            # common case, decided without parsing. Otherwise look closer.
            if reference_fields.count_in_text(raw.decode("utf-8", "replace")) != in_sites:
                doc = self._parse_bytes(raw)
        if doc is not None:
            misplaced = sandbox.problems(doc, resource)
            if misplaced:
                raise _Failed("; ".join(map(str, misplaced)))
        if resource.metadata.sandbox and key.namespace is not None:
            if doc is None:
                doc = self._parse_bytes(raw)  # type: ignore[arg-type]
            refused = sandbox.tenant_problems(doc, key.namespace)
            if refused:
                raise _Failed("refused by the tenant rules: " + "; ".join(map(str, refused)))
        paths: set[str] = set()
        for site in sites:
            try:
                paths.update(r.path for r in parse(site.text).refs if isinstance(r, VaultRef))
            except ReferenceError_ as exc:
                raise _Failed(f"{site.path}: {exc}") from None
        return _Prepared(key, raw, resource, tuple(sites), frozenset(paths) or _NO_PATHS,
                         revision)

    def _validate_written(self, key: ResourceKey, raw: RawDoc) -> AnyResource:
        location = Location(str(key))
        try:
            if isinstance(raw, bytes):
                try:
                    return RESOURCE_ADAPTER.validate_json(raw)
                except ValueError:
                    # Slow path only for invalid values: re-parse for a precise message.
                    return validate_document(self._parse_bytes(raw), location)
            return validate_document(raw, location)
        except DocumentErrors as exc:
            raise _Failed(_messages(exc)) from None

    @staticmethod
    def _parse_bytes(raw: bytes) -> Mapping[str, Any]:
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise _Failed(f"value is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise _Failed(f"value is a JSON {type(doc).__name__}, not an object")
        return doc

    async def _fetch_secrets(self, path_sets: Iterable[frozenset[str]]) -> None:
        paths = set().union(*path_sets)
        if paths and self._secrets is not None:
            await self._secrets.fetch(paths)

    def _validate(self, p: _Prepared, memo: dict[str, str]) -> AnyResource:
        if not p.sites:
            return p.resource

        def render(text: str) -> str:
            value = memo.get(text)
            if value is None:
                value = memo[text] = parse(text).render(self._resolve)
            return value

        try:
            return reference_fields.resolve(  # type: ignore[no-any-return]
                p.resource, render, p.sites)
        except ReferenceError_ as exc:
            raise _Failed(str(exc), retryable=bool(p.vault_paths)) from None
        except reference_fields.InvalidAfterResolving as exc:
            raise _Failed(f"invalid after resolving references: {exc}") from None

    def _build(
        self,
        p: _Prepared,
        entries: Any,
        errors: Any,
        full: bool,
        memo: dict[str, str],
    ) -> None:
        try:
            resource = self._validate(p, memo)
            actual = key_of(resource)
            if actual != p.key:
                raise _Failed(f"document is {actual} but is stored as {p.key}")
        except _Failed as exc:
            self._fail(p.key, p.raw, exc, entries, errors)
            return
        old = entries.get(p.key)
        if old is not None and not full:
            self._unindex(p.key, old)
        entry = Entry(p.raw, resource, p.vault_paths, p.revision)
        entries[p.key] = entry
        if not full:
            self._index(p.key, entry)
        self._retry.pop(p.key, None)
        if str(p.key) in errors:
            del errors[str(p.key)]

    def _fail(self, key: ResourceKey, raw: RawDoc, exc: _Failed, entries: Any, errors: Any) -> None:
        kept = " (previous version kept)" if key in entries else ""
        errors[str(key)] = exc.message + kept
        log.warning("skipping %s: %s%s", key, exc.message, kept)
        if exc.retryable:
            self._retry[key] = raw

    def _refuse_dangling(
        self, batch: ChangeBatch, prev: Snapshot, entries: Any, errors: Any
    ) -> None:
        """Keep deleted connections that webhooks still use; refuse webhooks that lack one."""
        if batch.full:
            suspects: Iterable[ResourceKey] = [k for k in batch.puts if k.kind == "Webhook"]
        else:
            names = {k.name for k in batch.deletes if k.kind == "Connection"}
            suspects = {k for n in names for k in self._conn_users.get(n, ())}
            suspects |= {k for k in batch.puts if k.kind == "Webhook"}
        for wkey in suspects:
            entry = entries.get(wkey)
            if entry is None or not isinstance(entry.resource, Webhook):
                continue
            for cname in entry.resource.spec.connections():
                if _has_connection(entries, wkey.namespace, cname):
                    continue
                restored = False
                for ckey in (
                    ResourceKey("Connection", wkey.namespace, cname),
                    ResourceKey("Connection", None, cname),
                ):
                    old = prev.entries.get(ckey)
                    if ckey in batch.deletes and old is not None:
                        entries[ckey] = old
                        self._index(ckey, old)
                        errors[str(ckey)] = f"deletion refused: still used by {wkey}"
                        restored = True
                        break
                if restored:
                    continue
                message = (
                    f"connection {cname!r} exists neither in namespace {wkey.namespace!r} "
                    "nor globally"
                )
                self._unindex(wkey, entry)
                old_hook = prev.entries.get(wkey)
                if (
                    old_hook is not None
                    and old_hook is not entry
                    and isinstance(old_hook.resource, Webhook)
                    and all(
                        _has_connection(entries, wkey.namespace, c)
                        for c in old_hook.resource.spec.connections()
                    )
                ):
                    entries[wkey] = old_hook
                    self._index(wkey, old_hook)
                    message += " (previous version kept)"
                else:
                    del entries[wkey]
                errors[str(wkey)] = message
                log.warning("skipping %s: %s", wkey, message)
                break

    def _index(self, key: ResourceKey, entry: Entry) -> None:
        if isinstance(entry.resource, Webhook):
            for cname in entry.resource.spec.connections():
                self._conn_users.setdefault(cname, set()).add(key)
        for path in entry.vault_paths:
            self._path_users.setdefault(path, set()).add(key)

    def _unindex(self, key: ResourceKey, entry: Entry) -> None:
        if isinstance(entry.resource, Webhook):
            for cname in entry.resource.spec.connections():
                users = self._conn_users.get(cname)
                if users is not None:
                    users.discard(key)
        for path in entry.vault_paths:
            users = self._path_users.get(path)
            if users is not None:
                users.discard(key)

    async def _publish(self, new: Snapshot) -> Snapshot:
        async with self._changed:
            self._current = new
            self._changed.notify_all()
        self._ready.set()
        self._dirty.set()
        for listener in self._listeners:
            try:
                listener(new)
            except Exception:
                log.exception("snapshot listener failed")
        return new

    # -- secrets ----------------------------------------------------------------------------

    async def refresh_secrets(self) -> int:
        """Re-read secrets; rebuild resources whose secrets changed or never resolved.

        Returns how many resources were rebuilt. The store revision does not move: the same
        config now resolves to other values.
        """
        if self._secrets is None:
            return 0
        in_use = {p for p, users in self._path_users.items() if users}
        in_use |= {p for raw in self._retry.values() for p in _vault_paths(raw)}
        self._secrets.retain(in_use)
        changed = await self._secrets.refresh()
        snap = self._current
        puts: dict[ResourceKey, RawDoc] = dict(self._retry)
        for path in changed:
            for key in self._path_users.get(path, ()):
                entry = snap.entries.get(key)
                if entry is not None:
                    puts.setdefault(key, entry.raw)
        if not puts:
            return 0
        log.info("secrets changed: rebuilding %d resources", len(puts))
        await self.apply(ChangeBatch(revision=snap.revision, puts=puts))
        return len(puts)

    # -- running ----------------------------------------------------------------------------

    async def run(self, provider: ConfigProvider, load_timeout_s: float = 10.0) -> None:
        """Load, then follow the provider forever. Cancel the task to stop."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._persist_loop())
            tg.create_task(self._secret_loop())
            tg.create_task(self._follow(provider, load_timeout_s))

    async def _follow(self, provider: ConfigProvider, load_timeout_s: float) -> None:
        attempt = 0
        while True:
            try:
                batch = await asyncio.wait_for(provider.load(), load_timeout_s)
                break
            except (ProviderError, OSError, TimeoutError) as exc:
                log.warning("config store not readable (%s)", exc or type(exc).__name__)
                if not self.ready:
                    saved = self._read_last_good()
                    if saved is not None:
                        log.warning("serving last good config at revision %d", saved.revision)
                        self.started_from_last_good = True
                        await self.apply(saved)
                        batch = None
                        break
                await asyncio.sleep(backoff(attempt))
                attempt += 1
        if batch is not None:
            await self.apply(batch)
            log.info("loaded revision %d: %d resources", batch.revision, len(batch.puts))
        async for change in provider.watch(self._current.revision):
            t0 = time.perf_counter()
            snap = await self.apply(change)
            log.info(
                "applied revision %d (%d changes%s) in %.1f ms",
                snap.revision, len(change), ", full" if change.full else "",
                (time.perf_counter() - t0) * 1000,
            )  # fmt: skip

    def _read_last_good(self) -> ChangeBatch | None:
        return self._last_good.read(self._source) if self._last_good is not None else None

    async def _secret_loop(self) -> None:
        if self._secrets is None:
            return
        while True:
            # Retry never-resolved references sooner than the rotation period.
            await asyncio.sleep(min(self._secret_ttl_s, 5.0) if self._retry else self._secret_ttl_s)
            try:
                await self.refresh_secrets()
            except ProviderError as exc:
                log.warning("secret refresh failed: %s", exc)

    async def _persist_loop(self) -> None:
        if self._last_good is None:
            return
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.flush()
            except OSError as exc:
                log.warning("could not save last good config: %s", exc)
            await asyncio.sleep(self._persist_interval_s)

    async def flush(self) -> None:
        """Write the last good config now (also used at shutdown)."""
        if self._last_good is None or not self.ready:
            return
        async with self._persist_lock:  # one writer: the newest snapshot must land last
            snap = self._current
            await asyncio.to_thread(
                self._last_good.write, snap.revision, list(snap.raw_documents()), self._source
            )


def _vault_paths(raw: RawDoc) -> set[str]:
    doc = json.loads(raw) if isinstance(raw, bytes) else raw
    try:
        return {r.path for rs in refs_in(doc).values() for r in rs if isinstance(r, VaultRef)}
    except ReferenceError_:
        return set()


def _has_connection(entries: Any, namespace: str | None, name: str) -> bool:
    return (
        ResourceKey("Connection", namespace, name) in entries
        or ResourceKey("Connection", None, name) in entries
    )


def _messages(exc: DocumentErrors) -> str:
    return "; ".join(f"{e.path}: {e.reason}" for e in exc.errors)


@contextlib.contextmanager
def _gc_paused(pause: bool) -> Iterator[None]:
    """Pause the cyclic GC while building; then move what exists into the permanent generation.

    Snapshot objects are acyclic and freed by reference counting when a snapshot is replaced,
    frozen or not; freezing only spares every later collection from rescanning them.
    """
    was_enabled = gc.isenabled()
    if pause and was_enabled:
        gc.disable()
    try:
        yield
    finally:
        if pause and was_enabled:
            gc.freeze()
            gc.enable()

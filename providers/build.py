"""Building the next snapshot from the previous one and a change batch.

Two pure steps around the one thing that waits (reading secrets, the holder's job):

    plan(batch)                                   validate each document as written, hold it
                                                  to the rules, find its references
    build_snapshot(previous, batch, plan, ...)    resolve references, swap entries in, refuse
                                                  what would leave a webhook without its
                                                  connection, and return the new snapshot

A document that fails is skipped: its previous good version stays in force and the reason is
recorded in the snapshot's `errors` under its key. The dependency indexes (which webhooks use a
connection, which resources read a Vault path) belong to the holder's single writer task and
are kept up to date here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from immutables import Map, MapMutation

from providers import reference_fields, sandbox, shapes
from providers.errors import DocumentErrors, Location, ReferenceError_
from providers.loader import RESOURCE_ADAPTER, validate_document
from providers.provider import ChangeBatch, RawDoc
from providers.references import Ref, VaultRef, parse, refs_in
from providers.resources import AnyResource, ResourceKey, Webhook, connection_keys, key_of
from providers.snapshot import Entry, Snapshot, dangling

log = logging.getLogger(__name__)
_NO_PATHS: frozenset[str] = frozenset()
Entries = MapMutation[ResourceKey, Entry]
Errors = MapMutation[str, str]


class Failed(Exception):
    def __init__(self, message: str, retryable: bool = False) -> None:
        self.message = message
        self.retryable = retryable  # a Vault reference that may resolve later
        super().__init__(message)


class Prepared(NamedTuple):
    key: ResourceKey
    raw: RawDoc
    resource: AnyResource  # as written: references not resolved
    sites: tuple[reference_fields.Site, ...]  # where its references are
    vault_paths: frozenset[str]
    revision: int
    # A document of a shape (providers/shapes.py): the shape, and the shape's own preparation,
    # whose resolved form every document of the shape shares.
    shape: shapes.Shape | None = None
    template: Prepared | None = None

    @property
    def stored(self) -> RawDoc:
        """The document as stored."""
        if self.template is not None and self.shape is not None:
            return self.shape.render(self.key.name, self.key.namespace)
        return self.raw


@dataclass(frozen=True, slots=True)
class Plan:
    prepared: tuple[Prepared, ...]
    failed: tuple[tuple[ResourceKey, RawDoc, Failed], ...]

    @property
    def vault_paths(self) -> set[str]:
        return set().union(*(p.vault_paths for p in self.prepared))


@dataclass
class Indexes:
    """Who depends on what, for the holder's writer task only (requests never read these)."""

    conn_users: dict[str, set[ResourceKey]] = field(default_factory=dict)
    path_users: dict[str, set[ResourceKey]] = field(default_factory=dict)
    # Resources that failed on a reference that may resolve later (Vault), to retry.
    retry: dict[ResourceKey, RawDoc] = field(default_factory=dict)

    def clear(self) -> None:
        self.conn_users.clear()
        self.path_users.clear()
        self.retry.clear()

    def add(self, key: ResourceKey, entry: Entry) -> None:
        if isinstance(entry.resource, Webhook):
            for cname in entry.resource.spec.connections():
                self.conn_users.setdefault(cname, set()).add(key)
        for path in entry.vault_paths:
            self.path_users.setdefault(path, set()).add(key)

    def add_all(self, entries: Iterable[tuple[ResourceKey, Entry]]) -> None:
        """`add` for every entry of a snapshot, webhooks sharing a spec looked at once."""
        names: dict[int, tuple[str, ...]] = {}
        conn_users, path_users = self.conn_users, self.path_users
        for key, entry in entries:
            resource = entry.resource
            if isinstance(resource, Webhook):
                cnames = names.get(id(resource.spec))
                if cnames is None:
                    cnames = names[id(resource.spec)] = resource.spec.connections()
                for cname in cnames:
                    users = conn_users.get(cname)
                    if users is None:
                        users = conn_users[cname] = set()
                    users.add(key)
            for path in entry.vault_paths:
                path_users.setdefault(path, set()).add(key)

    def remove(self, key: ResourceKey, entry: Entry) -> None:
        if isinstance(entry.resource, Webhook):
            for cname in entry.resource.spec.connections():
                self.conn_users.get(cname, set()).discard(key)
        for path in entry.vault_paths:
            self.path_users.get(path, set()).discard(key)


# -- step 1: plan -------------------------------------------------------------------------


def plan(batch: ChangeBatch) -> Plan:
    prepared: list[Prepared] = []
    failed: list[tuple[ResourceKey, RawDoc, Failed]] = []
    shaped = _Shapes(batch.revision)
    for key, raw in batch.puts.items():
        try:
            p = shaped.prepare(key, raw) if isinstance(raw, bytes) else None
            prepared.append(p if p is not None else prepare(key, raw, batch.revision))
        except Failed as exc:
            failed.append((key, raw, exc))
        except Exception as exc:  # a bug must cost one document, never the whole config
            log.exception("unexpected error preparing %s", key)
            failed.append((key, raw, Failed(f"cannot be read ({type(exc).__name__})")))
    return Plan(tuple(prepared), tuple(failed))


class _Shapes:
    """The shapes of one batch's documents, each prepared once (providers/shapes.py)."""

    def __init__(self, revision: int) -> None:
        self._revision = revision
        self._templates: dict[bytes, Prepared | None] = {}
        # (shape, namespace) -> why the tenant rules refuse it (None: they do not)
        self._tenant: dict[tuple[bytes, str], str | None] = {}

    def prepare(self, key: ResourceKey, raw: bytes) -> Prepared | None:
        """`raw` prepared from its shape; None when it has none (or its shape does not
        validate): then the ordinary path prepares it and words its errors."""
        found = shapes.cut(key.name, key.namespace, raw)
        if found is None:
            return None
        template = self._templates.get(found[0], _UNKNOWN)
        if template is _UNKNOWN:
            template = self._templates[found[0]] = self._template(key, shapes.Shape(*found))
        if template is None:
            return None
        metadata = shapes.renamed(template.resource.metadata, key.name, key.namespace)
        if metadata.sandbox and key.namespace is not None:
            self._tenant_rules(template, key.namespace, raw)
        # The bytes are left out: the shape gives them back (`stored`), and kept here for every
        # document until the build ends they would only fragment the heap.
        return Prepared(key, b"", shapes.with_metadata(template.resource, metadata),
                        template.sites, template.vault_paths, self._revision, template.shape,
                        template)

    def _template(self, key: ResourceKey, shape: shapes.Shape) -> Prepared | None:
        global_ = key.namespace is None
        placeholder = ResourceKey(key.kind, None if global_ else shapes.NAMESPACE_PLACEHOLDER,
                                  shapes.NAME_PLACEHOLDER)
        try:
            # The tenant rules read the namespace: checked for each namespace, with its own.
            template = prepare(placeholder, shape.text, self._revision, tenant_rules=False)
        except Failed:
            return None
        if not shapes.fits(template.resource, key.kind, global_):
            return None
        return template._replace(shape=shape)

    def _tenant_rules(self, template: Prepared, namespace: str, raw: bytes) -> None:
        assert template.shape is not None
        at = (template.shape.text, namespace)
        if at not in self._tenant:
            # Nothing in them reads the name: one document answers for its shape there.
            refused = sandbox.tenant_problems(parse_bytes(raw), namespace)
            self._tenant[at] = ("refused by the tenant rules: " + "; ".join(map(str, refused))
                                if refused else None)
        reason = self._tenant[at]
        if reason is not None:
            raise Failed(reason)


_UNKNOWN: Any = object()


def prepare(key: ResourceKey, raw: RawDoc, revision: int, tenant_rules: bool = True) -> Prepared:
    """Validate the document as written and hold it to the rules, before any secret is read.

    References are resolved later, and only in the fields that take them (see
    `providers/reference_fields.py`): never by substituting text across the document.
    """
    resource = _validate_written(key, raw)
    doc: Mapping[str, Any] | None = raw if isinstance(raw, Mapping) else None
    sites: list[reference_fields.Site]
    if isinstance(raw, bytes) and not reference_fields.count_in_text(raw) and b"\\u" not in raw:
        sites = []  # no opener, not even an escaped one: no string holds a reference
    else:
        sites = reference_fields.locate(resource)
    if isinstance(raw, bytes):
        in_sites = sum(reference_fields.count_in_text(site.text) for site in sites)
        # Every reference opener in the text sits in a field that takes references: the common
        # case, decided without parsing. Otherwise look closer.
        if reference_fields.count_in_text(raw) != in_sites:
            doc = parse_bytes(raw)
    if doc is not None:
        misplaced = sandbox.problems(doc, resource)
        if misplaced:
            raise Failed("; ".join(map(str, misplaced)))
    if tenant_rules and resource.metadata.sandbox and key.namespace is not None:
        if doc is None:
            doc = parse_bytes(raw)  # type: ignore[arg-type]  # None only for bytes
        refused = sandbox.tenant_problems(doc, key.namespace)
        if refused:
            raise Failed("refused by the tenant rules: " + "; ".join(map(str, refused)))
    paths: set[str] = set()
    for site in sites:
        try:
            paths.update(r.path for r in parse(site.text).refs if isinstance(r, VaultRef))
        except ReferenceError_ as exc:
            raise Failed(f"{site.path}: {exc}") from None
    return Prepared(key, raw, resource, tuple(sites), frozenset(paths) or _NO_PATHS, revision)


def _validate_written(key: ResourceKey, raw: RawDoc) -> AnyResource:
    location = Location(str(key))
    try:
        if isinstance(raw, bytes):
            try:
                return RESOURCE_ADAPTER.validate_json(raw)
            except ValueError:
                # Slow path only for invalid values: re-parse for a precise message.
                return validate_document(parse_bytes(raw), location)
        return validate_document(raw, location)
    except DocumentErrors as exc:
        raise Failed("; ".join(f"{e.path}: {e.reason}" for e in exc.errors)) from None


def parse_bytes(raw: bytes) -> Mapping[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise Failed(f"value is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise Failed(f"value is a JSON {type(doc).__name__}, not an object")
    return doc


def vault_paths(raw: RawDoc) -> set[str]:
    """The Vault paths a stored document refers to (for retrying it when secrets change)."""
    try:
        doc = json.loads(raw) if isinstance(raw, bytes) else raw
        return {r.path for rs in refs_in(doc).values() for r in rs if isinstance(r, VaultRef)}
    except (ValueError, ReferenceError_):
        return set()


# -- step 2: build ------------------------------------------------------------------------


def build_snapshot(
    previous: Snapshot,
    batch: ChangeBatch,
    planned: Plan,
    resolve: Callable[[Ref], str],
    indexes: Indexes,
) -> Snapshot:
    """The snapshot `batch` makes of `previous`; secrets of `planned` must be readable now."""
    entries = previous.entries.mutate()
    errors: Errors = (Map() if batch.full else previous.errors).mutate()
    if batch.full:
        indexes.clear()
        for key in previous.entries.keys():
            if key not in batch.puts:
                del entries[key]
    for err_source in batch.source_errors:
        errors[f"source:{err_source.split(':', 1)[0]}"] = err_source
    for key, raw, exc in planned.failed:
        _fail(key, raw, exc, entries, errors, indexes)
    memo = _Memo()  # resolved references and what they make, for this build only
    for p in planned.prepared:
        try:
            _build_one(p, entries, errors, batch.full, memo, resolve, indexes)
        except Exception as exc:  # as in `plan`: one document, never the whole config
            log.exception("unexpected error building %s", p.key)
            _fail(p.key, p.stored, Failed(f"cannot be built ({type(exc).__name__})"), entries,
                  errors, indexes)
    for key in batch.deletes:
        indexes.retry.pop(key, None)
        if str(key) in errors:
            del errors[str(key)]
        old = entries.get(key)
        if old is not None:
            del entries[key]
            indexes.remove(key, old)
    _refuse_dangling(batch, previous, entries, errors, indexes)
    snapshot = Snapshot(batch.revision, entries.finish(), errors.finish())
    if batch.full:
        indexes.add_all(snapshot.entries.items())
    return snapshot


@dataclass(slots=True)
class _Memo:
    """What one build has resolved. It holds resolved values: it must never outlive the build."""

    texts: dict[str, str] = field(default_factory=dict)  # reference text -> value
    made: reference_fields.Memo = field(default_factory=reference_fields.Memo)
    # id of a shape's preparation -> its resolved resource, or why it does not resolve
    shapes: dict[int, AnyResource | Failed] = field(default_factory=dict)


def _resolved(p: Prepared, memo: _Memo, resolve: Callable[[Ref], str]) -> AnyResource:
    if not p.sites:
        return p.resource
    template = p.template
    if template is not None:
        # Every document of a shape resolves to the shape's resolved form, renamed.
        done = memo.shapes.get(id(template))
        if done is None:
            try:
                done = _resolved(template, memo, resolve)
            except Failed as exc:
                done = exc
            memo.shapes[id(template)] = done
        if isinstance(done, Failed):
            raise done
        return shapes.with_metadata(done, p.resource.metadata)
    texts = memo.texts

    def render(text: str) -> str:
        value = texts.get(text)
        if value is None:
            value = texts[text] = parse(text).render(resolve)
        return value

    try:
        return reference_fields.resolve(  # type: ignore[no-any-return]
            p.resource, render, p.sites, memo.made)
    except ReferenceError_ as exc:
        raise Failed(str(exc), retryable=bool(p.vault_paths)) from None
    except reference_fields.InvalidAfterResolving as exc:
        raise Failed(f"invalid after resolving references: {exc}") from None


def _build_one(
    p: Prepared, entries: Entries, errors: Errors, full: bool, memo: _Memo,
    resolve: Callable[[Ref], str], indexes: Indexes,
) -> None:
    try:
        resource = _resolved(p, memo, resolve)
        # A shaped document has its key's names by construction (providers/shapes.py).
        if p.template is None:
            actual = key_of(resource)
            if actual != p.key:
                raise Failed(f"document is {actual} but is stored as {p.key}")
    except Failed as exc:
        _fail(p.key, p.stored, exc, entries, errors, indexes)
        return
    old = entries.get(p.key)
    if old is not None and not full:
        indexes.remove(p.key, old)
    entry = Entry(p.raw, resource, p.vault_paths, p.revision, p.shape)
    entries[p.key] = entry
    if not full:
        indexes.add(p.key, entry)
    if indexes.retry:
        indexes.retry.pop(p.key, None)
    if len(errors) and str(p.key) in errors:
        del errors[str(p.key)]


def _fail(key: ResourceKey, raw: RawDoc, exc: Failed, entries: Entries, errors: Errors,
          indexes: Indexes) -> None:
    kept = " (previous version kept)" if key in entries else ""
    errors[str(key)] = exc.message + kept
    log.warning("skipping %s: %s%s", key, exc.message, kept)
    if exc.retryable:
        indexes.retry[key] = raw


def _refuse_dangling(batch: ChangeBatch, previous: Snapshot, entries: Entries, errors: Errors,
                     indexes: Indexes) -> None:
    """Keep deleted connections that webhooks still use; refuse webhooks that lack one."""
    suspects: Iterable[ResourceKey]
    if batch.full:
        suspects = [k for k in batch.puts if k.kind == "Webhook"]
    else:
        names = {k.name for k in batch.deletes if k.kind == "Connection"}
        suspects = {k for n in names for k in indexes.conn_users.get(n, ())}
        suspects |= {k for k in batch.puts if k.kind == "Webhook"}
    for wkey, cname in dangling(entries, suspects):
        entry = entries.get(wkey)
        if entry is None:
            continue  # an earlier connection of this webhook already refused it
        restored = next((ckey for ckey in connection_keys(wkey.namespace, cname)
                         if ckey in batch.deletes and ckey in previous.entries), None)
        if restored is not None:
            old = previous.entries[restored]
            entries[restored] = old
            indexes.add(restored, old)
            errors[str(restored)] = f"deletion refused: still used by {wkey}"
            continue
        message = (f"connection {cname!r} exists neither in namespace {wkey.namespace!r} "
                   "nor globally")
        indexes.remove(wkey, entry)
        old_hook = previous.entries.get(wkey)
        if (old_hook is not None and old_hook is not entry
                and not dangling(entries, [wkey], {wkey: old_hook})):
            entries[wkey] = old_hook
            indexes.add(wkey, old_hook)
            message += " (previous version kept)"
        else:
            del entries[wkey]
        errors[str(wkey)] = message
        log.warning("skipping %s: %s", wkey, message)

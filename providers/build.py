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
from providers.resources import (
    AnyResource,
    ResourceKey,
    Webhook,
    connection_keys,
    find_connection,
    key_of,
)
from providers.snapshot import Entry, Snapshot, dangling, new_entry

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
    shape: shapes.Shape | None = None  # when this is a shape's preparation (`Shaped`)


@dataclass(slots=True)
class Shaped:
    """The documents of a batch prepared from their shapes (providers/shapes.py): the keys of
    each shape's documents, by namespace. No object per document: nothing to allocate, and
    later free, a hundred thousand times; and what depends on the shape and the namespace
    alone (its connections, its indexes) is done once for all of them."""

    # id of the shape's preparation -> (it, namespace -> keys)
    groups: dict[int, tuple[Prepared, dict[str | None, list[ResourceKey]]]] = field(
        default_factory=dict)

    def __len__(self) -> int:
        return sum(len(keys) for _t, by_ns in self.groups.values() for keys in by_ns.values())


@dataclass(frozen=True, slots=True)
class Plan:
    prepared: tuple[Prepared, ...]
    failed: tuple[tuple[ResourceKey, RawDoc, Failed], ...]
    shaped: Shaped = field(default_factory=Shaped)

    @property
    def vault_paths(self) -> set[str]:
        return set().union(*(p.vault_paths for p in self.prepared),
                           *(t.vault_paths for t, _by_ns in self.shaped.groups.values()))


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

    def remove(self, key: ResourceKey, entry: Entry) -> None:
        if isinstance(entry.resource, Webhook):
            for cname in entry.resource.spec.connections():
                self.conn_users.get(cname, set()).discard(key)
        for path in entry.vault_paths:
            self.path_users.get(path, set()).discard(key)


# -- step 1: plan -------------------------------------------------------------------------


def plan(batch: ChangeBatch) -> Plan:
    ahead = getattr(batch.puts, "planned", None)  # a full read planned as it arrived
    if isinstance(ahead, Planner):
        return ahead.finish()
    planner = Planner()
    for key, raw in batch.puts.items():
        planner.add(key, raw)
    return planner.finish()


class Planner:
    """A plan made a document at a time: a full read is planned page by page as it arrives,
    while the store reads the next page (providers/paged_docs.py)."""

    def __init__(self) -> None:
        self._prepared: list[Prepared] = []
        self._failed: list[tuple[ResourceKey, RawDoc, Failed]] = []
        self._shapes = _Shapes()

    def add(self, key: ResourceKey, raw: RawDoc) -> None:
        try:
            if not isinstance(raw, bytes) or not self._shapes.add(key, raw):
                self._prepared.append(prepare(key, raw))
        except Failed as exc:
            self._failed.append((key, raw, exc))
        except Exception as exc:  # a bug must cost one document, never the whole config
            log.exception("unexpected error preparing %s", key)
            self._failed.append((key, raw, Failed(f"cannot be read ({type(exc).__name__})")))

    def finish(self) -> Plan:
        return Plan(tuple(self._prepared), tuple(self._failed), self._shapes.found)


class _Shapes:
    """The shapes of one batch's documents, each prepared once (providers/shapes.py)."""

    def __init__(self) -> None:
        self._templates: dict[bytes, Prepared | None] = {}
        # (shape, namespace) -> why the tenant rules refuse it (None: they do not)
        self._tenant: dict[tuple[int, str], str | None] = {}
        self._cut = shapes.Cutter()
        self.found = Shaped()
        # The last document's kind, namespace, shape (as the bytes around its name) and the
        # keys it went to. A store reads keys in order, so the next document is most often
        # the same kind in the same namespace, and of the same shape: then one comparison
        # finds it, no cut and no lookup by the shape's text.
        self._recent: tuple[str, str | None, bytes, bytes, list[ResourceKey]] | None = None

    def add(self, key: ResourceKey, raw: bytes) -> bool:
        """Prepare `raw` from its shape; False when it has none (or its shape does not
        validate): then the ordinary path prepares it and words its errors. Raises Failed
        when the tenant rules refuse it."""
        recent = self._recent
        if recent is not None and recent[0] == key.kind and recent[1] == key.namespace:
            name = key.name
            # The name must pass the one rule that reads it, as `Cutter` checks.
            if (0 < len(name) <= 63 and not name.strip(shapes.NAME_CHARS) and name[0] != "-"
                    and name[-1] != "-"
                    and raw == b"".join((recent[2], name.encode(), recent[3]))):
                # The tenant rules, if any, passed for this shape and namespace already.
                recent[4].append(key)
                return True
        found = self._cut(key.name, key.namespace, raw)
        if found is None:
            return False
        template = self._templates.get(found[0], _UNKNOWN)
        if template is _UNKNOWN:
            template = self._templates[found[0]] = self._template(key, shapes.Shape(*found))
        if template is None:
            return False
        if template.resource.metadata.sandbox and key.namespace is not None:
            self._tenant_rules(template, key.namespace, raw)
        # Nor the document's bytes, which its shape gives back, nor its resource, which the
        # build makes from the shape's resolved one.
        group = self.found.groups.get(id(template))
        if group is None:
            group = self.found.groups[id(template)] = (template, {})
        keys = group[1].get(key.namespace)
        if keys is None:
            keys = group[1][key.namespace] = []
        keys.append(key)
        assert template.shape is not None
        self._recent = (key.kind, key.namespace, *template.shape.around_name(key.namespace),
                        keys)
        return True

    def _template(self, key: ResourceKey, shape: shapes.Shape) -> Prepared | None:
        if not shapes.sound(shape):
            return None
        global_ = key.namespace is None
        placeholder = ResourceKey(key.kind, None if global_ else shapes.NAMESPACE_PLACEHOLDER,
                                  shapes.NAME_PLACEHOLDER)
        try:
            # The tenant rules read the namespace: checked for each namespace, with its own.
            template = prepare(placeholder, shape.text, tenant_rules=False)
        except Failed:
            return None
        if not shapes.fits(template.resource, key.kind, global_):
            return None
        return template._replace(shape=shape)

    def _tenant_rules(self, template: Prepared, namespace: str, raw: bytes) -> None:
        at = (id(template), namespace)
        if at not in self._tenant:
            # Nothing in them reads the name: one document answers for its shape there.
            refused = sandbox.tenant_problems(parse_bytes(raw), namespace)
            self._tenant[at] = ("refused by the tenant rules: " + "; ".join(map(str, refused))
                                if refused else None)
        reason = self._tenant[at]
        if reason is not None:
            raise Failed(reason)


_UNKNOWN: Any = object()


def prepare(key: ResourceKey, raw: RawDoc, tenant_rules: bool = True) -> Prepared:
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
    return Prepared(key, raw, resource, tuple(sites), frozenset(paths) or _NO_PATHS)


def _validate_written(key: ResourceKey, raw: RawDoc) -> AnyResource:
    try:
        if isinstance(raw, bytes):
            try:
                return RESOURCE_ADAPTER.validate_json(raw)
            except ValueError:
                # Slow path only for invalid values: re-parse for a precise message.
                return validate_document(parse_bytes(raw), Location(str(key)))
        return validate_document(raw, Location(str(key)))
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
            _build_one(p, entries, errors, batch.full, batch.revision, memo, resolve, indexes)
        except Exception as exc:  # as in `plan`: one document, never the whole config
            log.exception("unexpected error building %s", p.key)
            _fail(p.key, p.raw, Failed(f"cannot be built ({type(exc).__name__})"), entries,
                  errors, indexes)
    refused = _build_shaped(planned.shaped, entries, errors, batch.full, batch.revision, memo,
                            resolve, indexes)
    for key in batch.deletes:
        indexes.retry.pop(key, None)
        if str(key) in errors:
            del errors[str(key)]
        old = entries.get(key)
        if old is not None:
            del entries[key]
            indexes.remove(key, old)
    if batch.full:
        # Every entry is a document of the batch, or the version kept of one that failed.
        # Those of shapes are indexed already; index the others before any is refused.
        others = [*(p.key for p in planned.prepared), *(k for k, _r, _e in planned.failed),
                  *refused]
        for key in others:
            entry = entries.get(key)
            if entry is not None:
                indexes.add(key, entry)
        # The webhooks of shapes are checked by shape and namespace: only those lacking a
        # connection are suspects, with every other webhook of the batch.
        suspects: Iterable[ResourceKey] = [
            *_lacking(planned.shaped, refused, entries),
            *(k for k in others if k.kind == "Webhook")]
    else:
        names = {k.name for k in batch.deletes if k.kind == "Connection"}
        suspects = {k for n in names for k in indexes.conn_users.get(n, ())}
        suspects |= {k for k in batch.puts if k.kind == "Webhook"}
    _refuse_dangling(batch, previous, entries, errors, indexes, suspects)
    return Snapshot(batch.revision, entries.finish(), errors.finish())


@dataclass(slots=True)
class _Memo:
    """What one build has resolved. It holds resolved values: it must never outlive the build."""

    texts: dict[str, str] = field(default_factory=dict)  # reference text -> value
    made: reference_fields.Memo = field(default_factory=reference_fields.Memo)


def _resolved(p: Prepared, memo: _Memo, resolve: Callable[[Ref], str]) -> AnyResource:
    if not p.sites:
        return p.resource
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
    p: Prepared, entries: Entries, errors: Errors, full: bool, revision: int, memo: _Memo,
    resolve: Callable[[Ref], str], indexes: Indexes,
) -> None:
    try:
        resource = _resolved(p, memo, resolve)
        actual = key_of(resource)
        if actual != p.key:
            raise Failed(f"document is {actual} but is stored as {p.key}")
    except Failed as exc:
        _fail(p.key, p.raw, exc, entries, errors, indexes)
        return
    _put(p.key, Entry(p.raw, resource, p.vault_paths, revision), entries, errors, full,
         indexes)


def _put(key: ResourceKey, entry: Entry, entries: Entries, errors: Errors, full: bool,
         indexes: Indexes) -> None:
    if not full:
        old = entries.get(key)
        if old is not None:
            indexes.remove(key, old)
        indexes.add(key, entry)
    entries[key] = entry
    if indexes.retry:
        indexes.retry.pop(key, None)
    if len(errors) and str(key) in errors:
        del errors[str(key)]


def _build_shaped(
    shaped: Shaped, entries: Entries, errors: Errors, full: bool, revision: int, memo: _Memo,
    resolve: Callable[[Ref], str], indexes: Indexes,
) -> list[ResourceKey]:
    """Every document of a shape is the shape's resolved resource with its own names:
    resolved (or refused) once per shape, its connections looked up and its indexes updated
    once per shape and namespace. Returns the keys it refused (whose previous version, if
    any, stays)."""
    refused: list[ResourceKey] = []
    retry, conn_users, path_users = indexes.retry, indexes.conn_users, indexes.path_users
    for template, by_ns in shaped.groups.values():
        shape = template.shape
        assert shape is not None
        try:
            base = _resolved(template, memo, resolve)
        except Exception as exc:
            if isinstance(exc, Failed):
                failed = exc
            else:  # as in `plan`: the shape's documents, not the whole config
                log.exception("unexpected error building %s", template.key)
                failed = Failed(f"cannot be built ({type(exc).__name__})")
            for key in (k for keys in by_ns.values() for k in keys):
                _fail(key, shape.render(key.name, key.namespace), failed, entries, errors,
                      indexes)
                refused.append(key)
            continue
        cnames = base.spec.connections() if isinstance(base, Webhook) else ()
        paths = template.vault_paths
        for ns, keys in by_ns.items():
            if not full:
                for key in keys:
                    old = entries.get(key)
                    if old is not None:
                        indexes.remove(key, old)
            for key in keys:
                entries[key] = new_entry(shapes.renamed(base, key.name, ns), paths, revision,
                                         shape)
            for cname in cnames:
                conn_users.setdefault(cname, set()).update(keys)
            for path in paths:
                path_users.setdefault(path, set()).update(keys)
            if retry:
                for key in keys:
                    retry.pop(key, None)
            if len(errors):
                for key in keys:
                    if str(key) in errors:
                        del errors[str(key)]
    return refused


def _lacking(shaped: Shaped, refused: Iterable[ResourceKey],
             entries: Entries) -> list[ResourceKey]:
    """The webhooks of shapes whose namespace lacks one of the shape's connections."""
    out: list[ResourceKey] = []
    skip = set(refused)
    for template, by_ns in shaped.groups.values():
        if not isinstance(template.resource, Webhook):
            continue
        cnames = template.resource.spec.connections()
        for ns, keys in by_ns.items():
            if any(find_connection(entries, ns, cname) is None for cname in cnames):
                out.extend(k for k in keys if k not in skip)
    return out


def _fail(key: ResourceKey, raw: RawDoc, exc: Failed, entries: Entries, errors: Errors,
          indexes: Indexes) -> None:
    kept = " (previous version kept)" if key in entries else ""
    errors[str(key)] = exc.message + kept
    log.warning("skipping %s: %s%s", key, exc.message, kept)
    if exc.retryable:
        indexes.retry[key] = raw


def _refuse_dangling(batch: ChangeBatch, previous: Snapshot, entries: Entries, errors: Errors,
                     indexes: Indexes, suspects: Iterable[ResourceKey]) -> None:
    """Keep deleted connections that webhooks still use; refuse webhooks that lack one."""
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

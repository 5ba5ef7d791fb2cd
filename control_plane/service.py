"""The control plane's operations, independent of HTTP: apply, diff, delete, rollback, history,
fleet. The only writer of the store.

What a route's path and query allow (`authz.py`) is checked before these are called; here is
what needs the body or the stored data.

Every write, a rollback included, goes through `_admit`: the documents are validated (422),
each must be writable by the principal (403), and a namespace token's documents are stamped as
sandboxed and held to the tenant rules (403, naming document, field and reason). Errors are
those of `control_plane.errors`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from control_plane.changes import cascade, comparable, plan, prune_targets, state_at
from control_plane.errors import Conflict, Forbidden, Invalid, NotFound
from control_plane.principal import Principal
from control_plane.store import Change, Doc, Draft, Store, Stored, scope
from control_plane.visibility import gateway_view, history_view
from providers.errors import DocumentError, DocumentErrors, Location
from providers.loader import plaintext_secrets, validate_documents
from providers.resources import AnyResource, ResourceKey, Webhook, key_of
from providers.sandbox import stamp, tenant_problems

log = logging.getLogger(__name__)
audit = logging.getLogger("control_plane.audit")
RACE_RETRIES = 5
Deletions = Callable[[Mapping[ResourceKey, Stored]], list[ResourceKey]]


@dataclass(frozen=True, slots=True)
class Outcome:
    revision: int
    changes: tuple[Change, ...]
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"revision": self.revision, "dry_run": self.dry_run,
                "changes": [c.summary() for c in self.changes]}


@dataclass(frozen=True, slots=True)
class _Doc:
    key: ResourceKey
    doc: Doc
    resource: AnyResource
    location: Location


class ControlPlane:
    def __init__(self, store: Store, allow_plaintext_secrets: bool = False) -> None:
        self.store = store
        self.allow_plaintext_secrets = allow_plaintext_secrets

    # -- apply ------------------------------------------------------------------------------

    def _validate(self, docs: Sequence[Mapping[str, Any]],
                  sources: Sequence[str] | None) -> list[_Doc]:
        locations = [
            Location(sources[i]) if sources and i < len(sources) else Location("request", i)
            for i in range(len(docs))
        ]
        try:
            valid = validate_documents(zip(locations, docs, strict=True))
        except DocumentErrors as exc:
            raise Invalid(exc.errors) from None
        if not self.allow_plaintext_secrets:
            errors = plaintext_secrets(
                valid, " (or start the control plane with --allow-plaintext-secrets)")
            if errors:
                raise Invalid(errors)
        return [_Doc(key_of(r), dict(doc), r, loc)
                for (loc, r), doc in zip(valid, docs, strict=True)]

    @staticmethod
    def _check_final(final: Mapping[ResourceKey, Doc], touched: Mapping[ResourceKey, _Doc],
                     deleted: Sequence[ResourceKey]) -> None:
        """Problems of the state the apply would leave: dangling connections, no namespace."""
        errors: list[DocumentError] = []
        namespaces = {k.name for k in final if k.kind == "Namespace"}
        for key, d in touched.items():
            if key.namespace is not None and key.namespace not in namespaces:
                errors.append(DocumentError(d.location, "metadata.namespace",
                              f"namespace {key.namespace!r} does not exist; add a Namespace "
                              "document to this apply or create it first"))  # fmt: skip
            if isinstance(d.resource, Webhook):
                for i, step in enumerate(d.resource.spec.chain.steps):
                    cname = getattr(step, "connection", None)
                    if cname and not _connection_in(final, key.namespace, cname):
                        errors.append(DocumentError(
                            d.location, f"spec.chain.steps[{i}].connection",
                            f"connection {cname!r} exists neither in namespace "
                            f"{key.namespace!r} nor globally"))  # fmt: skip
        gone = {k for k in deleted if k.kind == "Connection"}
        if gone:
            for key, doc in final.items():
                if key.kind != "Webhook":
                    continue
                for step in doc.get("spec", {}).get("chain", {}).get("steps", []):
                    cname = step.get("connection")
                    if cname and not _connection_in(final, key.namespace, cname):
                        errors.append(DocumentError(
                            str(key), "spec.chain.steps",
                            f"still uses connection {cname!r}, which this change deletes"))
        if errors:
            raise Invalid(errors)

    def _admit(self, docs: Sequence[Mapping[str, Any]], principal: Principal,
               sources: Sequence[str] | None, *, keep_stamp: bool = False) -> list[_Doc]:
        """The documents as `principal` writes them, or why it may not.

        `keep_stamp`: an admin restoring history keeps each document's stamp as it was, so a
        tenant's old document stays sandboxed.
        """
        validated = self._validate(docs, sources)
        refused = [DocumentError(d.location, "kind" if d.key.kind == "Namespace"
                                 else "metadata.namespace",
                                 f"{principal.name} may not write {d.key}")
                   for d in validated if not principal.can_write(d.key)]
        if refused:
            raise Forbidden("; ".join(str(e) for e in refused), refused)
        admitted = [d if keep_stamp and principal.admin
                    else replace(d, doc=stamp(d.doc, not principal.admin)) for d in validated]
        if principal.namespace is not None:
            problems = [DocumentError(d.location, p.path, p.reason) for d in admitted
                        for p in tenant_problems(d.doc, principal.namespace)]
            if problems:
                raise Forbidden("; ".join(str(e) for e in problems), problems)
        return admitted

    async def apply(
        self,
        docs: Sequence[Mapping[str, Any]],
        principal: Principal,
        *,
        sources: Sequence[str] | None = None,
        dry_run: bool = False,
        prune: bool = False,
        expected_revision: int | None = None,
        message: str = "",
    ) -> Outcome:
        admitted = self._admit(docs, principal, sources)
        wanted = {d.key: d.doc for d in admitted}

        def deletions(current: Mapping[ResourceKey, Stored]) -> list[ResourceKey]:
            targets = prune_targets(current, wanted) if prune else []
            _check_deletes(principal, targets)
            return targets

        return await self._change(principal, wanted, deletions, admitted, dry_run,
                                  expected_revision, message or "apply")

    async def delete(self, key: ResourceKey, principal: Principal, message: str = "",
                     dry_run: bool = False) -> Outcome:
        def deletions(current: Mapping[ResourceKey, Stored]) -> list[ResourceKey]:
            if key not in current:
                raise NotFound(f"{key} does not exist")
            return cascade(current, key.name) if key.kind == "Namespace" else [key]

        return await self._change(principal, {}, deletions, [], dry_run, None,
                                  message or f"delete {key}")

    async def _change(
        self,
        principal: Principal,
        wanted: Mapping[ResourceKey, Doc],
        deletions: Deletions,
        admitted: Sequence[_Doc],
        dry_run: bool,
        expected_revision: int | None,
        message: str,
    ) -> Outcome:
        touched = {d.key: d for d in admitted}
        for _ in range(RACE_RETRIES):
            revision, current = await self.store.read()
            if expected_revision is not None and revision != expected_revision:
                raise Conflict(f"expected revision {expected_revision}, the config is at "
                               f"{revision}", revision)
            deletes = deletions(current)
            changes, puts, removed = plan(current, wanted, deletes)
            final = {k: s.doc for k, s in current.items() if k not in removed}
            final.update(puts)
            self._check_final(final, touched, removed)
            effective = tuple(c for c in changes if c.op != "unchanged")
            if dry_run or not effective:
                return Outcome(revision, tuple(changes), dry_run)
            draft = Draft(puts, removed, effective, principal.name, message)
            try:
                new = await self.store.commit(draft, revision)
            except Conflict:
                if expected_revision is not None:
                    raise
                continue  # someone applied meanwhile: recompute on the new state
            audit.info("revision %d by %s: %s (%s)", new, principal.name, message,
                       ", ".join(f"{c.op} {c.key}" for c in effective))
            return Outcome(new, tuple(changes))
        raise Conflict("the config kept changing; try again", revision)

    # -- reading ----------------------------------------------------------------------------

    async def resources(self, principal: Principal, kind: str | None = None,
                        namespace: str | None = None) -> tuple[int, list[Doc]]:
        revision, current = await self.store.read()
        items = [
            s.doc for k, s in sorted(current.items(), key=lambda kv: str(kv[0]))
            if (kind is None or k.kind == kind) and principal.can_read(k)
            and (namespace is None or scope(k) == namespace)
        ]  # fmt: skip
        return revision, items

    async def resource(self, key: ResourceKey) -> Doc:
        _, current = await self.store.read()
        stored = current.get(key)
        if stored is None:
            raise NotFound(f"{key} does not exist")
        return stored.doc

    async def diff(self, docs: Sequence[Mapping[str, Any]], principal: Principal,
                   sources: Sequence[str] | None = None, prune: bool = False) -> Outcome:
        return await self.apply(docs, principal, sources=sources, dry_run=True, prune=prune)

    async def history(self, principal: Principal, namespace: str | None = None,
                      limit: int = 50) -> list[dict[str, Any]]:
        namespace = principal.namespace or namespace
        records = await self.store.history(limit if namespace is None else 10_000)
        out = []
        for r in records:
            if namespace is None or namespace in r.namespaces():
                out.append(history_view(r, principal, namespace, full=False))
                if len(out) >= limit:
                    break
        return out

    async def history_record(self, revision: int, principal: Principal) -> dict[str, Any]:
        record = await self.store.history_get(revision)
        if record is None:
            raise NotFound(f"no history for revision {revision}")
        if principal.namespace is not None and principal.namespace not in record.namespaces():
            raise Forbidden(f"revision {revision} did not change namespace "
                            f"{principal.namespace!r}")
        return history_view(record, principal)

    async def rollback(self, namespace: str, principal: Principal,
                       to_revision: int | None = None, message: str = "") -> Outcome:
        """Restore `namespace` as it was right after `to_revision`: an apply by `principal`."""
        if not principal.can_manage(namespace):
            raise Forbidden(f"{principal.name} may not roll back namespace {namespace!r}")
        records = await self.store.history(100_000)
        if to_revision is None:
            latest = next((r for r in records if namespace in r.namespaces()), None)
            if latest is None:
                raise NotFound(f"namespace {namespace!r} has no recorded change to undo")
            to_revision = latest.revision - 1
        _, current = await self.store.read()
        target = state_at(current, records, to_revision, namespace)

        def mine(key: ResourceKey) -> bool:
            # A Namespace resource is the admin's even to a tenant undoing its own changes.
            return scope(key) == namespace and (principal.admin or key.kind != "Namespace")

        restore = sorted(
            (k for k, doc in target.items() if mine(k)
             and (k not in current or comparable(current[k].doc) != comparable(doc))),
            key=str,
        )  # fmt: skip
        admitted = self._admit([target[k] for k in restore], principal,
                               [f"revision {to_revision}: {k}" for k in restore],
                               keep_stamp=True)
        wanted = {d.key: d.doc for d in admitted}

        def deletions(now: Mapping[ResourceKey, Stored]) -> list[ResourceKey]:
            gone = sorted((k for k in now if mine(k) and k not in target), key=str)
            _check_deletes(principal, gone)
            return gone

        return await self._change(principal, wanted, deletions, admitted, False, None,
                                  message or f"rollback {namespace} to revision {to_revision}")

    # -- fleet ------------------------------------------------------------------------------

    async def gateways(self, principal: Principal) -> list[dict[str, Any]]:
        records = sorted(await self.store.gateways(), key=lambda g: str(g.get("id")))
        return [gateway_view(g, principal) for g in records]

    async def rollout(self, principal: Principal, revision: int | None = None) -> dict[str, Any]:
        if revision is None:
            revision, _ = await self.store.read()
        gateways = [g for g in await self.gateways(principal) if g.get("live")]
        rows = [{"id": g.get("id"), "revision": g.get("revision"),
                 "applied": int(g.get("revision") or 0) >= revision} for g in gateways]
        applied = sum(1 for r in rows if r["applied"])
        return {"revision": revision, "live": len(rows), "applied": applied,
                "complete": bool(rows) and applied == len(rows), "gateways": rows,
                "time": time.time()}


def _check_deletes(principal: Principal, keys: Sequence[ResourceKey]) -> None:
    refused = [str(k) for k in keys if not principal.can_write(k)]
    if refused:
        raise Forbidden(f"{principal.name} may not delete {', '.join(refused)}")


def _connection_in(final: Mapping[ResourceKey, Doc], namespace: str | None, name: str) -> bool:
    return (ResourceKey("Connection", namespace, name) in final
            or ResourceKey("Connection", None, name) in final)

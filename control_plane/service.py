"""The control plane's operations, independent of HTTP: apply, diff, delete, rollback, history,
fleet. The only writer of the store.

Errors carry what the API answers: `Invalid` (422, every problem named), `Forbidden` (403),
`NotFound` (404), and the store's `Conflict` (409).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from control_plane.changes import cascade, comparable, plan, prune_targets, state_at
from control_plane.store import Change, Conflict, Doc, Draft, Store, Stored
from control_plane.tokens import Principal
from providers.errors import DocumentError, DocumentErrors, Location
from providers.loader import plaintext_secrets, validate_documents
from providers.references import EnvRef, refs_in
from providers.resources import GLOBAL, AnyResource, ResourceKey, Webhook, key_of

log = logging.getLogger(__name__)
audit = logging.getLogger("control_plane.audit")
RACE_RETRIES = 5


class Invalid(Exception):
    def __init__(self, errors: Sequence[DocumentError]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(str(e) for e in errors))


class Forbidden(Exception):
    pass


class NotFound(Exception):
    pass


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
        validated = self._validate(docs, sources)
        for d in validated:
            if not principal.can_write(d.key):
                raise Forbidden(f"{principal.name} may not write {d.key}")
        if not principal.admin:
            problems = [p for d in validated for p in tenant_limits(d, str(principal.namespace))]
            if problems:
                raise Forbidden("; ".join(problems))
        wanted = {d.key: d.doc for d in validated}
        touched = {d.key: d for d in validated}

        def deletions(current: Mapping[ResourceKey, Stored]) -> list[ResourceKey]:
            targets = prune_targets(current, wanted) if prune else []
            for key in targets:
                if not principal.can_write(key):
                    raise Forbidden(f"{principal.name} may not prune {key}")
            return targets

        return await self._change(principal, wanted, deletions, touched, dry_run,
                                  expected_revision, message or "apply")

    async def delete(self, key: ResourceKey, principal: Principal, message: str = "",
                     dry_run: bool = False) -> Outcome:
        if not principal.can_write(key):
            raise Forbidden(f"{principal.name} may not delete {key}")

        def deletions(current: Mapping[ResourceKey, Stored]) -> list[ResourceKey]:
            if key not in current:
                raise NotFound(f"{key} does not exist")
            return cascade(current, key.name) if key.kind == "Namespace" else [key]

        return await self._change(principal, {}, deletions, {}, dry_run, None,
                                  message or f"delete {key}")

    async def _change(
        self,
        principal: Principal,
        wanted: Mapping[ResourceKey, Doc],
        deletions: Any,
        touched: Mapping[ResourceKey, _Doc],
        dry_run: bool,
        expected_revision: int | None,
        message: str,
    ) -> Outcome:
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
            and (namespace is None or k.namespace == namespace
                 or (k.kind == "Namespace" and k.name == namespace))
        ]  # fmt: skip
        return revision, items

    async def resource(self, key: ResourceKey, principal: Principal) -> Doc:
        if not principal.can_read(key):
            raise Forbidden(f"{principal.name} may not read {key}")
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
        if not principal.admin:
            namespace = principal.namespace
        records = await self.store.history(limit if namespace is None else 10_000)
        out = []
        for r in records:
            if namespace is not None and namespace not in r.namespaces():
                continue
            changes = [c for c in r.changes
                       if namespace is None or (c.key.namespace or GLOBAL) == namespace
                       or (c.key.kind == "Namespace" and c.key.name == namespace)]
            out.append({**r.as_dict(full=False), "changes": [c.summary() for c in changes]})
            if len(out) >= limit:
                break
        return out

    async def history_record(self, revision: int, principal: Principal) -> dict[str, Any]:
        record = await self.store.history_get(revision)
        if record is None:
            raise NotFound(f"no history for revision {revision}")
        if not principal.admin and not all(principal.can_read(c.key) for c in record.changes):
            raise Forbidden(f"revision {revision} touches other namespaces")
        return record.as_dict()

    async def rollback(self, namespace: str, principal: Principal,
                       to_revision: int | None = None, message: str = "") -> Outcome:
        if not principal.admin and principal.namespace != namespace:
            raise Forbidden(f"{principal.name} may not roll back namespace {namespace}")
        records = await self.store.history(100_000)
        if to_revision is None:
            latest = next((r for r in records if namespace in r.namespaces()
                           or any(c.key.kind == "Namespace" and c.key.name == namespace
                                  for c in r.changes)), None)
            if latest is None:
                raise NotFound(f"namespace {namespace!r} has no recorded change to undo")
            to_revision = latest.revision - 1
        _, current = await self.store.read()
        target = state_at(current, records, to_revision, namespace)
        mine = [k for k in current if k.namespace == namespace
                or (k.kind == "Namespace" and k.name == namespace)]
        restore = {k: comparable(d) for k, d in target.items()}
        for key, doc in restore.items():
            now = current.get(key)
            if (now is None or comparable(now.doc) != doc) and not principal.can_write(key):
                raise Forbidden(f"{principal.name} may not restore {key}")

        def deletions(now: Mapping[ResourceKey, Stored]) -> list[ResourceKey]:
            return [k for k in mine if k not in restore and k in now]

        return await self._change(principal, restore, deletions, {}, False, None,
                                  message or f"rollback {namespace} to revision {to_revision}")

    # -- fleet ------------------------------------------------------------------------------

    async def gateways(self) -> list[dict[str, Any]]:
        return sorted(await self.store.gateways(), key=lambda g: str(g.get("id")))

    async def rollout(self, revision: int | None = None) -> dict[str, Any]:
        if revision is None:
            revision, _ = await self.store.read()
        gateways = [g for g in await self.gateways() if g.get("live")]
        rows = [{"id": g.get("id"), "revision": g.get("revision"),
                 "applied": int(g.get("revision") or 0) >= revision} for g in gateways]
        applied = sum(1 for r in rows if r["applied"])
        return {"revision": revision, "live": len(rows), "applied": applied,
                "complete": bool(rows) and applied == len(rows), "gateways": rows,
                "time": time.time()}


def tenant_limits(d: _Doc, namespace: str) -> list[str]:
    """What a namespace token may not configure, even in its own namespace.

    Gateways resolve references with their own environment and Vault token, and reach out
    from inside the network: a tenant must not be able to read another tenant's secrets, the
    gateway's own settings, the local disk, or private addresses through its config.
    """
    where = f"{d.location}"
    problems: list[str] = []
    for path, refs in refs_in(d.doc).items():
        for ref in refs:
            if isinstance(ref, EnvRef):
                problems.append(f"{where}: {path}: environment references are for the admin")
            elif not ref.path.startswith(f"{namespace}/"):
                problems.append(f"{where}: {path}: vault paths of this namespace start with "
                                f"{namespace}/")
    spec = d.doc.get("spec", {})
    if d.key.kind == "Connection":
        if spec.get("allow_private"):
            problems.append(f"{where}: spec.allow_private: only the admin may allow private "
                            "addresses")
        if spec.get("type") == "redis":
            problems.append(f"{where}: spec.type: redis connections are for the admin (use a "
                            "global one)")
    if isinstance(d.resource, Webhook):
        for i, step in enumerate(d.resource.spec.chain.steps):
            if step.module == "file":
                problems.append(f"{where}: spec.chain.steps[{i}]: the file module is for the "
                                "admin")
    return problems


def _connection_in(final: Mapping[ResourceKey, Doc], namespace: str | None, name: str) -> bool:
    return (ResourceKey("Connection", namespace, name) in final
            or ResourceKey("Connection", None, name) in final)

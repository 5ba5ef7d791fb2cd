"""The control plane's operations, independent of HTTP: apply, diff, delete, rollback, history,
fleet, canaries. The only writer of the store.

What a route's path and query allow (`authz.py`) is checked before these are called; here is
what needs the body or the stored data.

Every write, a rollback included, goes through `_admit`: the documents are validated (422),
each must be writable by the principal (403), and a namespace token's documents are stamped as
sandboxed and held to the tenant rules (403, naming document, field and reason). Errors are
those of `control_plane.errors`.

Canaries: an apply with a `CanaryPlan` (admin only) writes its resources and, in the same
commit, the canary record. While it runs every other write answers 409 naming it (dry runs
excepted); `promote` ends it with a commit that changes no resource, `abort` with the revert of
the canary revision's changes. `decide_canary` does either by itself when `canary.assess` says
so. Each is a compare-and-swap on the config revision, so of several control planes deciding
at once one wins and the others find no canary left.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from control_plane.canary import AUTOMATIC, MIN_REQUESTS, Decision, assess, baseline
from control_plane.changes import cascade, comparable, plan, prune_targets, state_at
from control_plane.errors import (
    BadInput,
    CanaryRunning,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    StoreFailed,
)
from control_plane.principal import Principal
from control_plane.store import Change, Doc, Draft, HistoryRecord, Store, Stored, scope
from control_plane.visibility import gateway_view, history_view
from providers.errors import DocumentError, DocumentErrors, Location
from providers.loader import plaintext_secrets, validate_documents
from providers.resources import AnyResource, ResourceKey, Webhook, find_connection, key_of
from providers.rollout import Canary
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
class CanaryPlan:
    """What an apply asks of the canary it starts."""

    selector: Mapping[str, str]
    promote_after_s: float | None = None
    max_error_rate: float | None = None


@dataclass(frozen=True, slots=True)
class _Doc:
    key: ResourceKey
    doc: Doc
    resource: AnyResource
    location: Location


class ControlPlane:
    def __init__(self, store: Store, allow_plaintext_secrets: bool = False,
                 canary_min_requests: int = MIN_REQUESTS) -> None:
        self.store = store
        self.allow_plaintext_secrets = allow_plaintext_secrets
        self.canary_min_requests = canary_min_requests

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
                valid, " (or start the control plane with --allow-plaintext-secrets)", docs)
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
        canary: CanaryPlan | None = None,
    ) -> Outcome:
        if canary is not None and not principal.admin:
            # A canary holds every namespace's writes back until it ends: the fleet's business.
            raise Forbidden(f"{principal.name} may not start a canary: only the admin token may")
        admitted = self._admit(docs, principal, sources)
        wanted = {d.key: d.doc for d in admitted}

        def deletions(current: Mapping[ResourceKey, Stored]) -> list[ResourceKey]:
            targets = prune_targets(current, wanted) if prune else []
            _check_deletes(principal, targets)
            return targets

        return await self._change(principal, wanted, deletions, admitted, dry_run,
                                  expected_revision, message or _default_message(canary),
                                  canary)

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
        canary: CanaryPlan | None = None,
    ) -> Outcome:
        touched = {d.key: d for d in admitted}
        # Taken before the commit: the canary's error rate counts what happens from now on.
        zero = baseline(await self.store.gateways()) if canary and not dry_run else {}
        for _ in range(RACE_RETRIES):
            revision, current = await self.store.read()
            if not dry_run:
                # Read after the revision: a canary committed in between makes our commit's
                # compare-and-swap fail, and the retry finds it here.
                running = await self.store.canary()
                if running is not None:
                    raise CanaryRunning(running, revision)
            if expected_revision is not None and revision != expected_revision:
                raise Conflict(f"expected revision {expected_revision}, the config is at "
                               f"{revision}", revision)
            deletes = deletions(current)
            changes, puts, removed = plan(current, wanted, deletes)
            final = {k: s.doc for k, s in current.items() if k not in removed}
            final.update(puts)
            self._check_final(final, touched, removed)
            effective = tuple(c for c in changes if c.op != "unchanged")
            if canary is not None and not effective and not dry_run:
                raise BadInput([(("body", "resources"), "a canary needs a change, and these "
                                 f"documents change nothing at revision {revision}")])
            if dry_run or not effective:
                return Outcome(revision, tuple(changes), dry_run)
            draft = Draft(puts, removed, effective, principal.name, message)
            if canary is not None:
                record = Canary(
                    # The store sets the revision: on etcd it is only known once committed.
                    revision=0, base=revision, selector=dict(canary.selector),
                    started=time.time(), promote_after_s=canary.promote_after_s,
                    max_error_rate=canary.max_error_rate, by=principal.name, message=message,
                    baseline=zero)  # fmt: skip
                draft = replace(draft, canary=record, rollout={
                    "action": "canary", "canary": record.to_json(),
                    "reason": f"canary for {record.selector_text()} started by {principal.name}",
                })  # fmt: skip
            try:
                new = await self.store.commit(draft, revision)
            except Conflict:
                if expected_revision is not None:
                    raise
                continue  # someone applied meanwhile: recompute on the new state
            audit.info("revision %d by %s: %s (%s)", new, principal.name, message,
                       _summary(effective))
            return Outcome(new, tuple(changes))
        raise Conflict("the config kept changing; try again", revision)

    # -- canaries ---------------------------------------------------------------------------

    async def promote(self, principal: Principal, message: str = "") -> Outcome:
        """Every gateway serves the canary revision: a commit that ends the canary."""
        return await self._end_canary("promote", principal.name, message,
                                      message or f"promoted by {principal.name}")

    async def abort(self, principal: Principal, message: str = "") -> Outcome:
        """Canary gateways return to the promoted revision: the revert of the canary's changes."""
        return await self._end_canary("abort", principal.name, message,
                                      message or f"aborted by {principal.name}")

    async def decide_canary(self, now: float | None = None) -> Decision | None:
        """Promote or abort the running canary if `canary.assess` says so; what was decided."""
        canary = await self.store.canary()
        if canary is None:
            return None
        judged = assess(canary, await self.store.gateways(),
                        time.time() if now is None else now, self.canary_min_requests)
        decision = judged.decision
        if decision is None:
            return None
        try:
            await self._end_canary(decision.action, AUTOMATIC, "", decision.reason,
                                   expect=canary.revision)
        except NotFound:
            return None  # another control plane decided first
        log.log(logging.WARNING if decision.action == "abort" else logging.INFO,
                "canary revision %d %s automatically: %s", canary.revision,
                "aborted" if decision.action == "abort" else "promoted", decision.reason)
        return decision

    async def _end_canary(self, action: str, author: str, message: str, reason: str,
                          expect: int | None = None) -> Outcome:
        revision = 0
        for _ in range(RACE_RETRIES):
            revision, current = await self.store.read()
            canary = await self.store.canary()
            if canary is None or (expect is not None and canary.revision != expect):
                raise NotFound("no canary is running")
            changes: tuple[Change, ...] = ()
            puts: Mapping[ResourceKey, Doc] = {}
            removed: list[ResourceKey] = []
            if action == "abort":
                changes, puts, removed = await self._revert(canary, current)
            draft = Draft(
                puts, removed, changes, author,
                message or f"{action} canary revision {canary.revision}: {reason}",
                clear_canary=True,
                rollout={"action": action, "canary": canary.to_json(), "reason": reason},
            )  # fmt: skip
            try:
                new = await self.store.commit(draft, revision)
            except Conflict:
                continue  # an etcdctl write or another control plane: look again
            audit.info("revision %d by %s: %s canary revision %d (%s)", new, author, action,
                       canary.revision, reason)
            return Outcome(new, changes)
        raise Conflict("the config kept changing; try again", revision)

    async def _revert(self, canary: Canary, current: Mapping[ResourceKey, Stored]
                      ) -> tuple[tuple[Change, ...], dict[ResourceKey, Doc], list[ResourceKey]]:
        """Every resource the canary revision changed, back to its value before it."""
        record = await self.store.history_get(canary.revision)
        if record is None:
            raise StoreFailed(f"the history record of canary revision {canary.revision} is "
                              "missing: cannot tell what to revert; promote it, or apply the "
                              "previous files and delete the canary record by hand")
        wanted = {c.key: c.before for c in record.changes
                  if c.op != "unchanged" and c.before is not None}
        created = [c.key for c in record.changes if c.op == "create"]
        # No validation: the revert restores what was in force; an abort must always go.
        changes, puts, removed = plan(current, wanted, created)
        return tuple(c for c in changes if c.op != "unchanged"), puts, removed

    async def canary_status(self, principal: Principal) -> dict[str, Any] | None:
        """The running canary, its gateways and where it stands; None when none runs."""
        canary = await self.store.canary()
        if canary is None:
            return None
        view = assess(canary, await self.store.gateways(), time.time(),
                      self.canary_min_requests).as_dict()
        if principal.admin:
            return view
        # A namespace token: no message, no traffic figures of the fleet, and refusals of its
        # own resources only.
        for key in ("message", "baseline", "requests", "errors", "error_rate", "decision"):
            view.pop(key, None)
        view["gateways"] = [
            {"id": g["id"], "revision": g["revision"], "health": g["health"],
             "serving": g["serving"],
             "refused": gateway_view({"refused": g["refused"]}, principal).get("refused", [])}
            for g in view["gateways"]
        ]  # fmt: skip
        return view

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
                out.append(_rollout_cut(history_view(r, principal, namespace, full=False), r,
                                        principal))
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
        return _rollout_cut(history_view(record, principal), record, principal)

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
        # Gateways of an older version report no labels and no refusals: say so explicitly.
        return [gateway_view({"labels": {}, "refused": [], **g}, principal) for g in records]

    async def rollout(self, principal: Principal, revision: int | None = None) -> dict[str, Any]:
        """How far `revision` (default: the current one) has rolled out to the live gateways.

        A gateway *serves* it when its snapshot is at `revision` or later and it refuses none of
        its resources: one that skipped a resource (a NACK) and kept an older version in force
        is not counted as applied, and each refusal is listed (gateway, resource, reason). A
        namespace token counts refusals of its own resources only.
        """
        if revision is None:
            revision, _ = await self.store.read()
        rows: list[dict[str, Any]] = []
        refusals: list[dict[str, Any]] = []
        for g in await self.gateways(principal):
            if not g.get("live"):
                continue
            refused = [r for r in g.get("refused") or [] if isinstance(r, Mapping)]
            # Only an admin's view has the count; a record cut short is not a clean one.
            hidden = int(g.get("refused_total") or 0) > len(refused)
            at = int(g.get("revision") or 0)
            rows.append({"id": g.get("id"), "revision": g.get("revision"),
                         "applied": at >= revision and not refused and not hidden,
                         "health": g.get("health"), "labels": g.get("labels") or {},
                         "refused": refused})
            refusals += [{"gateway": g.get("id"), "resource": r.get("resource"),
                          "reason": r.get("reason")} for r in refused]
        applied = sum(1 for r in rows if r["applied"])
        return {"revision": revision, "live": len(rows), "applied": applied,
                "complete": bool(rows) and applied == len(rows), "gateways": rows,
                "refusals": refusals, "time": time.time()}


def _default_message(canary: CanaryPlan | None) -> str:
    if canary is None:
        return "apply"
    return "canary for " + ",".join(f"{k}={v}" for k, v in sorted(canary.selector.items()))


def _rollout_cut(view: dict[str, Any], record: HistoryRecord,
                 principal: Principal) -> dict[str, Any]:
    """A namespace token sees that a rollout decision was taken, and why only when the revision
    changed its namespace alone (an abort's reason may name other namespaces' resources)."""
    rollout = view.get("rollout")
    if not isinstance(rollout, Mapping):
        return view
    raw = rollout.get("canary")
    canary: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    if rollout.get("action") == "canary" and not canary.get("revision"):
        # Recorded as drafted, before the commit gave it a revision: this record's own.
        canary = {**canary, "revision": record.revision}
        rollout = {**rollout, "canary": canary}
        view = {**view, "rollout": rollout}
    if principal.admin:
        return view
    cut: dict[str, Any] = {
        "action": rollout.get("action"),
        "canary": {k: canary.get(k) for k in ("revision", "base", "selector") if k in canary},
    }
    if record.namespaces() == {principal.namespace}:
        cut["reason"] = rollout.get("reason")
    return {**view, "rollout": cut}


def _check_deletes(principal: Principal, keys: Sequence[ResourceKey]) -> None:
    refused = [str(k) for k in keys if not principal.can_write(k)]
    if refused:
        raise Forbidden(f"{principal.name} may not delete {', '.join(refused)}")


def _connection_in(final: Mapping[ResourceKey, Doc], namespace: str | None, name: str) -> bool:
    return find_connection(final, namespace, name) is not None


def _summary(changes: tuple[Change, ...], shown: int = 20) -> str:
    """The changes for the audit log: every one for a small apply, counts beyond `shown`."""
    text = ", ".join(f"{c.op} {c.key}" for c in changes[:shown])
    if len(changes) > shown:
        ops: dict[str, int] = {}
        for c in changes:
            ops[c.op] = ops.get(c.op, 0) + 1
        counts = ", ".join(f"{n} {op}" for op, n in sorted(ops.items()))
        text += f", ... ({len(changes)} changes: {counts})"
    return text

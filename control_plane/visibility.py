"""What a namespace token may see of shared records: history and the fleet.

A namespace token sees nothing of other namespaces. History records are cut to its namespace's
changes, and a revision that also changed other namespaces keeps its author and message to
itself (an admin's message may name them). Gateway records keep the fleet's own fields (id,
revision, health, labels...) and, of per-resource error maps and lists (`refused`), the entries
of its namespace's resources; free-text errors are dropped, since nothing says whose they are,
and so are the gateway's traffic figures (`stats`: every namespace's requests together) and its
count of refusals.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from control_plane.principal import Principal
from control_plane.store import HistoryRecord, scope
from providers.resources import GLOBAL, KINDS, ResourceKey

HIDDEN = "(hidden: this revision also changed other namespaces)"
FLEET_FIELDS = ("id", "revision", "version", "health", "live", "age_s", "heartbeat",
                "started_at", "labels")
# Fields of list entries that name the resource the entry is about.
RESOURCE_FIELDS = ("resource", "key")
# Figures about every namespace at once: never shown to a namespace token.
FLEET_WIDE = frozenset({"stats", "refused_total", "source_errors"})


def history_view(record: HistoryRecord, principal: Principal, namespace: str | None = None,
                 full: bool = True) -> dict[str, Any]:
    """`record` as `principal` may see it; `namespace` keeps only that namespace's changes."""
    if not principal.admin:
        namespace = principal.namespace
    changes = [c for c in record.changes if namespace is None or scope(c.key) == namespace]
    view = record.as_dict(full)
    view["changes"] = [c.as_dict() if full else c.summary() for c in changes]
    if not principal.admin and record.namespaces() != {principal.namespace}:
        view["author"] = view["message"] = HIDDEN
    return view


def gateway_view(record: Mapping[str, Any], principal: Principal) -> dict[str, Any]:
    if principal.admin:
        return dict(record)
    view = {k: record[k] for k in FLEET_FIELDS if k in record}
    for field, value in record.items():
        if field in view or field in FLEET_WIDE:
            continue
        if isinstance(value, Mapping) and value and all(_key_text(k) for k in value):
            view[field] = {k: v for k, v in value.items() if _owned(k, principal)}
        elif isinstance(value, list) and value and all(_about(e) for e in value):
            view[field] = [e for e in value if _owned(_about(e) or "", principal)]
    if "refused" in record:  # always there, so "none of mine" reads as an empty list
        view.setdefault("refused", [])
    own_errors = {str(text) for value in view.values() if isinstance(value, Mapping)
                  for text in value.values()}
    for entry in view.get("refused") or []:
        if isinstance(entry, Mapping) and "reason" in entry:
            own_errors.add(str(entry["reason"]))
    error = record.get("last_error")
    view["last_error"] = error if error in own_errors else None
    return view


def _key_text(text: object) -> ResourceKey | None:
    """The key in `Kind/namespace/name`, as gateways key their errors; None for anything else."""
    if not isinstance(text, str):
        return None
    parts = text.split("/")
    if len(parts) != 3 or parts[0] not in KINDS:
        return None
    kind, namespace, name = parts
    return ResourceKey(kind, None if namespace == GLOBAL else namespace, name)


def _about(entry: object) -> str | None:
    if isinstance(entry, Mapping):
        for field in RESOURCE_FIELDS:
            if _key_text(entry.get(field)):
                return str(entry[field])
    return None


def _owned(text: str, principal: Principal) -> bool:
    key = _key_text(text)
    return key is not None and principal.owns(key)

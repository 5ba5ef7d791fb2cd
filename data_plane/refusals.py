"""A gateway's NACKs: the resources of its current snapshot that it refuses, and why.

The snapshot's `errors` map holds, for every resource whose latest stored version is not in
force, the reason (keyed `Kind/namespace/name`), and problems of the source itself that no
resource carries (keyed `source:...`). The first are the refusals the fleet reports; the second
are listed apart, since no resource, and so no namespace, owns them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from providers.resources import GLOBAL, KINDS
from providers.snapshot import Snapshot

# A registration record is rewritten every heartbeat and must stay far below the store's
# request limit (etcd: 1.5 MiB) even when a whole large apply is refused.
MAX_REPORTED = 200
MAX_REASON_CHARS = 500


@dataclass(frozen=True, slots=True)
class Refusals:
    snapshot: Snapshot
    refused: tuple[tuple[str, str], ...] = ()  # (resource, reason), sorted by resource
    source_errors: tuple[str, ...] = ()
    by_namespace: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.refused)

    def reported(self) -> list[dict[str, Any]]:
        """The first MAX_REPORTED refusals as the fleet record carries them."""
        return [{"resource": resource, "reason": _cut(reason)}
                for resource, reason in self.refused[:MAX_REPORTED]]

    @classmethod
    def of(cls, snapshot: Snapshot) -> Refusals:
        if not snapshot.errors:
            return cls(snapshot)
        refused: list[tuple[str, str]] = []
        source: list[str] = []
        namespaces: Counter[str] = Counter()
        for key, reason in snapshot.errors.items():
            owner = _owner(key)
            if owner is None:
                source.append(reason)
                continue
            refused.append((key, reason))
            namespaces[owner] += 1
        return cls(snapshot, tuple(sorted(refused)), tuple(sorted(source)),
                   {ns: float(n) for ns, n in namespaces.items()})


def _owner(key: str) -> str | None:
    """The namespace a `Kind/namespace/name` key belongs to (a Namespace to itself), or None
    when `key` names no resource."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] not in KINDS:
        return None
    kind, namespace, name = parts
    return name if kind == "Namespace" else namespace or GLOBAL


def _cut(reason: str) -> str:
    return reason if len(reason) <= MAX_REASON_CHARS else reason[:MAX_REASON_CHARS - 1] + "…"

"""What config may hold: the rules for everyone, and the tenant rules for namespaces.

Tenant config is untrusted input wherever it is read. The control plane applies these rules when
a document is applied, and gateways apply them again when they build a snapshot, because a
gateway also reads values written straight into the store that never passed the control plane.

Two sets of rules:

- Everyone (`problems`): references only in fields that may hold one (never in mapping keys, never
  in payload schemas), well-formed Vault paths, HTTP step paths that stay on the connection's
  host, stream and channel names outside whplane's own keys, payload schemas without remote
  `$ref`s.
- Tenants (`tenant_problems`): what a namespace token writes, and what a gateway finds stamped as
  written by one (`metadata.sandbox: true`, set by the control plane and by nobody else), may not
  read the gateway's environment or other namespaces' Vault paths, reach private addresses, write
  local files, use namespaced Redis connections, or name streams and channels outside
  `NAMESPACE:`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SANDBOX_FIELD = "sandbox"  # metadata field: true when a namespace token wrote the resource


@dataclass(frozen=True, slots=True)
class Problem:
    path: str  # field path in the document, e.g. "spec.chain.steps[1].config.headers"
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def problems(doc: Mapping[str, Any]) -> list[Problem]:
    """What no document may hold, whoever wrote it."""
    raise NotImplementedError


def tenant_problems(doc: Mapping[str, Any], namespace: str) -> list[Problem]:
    """What a document written by namespace `namespace`'s token may not hold."""
    raise NotImplementedError


def stamp(doc: Mapping[str, Any], sandboxed: bool) -> dict[str, Any]:
    """A copy of `doc` marked as written by a namespace token (or not): the control plane's job.

    Whatever the input says is replaced: a tenant cannot remove its stamp, and an admin's write
    is the admin's, even of a document a tenant wrote before.
    """
    meta = {k: v for k, v in (doc.get("metadata") or {}).items() if k != SANDBOX_FIELD}
    if sandboxed:
        meta[SANDBOX_FIELD] = True
    return {**doc, "metadata": meta}


def sandboxed(doc: Mapping[str, Any]) -> bool:
    """True when `doc` carries the stamp of a namespace token's write."""
    meta = doc.get("metadata")
    return isinstance(meta, Mapping) and meta.get(SANDBOX_FIELD) is True

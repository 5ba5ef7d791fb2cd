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
  `NAMESPACE:` (queues and subjects outside `NAMESPACE.`, tables outside `NAMESPACE_`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from providers import reference_fields
from providers.errors import ReferenceError_
from providers.references import EnvRef, iter_strings, parse

SANDBOX_FIELD = "sandbox"  # metadata field: true when a namespace token wrote the resource


@dataclass(frozen=True, slots=True)
class Problem:
    path: str  # field path in the document, e.g. "spec.chain.steps[1].config.headers"
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def problems(doc: Mapping[str, Any], resource: Any) -> list[Problem]:
    """What no document may hold, whoever wrote it, beyond what its model checks.

    `resource` is `doc` validated (references unresolved). The model itself refuses the rest
    of the rules for everyone: HTTP step paths, Redis names, payload schemas.
    """
    allowed = {path for path, _ in reference_fields.sites(resource)}
    return [
        Problem(path, "references are not allowed here: only fields that take a reference "
                "(secrets, URLs, header values, file paths) are resolved")
        for path in reference_fields.misplaced(doc, allowed)
    ]  # fmt: skip


def tenant_problems(doc: Mapping[str, Any], namespace: str) -> list[Problem]:
    """What a document written by namespace `namespace`'s token may not hold.

    Gateways resolve references with their own environment and Vault token, and reach out from
    inside the network: a tenant must not read another tenant's secrets or the gateway's own
    settings, reach private addresses, write the gateways' disks, or write Redis data outside
    its own names, through its config. `doc` is assumed valid (see `problems`).
    """
    out: list[Problem] = []
    meta = doc.get("metadata") or {}
    kind = doc.get("kind")
    if kind == "Namespace":
        out.append(Problem("kind", "Namespaces are written by the admin"))
    elif meta.get("namespace") != namespace:
        out.append(Problem("metadata.namespace", f"must be {namespace!r}"))
    for path, text in iter_strings(doc):
        try:
            refs = parse(text).refs
        except ReferenceError_:
            continue  # a malformed reference is refused as invalid, for everyone
        for ref in refs:
            if isinstance(ref, EnvRef):
                out.append(Problem(path, f"{ref}: environment references read the gateway's "
                                         "environment and are for the admin"))
            elif not ref.path.startswith(f"{namespace}/"):
                out.append(Problem(path, f"{ref}: vault paths of namespace {namespace!r} start "
                                         f"with '{namespace}/'"))
    spec = doc.get("spec") or {}
    if kind == "Connection":
        if spec.get("allow_private"):
            out.append(Problem("spec.allow_private",
                               "only the admin may allow private addresses"))
        if spec.get("type") == "redis":
            out.append(Problem("spec.type", "Redis connections are for the admin (use a "
                                            "global one)"))
        if spec.get("type") == "kafka":
            # The guard checks the bootstrap servers only; the brokers a cluster advertises
            # are dialled as advertised, which may be any internal address.
            out.append(Problem("spec.type", "Kafka connections are for the admin (use a "
                                            "global one)"))
    if kind == "Webhook":
        steps = (spec.get("chain") or {}).get("steps") or []
        for i, step in enumerate(steps):
            if not isinstance(step, Mapping):
                continue
            where = f"spec.chain.steps[{i}]"
            module = step.get("module")
            config = step.get("config") or {}
            if module == "file":
                out.append(Problem(where, "the file module writes the gateways' disks and is "
                                          "for the admin"))
            if module == "redis_rq":
                out.append(Problem(where, "redis_rq names a function the admin's RQ workers "
                                          "run: for the admin"))
            for field, separator in _NAMED_BY_STEP.get(str(module), ()):
                name = config.get(field)
                prefix = f"{namespace}{separator}"
                if isinstance(name, str) and module == "stomp":
                    name = _STOMP_KIND.sub("", name, count=1)
                if isinstance(name, str) and name and not name.startswith(prefix):
                    out.append(Problem(f"{where}.config.{field}",
                                       f"names of namespace {namespace!r} start with "
                                       f"'{prefix}'"))
    return out


# Step config fields naming data in a system others may share (a global Connection: Redis
# streams and channels, queues, tables, subjects), and the separator after the namespace that
# confines them: (field, separator) per module. An empty value (the default exchange) is not
# a name.
_NAMED_BY_STEP: dict[str, tuple[tuple[str, str], ...]] = {
    "redis_stream": (("stream", ":"),),
    "redis_publish": (("channel", ":"),),
    "rabbitmq": (("exchange", "."), ("routing_key", ".")),
    "postgres": (("table", "_"),),
    "mysql": (("table", "_"),),
    "nats": (("subject", "."),),
    "kafka": (("topic", "."),),
    "mqtt": (("topic", "/"),),
    "stomp": (("destination", "."),),  # after its /queue/, /topic/, ... part
    "clickhouse": (("table", "_"),),
}
# The kind part of a STOMP destination (ActiveMQ, RabbitMQ), before the name it confines.
_STOMP_KIND = re.compile(r"^/(queue|topic|exchange|amq/queue|temp-queue|temp-topic)/")


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

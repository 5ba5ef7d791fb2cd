"""The key layout of the config store (DESIGN.md section 3), shared by every reader and writer.

    {prefix}resources/{namespace or _global}/{Kind}/{name}   the resource as JSON
    {prefix}history/{revision}                               one change set
    {prefix}gateways/{gateway_id}                            a gateway's heartbeat, under a lease
    {prefix}rollout/canary                                   the running canary
    {prefix}rollout/commits/{id}                             a large apply not yet materialized
    {prefix}rollout/materialized                             revisions that materialized one
    {prefix}staging/{id}/{n}                                 a large apply's change set
    {prefix}history-parts/{id}/{n}                           a large history record's changes

Gateways watch [{prefix}r, {prefix}s): exactly resources/ and rollout/, so the resources and the
rollout records one transaction writes arrive together. Staging sorts after that range on
purpose: megabytes of staged chunks are read once by whoever needs them, never streamed to
every watcher (see providers/staged_commits.py).
"""

from __future__ import annotations

from providers.resources import GLOBAL, KINDS, ResourceKey

DEFAULT_PREFIX = "/whplane/"
RESOURCES = "resources/"
HISTORY = "history/"
GATEWAYS = "gateways/"
ROLLOUT = "rollout/"
COMMITS = "rollout/commits/"
STAGING = "staging/"
HISTORY_PARTS = "history-parts/"
PENDING_HISTORY = "meta/pending-history/"


def normalize_prefix(prefix: str) -> str:
    prefix = prefix or DEFAULT_PREFIX
    if not prefix.startswith("/"):
        prefix = "/" + prefix
    return prefix if prefix.endswith("/") else prefix + "/"


def resource_key(prefix: str, key: ResourceKey) -> str:
    return f"{prefix}{RESOURCES}{key.namespace or GLOBAL}/{key.kind}/{key.name}"


def parse_resource_key(prefix: str, raw: str) -> ResourceKey:
    """The ResourceKey of a store key; ValueError naming the key when it is not in the layout."""
    rest = raw[len(prefix) + len(RESOURCES) :] if raw.startswith(prefix + RESOURCES) else None
    parts = rest.split("/") if rest is not None else []
    if len(parts) != 3 or parts[1] not in KINDS or not all(parts):
        raise ValueError(f"key {raw!r} is not {prefix}{RESOURCES}<namespace>/<Kind>/<name>")
    ns, kind, name = parts
    return ResourceKey(kind, None if ns == GLOBAL else ns, name)


def meta_key(prefix: str) -> str:
    """Rewritten by every apply: its mod revision is the config revision."""
    return f"{prefix}meta/config"


def history_key(prefix: str, revision: int) -> str:
    # Zero-padded so that a range read returns history in revision order.
    return f"{prefix}{HISTORY}{revision:020d}"


def gateway_key(prefix: str, gateway_id: str) -> str:
    return f"{prefix}{GATEWAYS}{gateway_id}"


def watch_range(prefix: str) -> tuple[bytes, bytes]:
    """[start, end) holding exactly resources/ and rollout/."""
    return f"{prefix}r".encode(), f"{prefix}s".encode()


def canary_key(prefix: str) -> str:
    return f"{prefix}{ROLLOUT}canary"


def materialized_key(prefix: str) -> str:
    return f"{prefix}{ROLLOUT}materialized"


def commit_key(prefix: str, staged_id: str) -> str:
    return f"{prefix}{COMMITS}{staged_id}"


def staging_prefix(prefix: str, staged_id: str = "") -> str:
    return f"{prefix}{STAGING}{staged_id}/" if staged_id else f"{prefix}{STAGING}"


def staging_key(prefix: str, staged_id: str, n: int) -> str:
    return f"{staging_prefix(prefix, staged_id)}{n:06d}"


def history_parts_prefix(prefix: str, staged_id: str) -> str:
    return f"{prefix}{HISTORY_PARTS}{staged_id}/"


def history_part_key(prefix: str, staged_id: str, n: int) -> str:
    return f"{history_parts_prefix(prefix, staged_id)}{n:06d}"


def pending_history_key(prefix: str, name: str) -> str:
    return f"{prefix}{PENDING_HISTORY}{name}"

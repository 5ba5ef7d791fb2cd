"""The key layout of the config store (DESIGN.md section 3), shared by every reader and writer.

    {prefix}resources/{namespace or _global}/{Kind}/{name}   the resource as JSON
    {prefix}history/{revision}                               one change set
    {prefix}gateways/{gateway_id}                            a gateway's heartbeat, under a lease
"""

from __future__ import annotations

from providers.resources import GLOBAL, KINDS, ResourceKey

DEFAULT_PREFIX = "/whplane/"
RESOURCES = "resources/"
HISTORY = "history/"
GATEWAYS = "gateways/"


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

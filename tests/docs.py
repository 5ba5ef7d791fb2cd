"""Small builders of resource documents for tests and benchmarks."""

from __future__ import annotations

from typing import Any


def namespace(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Namespace", "metadata": {"name": name},
            "spec": spec}


def connection(name: str, ns: str | None = None, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if ns is not None:
        meta["namespace"] = ns
    spec = spec or {"type": "http", "url": "https://example.com/hooks"}
    return {"apiVersion": "whplane/v1", "kind": "Connection", "metadata": meta, "spec": spec}


def webhook(
    name: str,
    ns: str = "acme",
    secret: str = "{$vault:acme/github#secret}",
    connections: tuple[str, ...] = (),
    **spec: Any,
) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"module": "log"}]
    steps += [{"module": "http", "connection": c} for c in connections]
    body: dict[str, Any] = {
        "verify": {"scheme": "github", "secret": secret},
        "chain": {"steps": steps},
    }
    body.update(spec)
    return {"apiVersion": "whplane/v1", "kind": "Webhook",
            "metadata": {"name": name, "namespace": ns}, "spec": body}

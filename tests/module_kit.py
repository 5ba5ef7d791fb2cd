"""Helpers for delivery-module tests: endpoints built from documents, deliveries, and a real
gateway process serving webhooks whose chain writes to one destination."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml
from immutables import Map
from pydantic import TypeAdapter

from cli.processes import GatewayProcess, github_signature
from data_plane.clients import Clients
from data_plane.delivery import Delivery
from data_plane.modules import MODULES
from providers.resources import Connection, Webhook
from providers.snapshot import Endpoint

T = TypeVar("T")
SECRET = "module-secret"
_WEBHOOK = TypeAdapter(Webhook)
_CONNECTION = TypeAdapter(Connection)


def connection_doc(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Connection",
            "metadata": {"name": name, "namespace": "acme"}, "spec": spec}


def webhook_doc(name: str, steps: list[dict[str, Any]], mode: str = "sync",
                **delivery: Any) -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Webhook",
            "metadata": {"name": name, "namespace": "acme"},
            "spec": {"verify": {"scheme": "github", "secret": "{$GH_SECRET}"},
                     "chain": {"steps": steps},
                     "delivery": {"mode": mode, **delivery}}}


def endpoint(step: dict[str, Any], spec: dict[str, Any] | None = None) -> Endpoint:
    """An endpoint of webhook acme/hook with one step; its connection (if any) is "dest"."""
    hook = _WEBHOOK.validate_python({
        "apiVersion": "whplane/v1", "kind": "Webhook",
        "metadata": {"name": "hook", "namespace": "acme"},
        "spec": {"verify": {"scheme": "none"}, "chain": {"steps": [step]}},
    })
    conns = {} if spec is None else {"dest": _CONNECTION.validate_python(
        connection_doc("dest", spec))}
    return Endpoint(hook, None, Map(conns))


def delivery(body: bytes = b'{"event":"push"}', **kw: Any) -> Delivery:
    headers = kw.pop("headers", {"content-type": "application/json"})
    return Delivery("acme", "hook", body, headers, revision=7, **kw)


async def run_step(ep: Endpoint, d: Delivery, clients: Clients) -> None:
    step = ep.webhook.spec.chain.steps[0]
    await MODULES[step.module](step, ep, d, clients)


def wait_for(probe: Callable[[], T | None], timeout: float = 10, what: str = "it") -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got is not None:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(0.05)


class Gateway:
    """A real gateway process serving `docs` from a config directory under `tmp_path`."""

    def __init__(self, tmp_path: Path, docs: list[dict[str, Any]], **env: str) -> None:
        cfg = tmp_path / "config"
        cfg.mkdir(exist_ok=True)
        (cfg / "all.yaml").write_text(yaml.safe_dump_all(docs))
        self.process = GatewayProcess(f"file:{cfg}", {"GH_SECRET": SECRET, **env})

    def __enter__(self) -> Gateway:
        self.process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.stop()

    def post(self, name: str, payload: Any) -> httpx.Response:
        body = json.dumps(payload).encode()
        headers = {"content-type": "application/json",
                   "x-hub-signature-256": github_signature(SECRET, body)}
        return httpx.post(f"{self.process.url}/webhook/acme/{name}", content=body,
                          headers=headers, timeout=30, trust_env=False)

"""A stored value that is not valid JSON (an `etcdctl put` gone wrong, a hand-edited file) is
shown as invalid by the control plane, never hidden: listed, got, and an apply over it is the
update it is, on the etcd store and the directory store alike."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from cli.processes import ControlPlaneProcess
from cli.servers import EtcdServer
from providers.resources import ResourceKey
from providers.store_keys import resource_key

ADMIN = "admin-token-for-first-hour"
HEADERS = {"authorization": f"Bearer {ADMIN}"}
NS = {"apiVersion": "whplane/v1", "kind": "Namespace", "metadata": {"name": "acme"}}
CONN = {"apiVersion": "whplane/v1", "kind": "Connection",
        "metadata": {"name": "api", "namespace": "acme"},
        "spec": {"type": "http", "url": "https://api.acme.example/hooks"}}


def _shows_it_invalid(cp: ControlPlaneProcess) -> None:
    got = httpx.get(f"{cp.url}/v1/resources/Connection/acme/api", headers=HEADERS)
    assert got.status_code == 200, got.text
    assert "not valid JSON" in got.json()["invalid"]
    listed = httpx.get(f"{cp.url}/v1/resources", params={"kind": "Connection"},
                       headers=HEADERS).json()["items"]
    assert [d["metadata"]["name"] for d in listed] == ["api"]
    dry = httpx.post(f"{cp.url}/v1/apply", headers=HEADERS,
                     json={"resources": [NS, CONN], "dry_run": True}).json()
    ops = {c["kind"]: c["op"] for c in dry["changes"]}
    assert ops["Connection"] == "update", dry  # it exists: an apply replaces it
    fixed = httpx.post(f"{cp.url}/v1/apply", headers=HEADERS, json={"resources": [NS, CONN]})
    assert fixed.status_code == 200, fixed.text
    again = httpx.get(f"{cp.url}/v1/resources/Connection/acme/api", headers=HEADERS).json()
    assert "invalid" not in again and again["spec"]["url"] == CONN["spec"]["url"]


def _apply(cp: ControlPlaneProcess, *docs: dict[str, Any]) -> None:
    r = httpx.post(f"{cp.url}/v1/apply", headers=HEADERS, json={"resources": list(docs)})
    assert r.status_code == 200, r.text


def test_invalid_json_in_etcd_is_shown_invalid(etcd_server: EtcdServer, etcd_prefix: str
                                               ) -> None:
    with ControlPlaneProcess(f"etcd://{etcd_server.endpoint}{etcd_prefix}", ADMIN) as cp:
        _apply(cp, NS, CONN)
        etcd_server.put(resource_key(etcd_prefix, ResourceKey("Connection", "acme", "api")),
                        '{"apiVersion": "whplane/v1", "kind": ')
        _shows_it_invalid(cp)


def test_invalid_json_in_the_directory_store_is_shown_invalid(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with ControlPlaneProcess(f"file:{root}", ADMIN) as cp:
        _apply(cp, NS, CONN)
        [stored] = (root / "..data" / "resources").glob("acme/Connection/api.json")
        stored.write_text(json.dumps(CONN)[:20])
        _shows_it_invalid(cp)

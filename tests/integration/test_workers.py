"""`whplane gateway --workers N`, real processes: each worker is a gateway of its own (its own
snapshot, its own registration), every one of them serves a change, and the fleet lists each."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cli.processes import ControlPlaneProcess, GatewayProcess, github_signature
from cli.servers import EtcdServer

SECRET = "workers-secret"
WORKERS = 2


def ns(name: str) -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Namespace", "metadata": {"name": name}}


def hook(name: str) -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Webhook",
            "metadata": {"name": name, "namespace": "acme"},
            "spec": {"verify": {"scheme": "github", "secret": "{$GH_SECRET}"},
                     "chain": {"steps": [{"module": "log"}]}}}


def write(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


@pytest.fixture(params=["etcd", "dir"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "etcd":
        etcd: EtcdServer = request.getfixturevalue("etcd_server")
        prefix: str = request.getfixturevalue("etcd_prefix")
        return f"etcd://{etcd.endpoint}{prefix}"
    return f"file:{tmp_path / 'store'}"


@pytest.fixture
def procs() -> Iterator[list[Any]]:
    made: list[Any] = []
    yield made
    for p in made:
        p.stop()


def workers_listed(cp: ControlPlaneProcess, prefix: str) -> list[dict[str, Any]]:
    listed = cp.whctl("gateways", "-o", "json", check=True)
    return [g for g in json.loads(listed.stdout) if g["id"].startswith(prefix)]


def test_every_worker_serves_a_change_and_the_fleet_lists_each(
    store_url: str, tmp_path: Path, procs: list[Any]
) -> None:
    cp = ControlPlaneProcess(store_url).start()
    procs.append(cp)
    cp.whctl("apply", "-f", str(write(tmp_path / "v1.yaml", [ns("acme"), hook("push")])),
             check=True)
    gw = GatewayProcess(store_url, {"GH_SECRET": SECRET}, gateway_id="gw-multi",
                        args=("--workers", str(WORKERS))).start()
    procs.append(gw)

    # One registration per worker process, told apart by its pid.
    deadline = time.monotonic() + 20
    while len(records := workers_listed(cp, "gw-multi-")) < WORKERS:
        assert time.monotonic() < deadline, f"workers registered: {records}"
        time.sleep(0.2)
    assert len({r["id"] for r in records}) == WORKERS, records

    applied = cp.whctl("apply", "-f", str(write(tmp_path / "v2.yaml", [hook("push"),
                                                                       hook("new")])),
                       "-o", "json", check=True)
    revision = json.loads(applied.stdout)["revision"]
    status = cp.whctl("rollout", "status", "--revision", str(revision), "--timeout", "20s")
    assert status.returncode == 0, status.stdout + status.stderr

    records = workers_listed(cp, "gw-multi-")
    assert len(records) == WORKERS, records
    for record in records:
        assert record["revision"] >= revision and record["health"] == "ok", record

    # Each request on a connection of its own: the kernel hands them to either worker, and
    # whichever takes one must already serve the change.
    body = b'{"zen": "speak like a human"}'
    headers = {"content-type": "application/json", "connection": "close",
               "x-hub-signature-256": github_signature(SECRET, body)}
    with httpx.Client(timeout=5) as client:
        for _ in range(40):
            r = client.post(f"{gw.url}/webhook/acme/new", content=body, headers=headers)
            assert r.status_code == 200, r.text
            assert int(r.headers["x-whplane-revision"]) >= revision

"""NACKs: a gateway that refuses a resource of a revision says so, and nobody counts it as
serving that revision. Real control plane and gateway processes, on etcd and on the directory
store; plus the rule X-Whplane-Revision follows when a snapshot kept an older version."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from immutables import Map

from cli.processes import ControlPlaneProcess, GatewayProcess, github_signature, start_all
from cli.servers import EtcdServer
from providers.loader import RESOURCE_ADAPTER
from providers.resources import ResourceKey
from providers.snapshot import Entry, Snapshot

OLD, NEW = "secret-old", "secret-new"


def ns(name: str) -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Namespace", "metadata": {"name": name}}


def hook(name: str, secret: str, namespace: str = "acme") -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Webhook",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"verify": {"scheme": "github", "secret": secret},
                     "chain": {"steps": [{"module": "log"}]}}}


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


class Fleet:
    def __init__(self, cp: ControlPlaneProcess, tmp: Path) -> None:
        self.cp, self.tmp, self.http = cp, tmp, httpx.Client(timeout=5)

    def get(self, path: str, token: str | None = None) -> Any:
        r = self.http.get(f"{self.cp.url}{path}",
                          headers={"authorization": f"Bearer {token or self.cp.admin_token}"})
        r.raise_for_status()
        return r.json()

    def apply(self, docs: list[dict[str, Any]]) -> int:
        path = self.tmp / f"apply-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        out = self.cp.whctl("apply", "-f", str(path), "-o", "json", check=True)
        return int(json.loads(out.stdout)["revision"])

    def status(self, revision: int, until: Any, timeout: float = 15) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status: dict[str, Any] = self.get(f"/v1/rollout/status?revision={revision}")
            if until(status):
                return status
            assert time.monotonic() < deadline, status
            time.sleep(0.1)


def post(client: httpx.Client, gw: GatewayProcess, name: str, secret: str,
         namespace: str = "acme") -> httpx.Response:
    body = b'{"zen": "nack"}'
    return client.post(f"{gw.url}/webhook/{namespace}/{name}", content=body, headers={
        "content-type": "application/json", "x-hub-signature-256": github_signature(secret, body)})


def test_a_refused_resource_is_a_nack(store_url: str, tmp_path: Path, procs: list[Any]) -> None:
    cp = ControlPlaneProcess(store_url).start()
    procs.append(cp)
    fleet = Fleet(cp, tmp_path)
    r1 = fleet.apply([ns("acme"), ns("globex"), hook("push", "{$OLD}"),
                      hook("other", "{$OLD}", "globex")])
    # Only gateway "full" has NEW in its environment: "short" cannot resolve the next version.
    full = GatewayProcess(store_url, {"OLD": OLD, "NEW": NEW}, gateway_id="gw-full",
                          args=("--labels", "canary=true"))
    short = GatewayProcess(store_url, {"OLD": OLD}, gateway_id="gw-short",
                           args=("--labels", "zone=b"))
    procs += [full, short]
    start_all([full, short])
    first = fleet.status(r1, lambda s: s["complete"] and s["live"] == 2)
    assert first["refusals"] == [] and all(g["refused"] == [] for g in first["gateways"])

    r2 = fleet.apply([hook("push", "{$NEW}"), hook("other", "{$NEW}", "globex")])
    status = fleet.status(r2, lambda s: s["live"] == 2 and all(
        g["revision"] >= r2 and g["health"] != "starting" for g in s["gateways"]))
    assert status["applied"] == 1 and not status["complete"], status
    rows = {g["id"]: g for g in status["gateways"]}
    assert rows["gw-full"]["applied"] and rows["gw-full"]["labels"] == {"canary": "true"}
    assert not rows["gw-short"]["applied"] and rows["gw-short"]["health"] == "degraded"
    refused = {(r["gateway"], r["resource"]) for r in status["refusals"]}
    assert refused == {("gw-short", "Webhook/acme/push"), ("gw-short", "Webhook/globex/other")}
    assert all("NEW" in r["reason"] for r in status["refusals"]), status["refusals"]

    with httpx.Client(timeout=5) as c:
        # The gateway that took r2 says so; the one that kept the old webhook names the
        # revision of what it served, not r2.
        answer = post(c, full, "push", NEW)
        assert answer.status_code == 200 and int(answer.headers["x-whplane-revision"]) >= r2
        answer = post(c, short, "push", OLD)
        assert answer.status_code == 200, answer.text
        assert int(answer.headers["x-whplane-revision"]) == r1
        assert post(c, full, "push", "wrong").status_code == 401
        gw_status = c.get(f"{short.url}/status").json()
        assert gw_status["health"] == "degraded" and gw_status["revision"] >= r2
        assert {r["resource"] for r in gw_status["refused"]} == {
            "Webhook/acme/push", "Webhook/globex/other"}
        assert gw_status["labels"] == {"zone": "b"}
        metrics = c.get(f"{short.url}/metrics").text
        assert 'whplane_refused_resources{namespace="acme"} 1.0' in metrics
        assert c.get(f"{full.url}/status").json()["health"] == "ok"

    def full_counted(s: dict[str, Any]) -> bool:
        g = {x["id"]: x for x in fleet.get("/v1/gateways")["items"]}["gw-full"]
        return bool(g["stats"]["requests"] >= 2 and g["stats"]["errors"] >= 1)

    fleet.status(r2, full_counted)
    gateways = {g["id"]: g for g in fleet.get("/v1/gateways")["items"]}
    assert gateways["gw-short"]["labels"] == {"zone": "b"}
    assert gateways["gw-short"]["health"] == "degraded"
    assert len(gateways["gw-short"]["refused"]) == 2

    # A namespace token sees its own refusals only, and no fleet-wide traffic figures.
    token = cp.whctl("tokens", "create", "--namespace", "acme", check=True).stdout.strip()
    mine = {g["id"]: g for g in fleet.get("/v1/gateways", token)["items"]}
    assert [r["resource"] for r in mine["gw-short"]["refused"]] == ["Webhook/acme/push"]
    assert mine["gw-full"]["refused"] == []
    assert all("stats" not in g and "refused_total" not in g for g in mine.values())
    tenant = fleet.get(f"/v1/rollout/status?revision={r2}", token)
    assert [(r["gateway"], r["resource"]) for r in tenant["refusals"]] == [
        ("gw-short", "Webhook/acme/push")]

    # Fixed: both serve the next revision, and the NACK is gone.
    r3 = fleet.apply([hook("push", "{$OLD}"), hook("other", "{$OLD}", "globex")])
    done = fleet.status(r3, lambda s: s["complete"] and s["live"] == 2)
    assert done["refusals"] == [] and {g["health"] for g in done["gateways"]} == {"ok"}


def _entry(doc: dict[str, Any], revision: int, written: int | None = None) -> Entry:
    if written is not None:
        doc = {**doc, "metadata": {**doc["metadata"], "revision": written}}
    return Entry(doc, RESOURCE_ADAPTER.validate_python(doc), revision=revision)


def test_endpoint_revision_names_what_is_in_force() -> None:
    wkey, nkey = ResourceKey("Webhook", "acme", "push"), ResourceKey("Namespace", None, "acme")
    okey = ResourceKey("Webhook", "acme", "other")
    entries = Map({wkey: _entry(hook("push", "x"), 5), nkey: _entry(ns("acme"), 3),
                   okey: _entry(hook("other", "x"), 9)})
    clean = Snapshot(9, entries)
    assert clean.endpoint("acme", "push").revision == 9  # type: ignore[union-attr]
    # Revision 9 changed "push" and this snapshot refused it: answers name 5, not 9.
    refused = Snapshot(9, entries, Map({str(wkey): "unresolved"}))
    assert refused.endpoint("acme", "push").revision == 5  # type: ignore[union-attr]
    assert refused.endpoint("acme", "other").revision == 9  # type: ignore[union-attr]
    # A refused Namespace counts too; the newest version in force decides.
    ns_refused = Snapshot(9, entries.set(wkey, _entry(hook("push", "x"), 7)),
                          Map({str(nkey): "invalid"}))
    assert ns_refused.endpoint("acme", "push").revision == 7  # type: ignore[union-attr]
    # A full reload brings unchanged versions in again at its own revision; the revision
    # that wrote them (metadata.revision, set by the control plane) is what they are.
    reloaded = Snapshot(12, Map({wkey: _entry(hook("push", "x"), 12, written=5),
                                 nkey: _entry(ns("acme"), 12, written=3)}),
                        Map({str(wkey): "unresolved"}))
    assert reloaded.endpoint("acme", "push").revision == 5  # type: ignore[union-attr]

"""Canaries end to end: whctl -> control plane -> store (etcd and directory) -> three real
gateway processes, one labelled canary=true.

Webhook `push` verifies GitHub signatures with the secret its config names: revision by
revision the secret changes, so which secret a gateway accepts tells which version it serves.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cli.processes import ControlPlaneProcess, GatewayProcess, github_signature, start_all
from cli.servers import EtcdServer, ServerError
from control_plane.api import create_api
from control_plane.dir_store import DirStore

SECRETS = {"SECRET_A": "secret-version-a", "SECRET_B": "secret-version-b"}
A, B = SECRETS["SECRET_A"], SECRETS["SECRET_B"]
AUTOMATIC = "control plane (automatic)"


def ns(name: str) -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Namespace", "metadata": {"name": name}}


def hook(name: str, secret: str = "{$SECRET_A}") -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Webhook",
            "metadata": {"name": name, "namespace": "acme"},
            "spec": {"verify": {"scheme": "github", "secret": secret},
                     "chain": {"steps": [{"module": "log"}]}}}


@pytest.fixture(scope="module", params=["etcd", "dir"])
def store_url(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One store per kind for the whole module: the fleet on it is shared (see `fleet`)."""
    if request.param == "etcd":
        etcd: EtcdServer = request.getfixturevalue("etcd_server")
        prefix = f"/t-{uuid.uuid4().hex[:12]}/"
        yield f"etcd://{etcd.endpoint}{prefix}"
        with contextlib.suppress(ServerError):
            etcd.delete_prefix(prefix)
        return
    yield f"file:{tmp_path_factory.mktemp('canary') / 'store'}"


class Fleet:
    """A control plane judging canaries every 0.2 s, and gateways: `canary` (canary=true,
    without ONLY_OTHERS in its environment), `b` and `c`."""

    def __init__(self, store_url: str, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Any] = []
        self.cp = self._keep(ControlPlaneProcess(store_url, env={"WH_CANARY_CHECK_S": "0.2"}))
        self.cp.start()
        self.apply_ok(ns("acme"), hook("push"))
        others = {**SECRETS, "ONLY_OTHERS": "other-secret"}
        self.canary = self._keep(GatewayProcess(
            store_url, {**SECRETS, "WH_GATEWAY_LABELS": "canary=true"}))
        self.b = self._keep(GatewayProcess(store_url, others))
        self.c = self._keep(GatewayProcess(store_url, others))
        start_all(self.gateways)
        self.http = httpx.Client(timeout=5)

    def _keep(self, proc: Any) -> Any:
        self.procs.append(proc)
        return proc

    @property
    def gateways(self) -> list[GatewayProcess]:
        return [self.canary, self.b, self.c]

    def close(self) -> None:
        self.http.close()
        for p in self.procs:
            p.stop()

    def file(self, *docs: dict[str, Any]) -> str:
        path = self.tmp / f"apply-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        return str(path)

    def whctl(self, *args: str) -> Any:
        return self.cp.whctl(*args)

    def apply_ok(self, *docs: dict[str, Any], args: tuple[str, ...] = ()) -> int:
        out = self.cp.whctl("apply", "-f", self.file(*docs), "-o", "json", *args, check=True)
        return int(json.loads(out.stdout)["revision"])

    def api(self, method: str, path: str, body: Any = None) -> Any:
        r = self.http.request(method, f"{self.cp.url}{path}", json=body,
                              headers={"authorization": f"Bearer {self.cp.admin_token}"})
        r.raise_for_status()
        return r.json()

    def post(self, gw: GatewayProcess, secret: str, name: str = "push") -> httpx.Response:
        body = b'{"zen": "canaries sing"}'
        return self.http.post(f"{gw.url}/webhook/acme/{name}", content=body, headers={
            "content-type": "application/json",
            "x-hub-signature-256": github_signature(secret, body)})

    def accepts(self, gw: GatewayProcess, secret: str, name: str = "push") -> tuple[int, int]:
        """(status, revision header) of a request signed with `secret`."""
        r = self.post(gw, secret, name)
        return r.status_code, int(r.headers["x-whplane-revision"])

    def eventually(self, check: Callable[[], Any], timeout: float = 20) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            assert time.monotonic() < deadline, f"not within {timeout}s"
            time.sleep(0.1)

    def rollout_record(self, action: str, canary_revision: int) -> dict[str, Any] | None:
        for item in self.api("GET", "/v1/history?limit=20")["items"]:
            rollout = item.get("rollout") or {}
            if (rollout.get("action") == action
                    and (rollout.get("canary") or {}).get("revision") == canary_revision):
                return dict(item)
        return None

    def reset(self) -> None:
        """Back to where every test starts: no canary, only `push` (secret A) in the store,
        served by the three gateways with nothing refused."""
        if self.api("GET", "/v1/rollout/status")["canary"] is not None:
            self.api("POST", "/v1/rollout/abort")
        answer = self.api("POST", "/v1/apply", {"resources": [ns("acme"), hook("push")],
                                                "prune": True, "message": "next test"})
        revision, ids = int(answer["revision"]), {gw.gateway_id for gw in self.gateways}
        self.eventually(lambda: self._all_serve(revision, ids))

    def _all_serve(self, revision: int, ids: set[str]) -> bool:
        status = self.api("GET", f"/v1/rollout/status?revision={revision}")
        return bool(status["complete"]) and {g["id"] for g in status["gateways"]} == ids


@pytest.fixture(scope="module")
def shared_fleet(store_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Three gateways and a control plane take seconds to start: one fleet per store kind for
    the whole module, put back by `fleet` before each test."""
    made = Fleet(store_url, tmp_path_factory.mktemp("fleet"))
    try:
        assert made.whctl("rollout", "status", "--timeout", "20s").returncode == 0
        yield made
    finally:
        made.close()


@pytest.fixture
def fleet(shared_fleet: Fleet) -> Iterator[Fleet]:
    shared_fleet.reset()
    kept = len(shared_fleet.procs)
    try:
        yield shared_fleet
    finally:
        # Processes a test started (late gateways) go with it.
        for proc in shared_fleet.procs[kept:]:
            proc.stop()
        del shared_fleet.procs[kept:]


def test_canary_then_promote_and_a_plain_apply_meanwhile_gets_409(fleet: Fleet) -> None:
    c = fleet.apply_ok(hook("push", "{$SECRET_B}"),
                       args=("--canary", "canary=true", "-m", "try B", "--wait=20s"))
    assert fleet.accepts(fleet.canary, B) == (200, c)
    for gw in (fleet.b, fleet.c):
        status, revision = fleet.accepts(gw, A)
        assert status == 200 and revision < c
        assert fleet.accepts(gw, B)[0] == 401

    shown = fleet.whctl("rollout", "status")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert f"canary revision {c} " in shown.stdout and "selector canary=true" in shown.stdout
    assert f"canary gateway {fleet.canary.gateway_id}: revision {c}, serving" in shown.stdout
    listed = json.loads(fleet.whctl("gateways", "-o", "json").stdout)
    assert {g["id"]: g.get("labels") for g in listed}[fleet.canary.gateway_id] == {
        "canary": "true"}

    plain = fleet.whctl("apply", "-f", fleet.file(hook("other")))
    assert plain.returncode == 1
    assert f"canary revision {c} (canary=true, by admin) is running" in plain.stderr
    second = fleet.whctl("apply", "-f", fleet.file(hook("other")), "--canary", "canary=true")
    assert second.returncode == 1 and f"canary revision {c}" in second.stderr

    promoted = fleet.whctl("rollout", "promote", "-m", "B is good", "-o", "json")
    assert promoted.returncode == 0, promoted.stderr
    p = json.loads(promoted.stdout)["revision"]
    assert fleet.whctl("rollout", "status", "--revision", str(p),
                       "--timeout", "20s").returncode == 0
    for gw in fleet.gateways:
        status, revision = fleet.accepts(gw, B)
        assert status == 200 and revision >= c
    started = fleet.rollout_record("canary", c)
    assert started is not None and started["rollout"]["canary"]["selector"] == {"canary": "true"}
    record = fleet.rollout_record("promote", c)
    assert record is not None and record["author"] == "admin" and record["changes"] == []
    assert record["rollout"]["reason"] == "B is good"
    assert fleet.whctl("rollout", "promote").returncode == 1  # nothing left to promote

    # With --promote-after, a healthy canary promotes itself.
    c2 = fleet.apply_ok(hook("push"), args=("--canary", "canary=true",
                                            "--promote-after", "1s", "--wait"))
    auto = fleet.eventually(lambda: fleet.rollout_record("promote", c2))
    assert auto["author"] == AUTOMATIC and "healthy for 1s" in auto["rollout"]["reason"]
    fleet.eventually(lambda: all(fleet.accepts(gw, A)[0] == 200 for gw in fleet.gateways))


def test_canary_then_abort_the_others_never_serve_it(fleet: Fleet) -> None:
    base = fleet.apply_ok(hook("push"), hook("kept"))
    assert fleet.whctl("rollout", "status", "--timeout", "20s").returncode == 0
    seen: list[tuple[str, int, int]] = []  # (gateway, status, revision) with the canary secret
    stop = threading.Event()

    def others() -> None:
        with httpx.Client(timeout=5) as client:
            while not stop.is_set():
                for gw in (fleet.b, fleet.c):
                    body = b"{}"
                    r = client.post(f"{gw.url}/webhook/acme/push", content=body, headers={
                        "content-type": "application/json",
                        "x-hub-signature-256": github_signature(B, body)})
                    seen.append((gw.gateway_id, r.status_code,
                                 int(r.headers["x-whplane-revision"])))

    watcher = threading.Thread(target=others)
    watcher.start()
    try:
        c = fleet.apply_ok(hook("push", "{$SECRET_B}"), hook("fresh"),
                           args=("--canary", "canary=true", "--wait=20s"))
        assert fleet.accepts(fleet.canary, B) == (200, c)
        assert fleet.accepts(fleet.canary, A, "fresh")[0] == 200
        assert fleet.post(fleet.b, A, "fresh").status_code == 404
        aborted = fleet.whctl("rollout", "abort", "-m", "not today", "-o", "json")
        assert aborted.returncode == 0, aborted.stderr
        answer = json.loads(aborted.stdout)
        assert {(ch["op"], ch["name"]) for ch in answer["changes"]} == {
            ("update", "push"), ("delete", "fresh")}
        assert fleet.whctl("rollout", "status", "--revision", str(answer["revision"]),
                           "--timeout", "20s").returncode == 0
        time.sleep(0.3)
    finally:
        stop.set()
        watcher.join()
    assert seen, "no traffic reached the other gateways"
    # The others refused the canary's secret throughout, and never named the canary revision.
    assert all(status == 401 for _, status, _ in seen), [s for s in seen if s[1] != 401][:5]
    assert all(base <= revision != c for _, _, revision in seen), sorted({s[2] for s in seen})
    for gw in fleet.gateways:
        assert fleet.accepts(gw, A)[0] == 200 and fleet.accepts(gw, B)[0] == 401
        assert fleet.post(gw, A, "fresh").status_code == 404
        assert fleet.post(gw, A, "kept").status_code == 200
    record = fleet.rollout_record("abort", c)
    assert record is not None and record["author"] == "admin"
    assert record["message"] == "not today"


def test_a_canary_whose_gateway_nacks_aborts_by_itself(fleet: Fleet) -> None:
    # ONLY_OTHERS is missing from the canary gateway's environment: it refuses the webhook.
    waited = fleet.whctl("apply", "-f", fleet.file(hook("push", "{$ONLY_OTHERS}")),
                         "--canary", "canary=true", "--max-error-rate", "0.5", "--wait=30s",
                         "-o", "json")
    assert waited.returncode == 1, waited.stdout + waited.stderr
    c = json.loads(waited.stdout)["revision"]
    assert "Webhook/acme/push" in waited.stderr, waited.stderr
    record = fleet.eventually(lambda: fleet.rollout_record("abort", c))
    assert record["author"] == AUTOMATIC
    reason = record["rollout"]["reason"]
    assert fleet.canary.gateway_id in reason and "Webhook/acme/push" in reason
    assert "ONLY_OTHERS" in reason
    assert fleet.api("GET", "/v1/rollout/status")["canary"] is None
    fleet.eventually(lambda: all(fleet.accepts(gw, A)[0] == 200 for gw in fleet.gateways))
    # The revert left nothing refused anywhere; the next apply is a plain one again.
    assert fleet.whctl("rollout", "status", "--timeout", "20s").returncode == 0
    fleet.apply_ok(hook("after"))


def test_apply_wait_and_rollout_status_exit_1_naming_a_refused_resource(fleet: Fleet) -> None:
    waited = fleet.whctl("apply", "-f", fleet.file(hook("push", "{$ONLY_OTHERS}")),
                         "--wait=30s")
    assert waited.returncode == 1, waited.stdout + waited.stderr
    named = f"{fleet.canary.gateway_id}: Webhook/acme/push: "
    assert named in waited.stderr and "ONLY_OTHERS" in waited.stderr, waited.stderr
    status = fleet.whctl("rollout", "status", "--timeout", "30s")
    assert status.returncode == 1
    assert named in status.stderr
    for gw in (fleet.b, fleet.c):
        assert gw.gateway_id + ":" not in status.stderr
    listed = {g["id"]: g for g in json.loads(fleet.whctl("gateways", "-o", "json").stdout)}
    assert listed[fleet.canary.gateway_id]["health"] == "degraded"
    assert [r["resource"] for r in listed[fleet.canary.gateway_id]["refused"]] == [
        "Webhook/acme/push"]


def test_a_gateway_started_during_a_canary_serves_what_its_labels_say(fleet: Fleet,
                                                                        store_url: str) -> None:
    c = fleet.apply_ok(hook("push", "{$SECRET_B}"), args=("--canary", "canary=true", "--wait"))
    # A full load while the canary runs: the store holds revision C, the record says who serves it.
    late = fleet._keep(GatewayProcess(store_url, SECRETS))
    late_canary = fleet._keep(GatewayProcess(
        store_url, {**SECRETS, "WH_GATEWAY_LABELS": "canary=true,zone=b"}))
    start_all([late, late_canary])
    status, revision = fleet.accepts(late, A)
    assert status == 200 and revision < c
    assert fleet.accepts(late, B)[0] == 401
    assert fleet.accepts(late_canary, B) == (200, c)
    shown = fleet.api("GET", "/v1/rollout/status")["canary"]
    assert shown["revision"] == c
    assert {g["id"] for g in shown["gateways"]} == {fleet.canary.gateway_id,
                                                    late_canary.gateway_id}
    assert fleet.whctl("rollout", "promote").returncode == 0
    fleet.eventually(lambda: fleet.accepts(late, B)[0] == 200)


# --- in process: who may do what with a canary --------------------------------------------------

VAULT = "{$vault:acme/github#secret}"  # what a namespace token's webhooks may use


async def test_canary_rules_for_namespace_tokens(tmp_path: Path) -> None:
    app = create_api(DirStore(tmp_path / "store"), "admin-token")
    admin = {"authorization": "Bearer admin-token"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://cp.test") as client:
        async def call(method: str, path: str, headers: dict[str, str],
                       **kw: Any) -> httpx.Response:
            return await client.request(method, path, headers=headers, **kw)

        r = await call("POST", "/v1/apply", admin, json={"resources": [
            ns("acme"), ns("globex"), hook("push"), {**hook("g"), "metadata": {
                "name": "g", "namespace": "globex"}}]})
        assert r.status_code == 200, r.text
        token = (await call("POST", "/v1/tokens", admin, json={"namespace": "acme"})).json()
        tenant = {"authorization": f"Bearer {token['token']}"}

        # A namespace token may not start a canary, even of its own namespace...
        r = await call("POST", "/v1/apply", tenant, json={
            "resources": [hook("push", VAULT)], "canary": "canary=true"})
        assert r.status_code == 403 and "canary" in r.text
        # ...nor end one.
        r = await call("POST", "/v1/apply", admin, json={
            "resources": [hook("push", "{$SECRET_B}")], "canary": {"canary": "true"},
            "message": "secret plan for globex", "promote_after_s": 600})
        assert r.status_code == 200, r.text
        c = r.json()["revision"]
        for action in ("promote", "abort"):
            assert (await call("POST", f"/v1/rollout/{action}", tenant)).status_code == 403
        # Its writes wait like everyone's, and the 409 names the canary.
        r = await call("POST", "/v1/apply", tenant, json={"resources": [hook("other", VAULT)]})
        assert r.status_code == 409
        assert r.json()["detail"]["canary"]["revision"] == c
        assert (await call("DELETE", "/v1/resources/Webhook/acme/push", tenant)).status_code == 409
        r = await call("POST", "/v1/apply", tenant, json={"resources": [hook("other", VAULT)],
                                                          "dry_run": True})
        assert r.status_code == 200  # a dry run writes nothing: allowed
        # It sees the canary, without the admin's message or the fleet's traffic.
        shown = (await call("GET", "/v1/rollout/status", tenant)).json()["canary"]
        assert shown["revision"] == c and shown["selector"] == {"canary": "true"}
        assert "message" not in shown and "requests" not in shown
        full = (await call("GET", "/v1/rollout/status", admin)).json()["canary"]
        assert full["message"] == "secret plan for globex" and full["promote_in_s"] > 500

        r = await call("POST", "/v1/rollout/abort", admin, json={"message": "changed my mind"})
        assert r.status_code == 200, r.text
        assert (await call("GET", "/v1/rollout/status", admin)).json()["canary"] is None
        assert (await call("POST", "/v1/rollout/abort", admin)).status_code == 404
        history = (await call("GET", "/v1/history", tenant)).json()["items"]
        abort = next(i for i in history if (i.get("rollout") or {}).get("action") == "abort")
        assert abort["rollout"]["canary"]["revision"] == c
        assert "message" not in abort["rollout"]["canary"]
        r = await call("POST", "/v1/apply", tenant, json={"resources": [hook("other", VAULT)]})
        assert r.status_code == 200, r.text

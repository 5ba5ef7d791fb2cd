"""A namespace token against a real control-plane process: rollback is an apply held to the
tenant rules, other namespaces are refused (403, never an empty 200), and what it sees of
history and the fleet carries nothing of other namespaces."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cli.processes import ControlPlaneProcess

ADMIN = "admin-token-for-tenancy"


def ns(name: str) -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Namespace", "metadata": {"name": name}}


def hook(name: str, namespace: str = "acme", steps: list[dict[str, Any]] | None = None,
         secret: str | None = None) -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Webhook",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"verify": {"scheme": "github",
                                "secret": secret or f"{{$vault:{namespace}/gh#secret}}"},
                     "chain": {"steps": steps or [{"module": "log"}]}}}


def conn(name: str, namespace: str, headers: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Connection",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"type": "http", "url": "https://hooks.example.com/in", "headers": headers}}


class Cp:
    def __init__(self, proc: ControlPlaneProcess, tmp: Path) -> None:
        self.proc, self.tmp = proc, tmp
        self.http = httpx.Client(base_url=proc.url, timeout=30)

    def call(self, method: str, path: str, token: str = ADMIN, **kw: Any) -> httpx.Response:
        return self.http.request(method, path, headers={"authorization": f"Bearer {token}"},
                                 **kw)

    def apply(self, docs: list[dict[str, Any]], token: str = ADMIN, **kw: Any) -> dict[str, Any]:
        r = self.call("POST", "/v1/apply", token, json={"resources": docs, **kw})
        assert r.status_code == 200, r.text
        answer: dict[str, Any] = r.json()
        return answer

    def token(self, namespace: str) -> str:
        r = self.call("POST", "/v1/tokens", json={"namespace": namespace})
        assert r.status_code == 200, r.text
        return str(r.json()["token"])

    def items(self, token: str = ADMIN, **params: str) -> list[dict[str, Any]]:
        r = self.call("GET", "/v1/resources", token, params=params)
        assert r.status_code == 200, r.text
        return list(r.json()["items"])

    def whctl(self, *args: str, token: str = ADMIN) -> Any:
        return self.proc.whctl(*args, token=token)


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[Cp]:
    with ControlPlaneProcess(f"file:{tmp_path / 'store'}", ADMIN) as proc:
        c = Cp(proc, tmp_path)
        yield c
        c.http.close()


def test_tenant_rollback_never_deletes_its_namespace(cp: Cp) -> None:
    cp.apply([ns("acme")])
    token = cp.token("acme")
    cp.apply([hook("mine")], token)
    # Back to before the namespace existed: the old code deleted the Namespace too, and then
    # the tenant could not create anything any more (422: namespace does not exist).
    undo = cp.whctl("rollout", "undo", "-n", "acme", "--to-revision", "0", token=token)
    assert undo.returncode == 0, undo.stderr
    assert "webhook acme/mine deleted" in undo.stdout and "namespace" not in undo.stdout
    assert [d["kind"] for d in cp.items(token)] == ["Namespace"]
    assert cp.call("POST", "/v1/apply", token, json={"resources": [hook("again")]}
                   ).status_code == 200
    # The admin's rollback may go all the way.
    r = cp.call("POST", "/v1/rollback", json={"namespace": "acme", "to_revision": 0})
    assert r.status_code == 200, r.text
    assert cp.items() == []


def test_tenant_rollback_is_held_to_the_tenant_rules(cp: Cp) -> None:
    filer = hook("filer", steps=[{"module": "log"},
                                 {"module": "file", "config": {"path": "/tmp/wh.log"}}])
    envy = conn("envy", "acme", {"X-Vault": "{$VAULT_ADDR}"})
    admin_rev = cp.apply([ns("acme"), filer, envy])["revision"]
    cp.apply([hook("filer"), conn("envy", "acme", {"X-Key": "{$vault:acme/api#key}"})])
    token = cp.token("acme")
    before = cp.items()

    undo = cp.whctl("rollout", "undo", "-n", "acme", "--to-revision", str(admin_rev),
                    token=token)
    assert undo.returncode == 1
    assert f"revision {admin_rev}: Webhook/acme/filer" in undo.stderr
    assert "spec.chain.steps[1]" in undo.stderr
    assert f"revision {admin_rev}: Connection/acme/envy" in undo.stderr
    assert "spec.headers" in undo.stderr
    assert cp.items() == before  # nothing changed

    # The same rollback by the admin restores the admin's content, as the admin wrote it.
    r = cp.call("POST", "/v1/rollback", json={"namespace": "acme", "to_revision": admin_rev})
    assert r.status_code == 200, r.text
    restored = {d["metadata"]["name"]: d for d in cp.items(kind="Webhook")}
    assert restored["filer"]["spec"]["chain"]["steps"][1]["module"] == "file"
    assert "sandbox" not in restored["filer"]["metadata"]


def test_tenant_writes_are_stamped_and_round_trip_unchanged(cp: Cp) -> None:
    cp.apply([ns("acme")])
    token = cp.token("acme")
    first = cp.apply([hook("mine")], token)["revision"]
    [doc] = cp.items(token, kind="Webhook")
    assert doc["metadata"]["sandbox"] is True

    dumped = cp.whctl("get", "webhooks", "-n", "acme", "-o", "yaml", token=token)
    assert dumped.returncode == 0, dumped.stderr
    path = cp.tmp / "mine.yaml"
    path.write_text(dumped.stdout)
    again = cp.whctl("apply", "-f", str(path), "-o", "json", token=token)
    assert again.returncode == 0, again.stderr
    assert [c["op"] for c in json.loads(again.stdout)["changes"]] == ["unchanged"]
    # A tenant cannot take the stamp off.
    unstamped = yaml.safe_load(dumped.stdout)
    unstamped["metadata"]["sandbox"] = False
    assert cp.apply([unstamped], token)["changes"][0]["op"] == "unchanged"
    # The admin re-applying it makes it the admin's.
    assert cp.apply([unstamped])["changes"][0]["op"] == "update"
    assert "sandbox" not in cp.items(kind="Webhook")[0]["metadata"]
    # The tenant's undo restores its own version, stamped again.
    r = cp.call("POST", "/v1/rollback", token, json={"namespace": "acme", "to_revision": first})
    assert r.status_code == 200, r.text
    assert cp.items(kind="Webhook")[0]["metadata"]["sandbox"] is True


def test_other_namespaces_are_refused_not_empty(cp: Cp) -> None:
    cp.apply([ns("acme"), ns("globex"), hook("a"), hook("g", "globex")])
    token = cp.token("acme")
    for path in ("/v1/resources", "/v1/history"):
        r = cp.call("GET", path, token, params={"namespace": "globex"})
        assert r.status_code == 403, (path, r.text)
        assert "globex" in r.json()["detail"]
    assert cp.call("GET", "/v1/resources", token, params={"namespace": "acme"}).status_code == 200
    for args in (("get", "webhooks", "-n", "globex"), ("rollout", "history", "-n", "globex"),
                 ("get", "webhooks", "g", "-n", "globex")):
        result = cp.whctl(*args, token=token)
        assert result.returncode == 1, (args, result.stdout)
        assert "may not" in result.stderr and result.stdout == ""


def test_history_and_fleet_carry_nothing_of_other_namespaces(cp: Cp) -> None:
    cp.apply([ns("acme"), ns("globex")])
    shared = cp.apply([hook("a"), hook("g", "globex")],
                      message="rotate globex's secret at globex/gh")["revision"]
    own = cp.apply([hook("b")], message="acme only")["revision"]
    token = cp.token("acme")

    history = cp.call("GET", "/v1/history", token)
    assert history.status_code == 200
    assert "globex" not in history.text
    records = {h["revision"]: h for h in history.json()["items"]}
    assert records[own]["message"] == "acme only" and records[own]["author"] == "admin"
    assert records[shared]["message"] != "rotate globex's secret at globex/gh"
    assert [c["name"] for c in records[shared]["changes"]] == ["a"]
    record = cp.call("GET", f"/v1/history/{shared}", token)
    assert record.status_code == 200 and "globex" not in record.text
    only_globex = cp.apply([hook("g2", "globex")])["revision"]
    assert cp.call("GET", f"/v1/history/{only_globex}", token).status_code == 403

    # A gateway's heartbeat, as it writes it into the directory store.
    gateways = Path(cp.proc.store.removeprefix("file:")) / "gateways"
    gateways.mkdir(exist_ok=True)
    (gateways / "gw-1.json").write_text(json.dumps({
        "id": "gw-1", "revision": own, "version": "1", "health": "degraded",
        "heartbeat": time.time(),
        "last_error": "Webhook/globex/g: vault secret globex/gh#secret: not found",
        "errors": {"Webhook/globex/g": "vault secret globex/gh#secret: not found",
                   "Webhook/acme/a": "vault secret acme/gh#secret: not found"},
    }))
    for path in ("/v1/gateways", "/v1/rollout/status"):
        r = cp.call("GET", path, token)
        assert r.status_code == 200 and "globex" not in r.text, (path, r.text)
    [gw] = cp.call("GET", "/v1/gateways", token).json()["items"]
    assert gw["errors"] == {"Webhook/acme/a": "vault secret acme/gh#secret: not found"}
    assert gw["id"] == "gw-1" and gw["revision"] == own and gw["last_error"] is None
    [full] = cp.call("GET", "/v1/gateways").json()["items"]
    assert "Webhook/globex/g" in full["errors"]  # the admin sees everything

"""End to end: whctl -> control plane -> store (etcd or directory) -> gateway processes."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cli.processes import ControlPlaneProcess, GatewayProcess, github_signature, start_all
from cli.servers import EtcdServer, VaultServer

SECRET_A, SECRET_B = "secret-version-a", "secret-version-b"
GW_ENV = {"SECRET_A": SECRET_A, "SECRET_B": SECRET_B}


def ns(name: str) -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Namespace", "metadata": {"name": name}}


def hook(name: str, secret: str = "{$SECRET_A}", namespace: str = "acme") -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Webhook",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"verify": {"scheme": "github", "secret": secret},
                     "chain": {"steps": [{"module": "log"}]}}}


def write(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def post(client: httpx.Client, url: str, secret: str) -> httpx.Response:
    body = b'{"zen": "keep it logically awesome"}'
    return client.post(url, content=body, headers={
        "content-type": "application/json",
        "x-hub-signature-256": github_signature(secret, body)})


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


def test_apply_reaches_two_gateways_and_rollout_status(
    store_url: str, tmp_path: Path, procs: list[Any]
) -> None:
    cp = ControlPlaneProcess(store_url).start()
    procs.append(cp)
    cp.whctl("apply", "-f", str(write(tmp_path / "ns.yaml", [ns("acme")])), check=True)
    gws = [GatewayProcess(store_url, GW_ENV) for _ in range(2)]
    procs.extend(gws)
    start_all(gws)
    cfg = write(tmp_path / "hooks.yaml", [hook("push")])
    applied = cp.whctl("apply", "-f", str(cfg), "-o", "json", check=True)
    revision = json.loads(applied.stdout)["revision"]
    status = cp.whctl("rollout", "status", "--revision", str(revision), "--timeout", "20s")
    assert status.returncode == 0, status.stdout + status.stderr
    with httpx.Client(timeout=5) as c:
        for gw in gws:
            r = post(c, f"{gw.url}/webhook/acme/push", SECRET_A)
            assert r.status_code == 200, r.text
            assert int(r.headers["x-whplane-revision"]) >= revision
    listed = cp.whctl("gateways", "-o", "json", check=True)
    assert {g["id"] for g in json.loads(listed.stdout)} >= {g.gateway_id for g in gws}
    # dry-run writes nothing; diff tells with its exit code
    changed = write(tmp_path / "changed.yaml", [hook("push"), hook("new")])
    assert cp.whctl("diff", "-f", str(cfg)).returncode == 0
    assert cp.whctl("diff", "-f", str(changed)).returncode == 1
    assert cp.whctl("diff", "-f", str(tmp_path / "missing.yaml")).returncode == 2
    cp.whctl("apply", "-f", str(changed), "--dry-run", check=True)
    assert cp.whctl("diff", "-f", str(changed)).returncode == 1


def test_large_apply_is_never_served_mixed(
    store_url: str, tmp_path: Path, procs: list[Any]
) -> None:
    n = 1000
    cp = ControlPlaneProcess(store_url).start()
    procs.append(cp)
    names = [f"h{i:04d}" for i in range(n)]
    v1 = write(tmp_path / "v1.yaml", [ns("acme")] + [hook(x) for x in names])
    cp.whctl("apply", "-f", str(v1), check=True)
    gws = [GatewayProcess(store_url, GW_ENV) for _ in range(2)]
    procs.extend(gws)
    start_all(gws)
    v2 = write(tmp_path / "v2.yaml", [ns("acme")] + [hook(x, "{$SECRET_B}") for x in names])
    stop = threading.Event()
    seen: list[tuple[int, int, str]] = []

    def traffic(gw: GatewayProcess) -> None:
        rng = random.Random(gw.port)
        with httpx.Client(timeout=5) as c:
            while not stop.is_set():
                name = rng.choice(names)
                r = post(c, f"{gw.url}/webhook/acme/{name}", SECRET_B)
                seen.append((int(r.headers["x-whplane-revision"]), r.status_code, name))

    threads = [threading.Thread(target=traffic, args=(g,)) for g in gws]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        out = cp.whctl("apply", "-f", str(v2), "-o", "json", check=True)
        revision = json.loads(out.stdout)["revision"]
        assert cp.whctl("rollout", "status", "--revision", str(revision),
                        "--timeout", "30s").returncode == 0
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    before = [s for s in seen if s[0] < revision]
    after = [s for s in seen if s[0] >= revision]
    assert before and after, (len(before), len(after))
    # Version B's secret is refused by every snapshot before the apply, accepted by every one
    # after it: any other answer would be a snapshot mixing the two versions.
    assert all(code == 401 for _, code, _ in before), [s for s in before if s[1] != 401][:5]
    assert all(code == 200 for _, code, _ in after), [s for s in after if s[1] != 200][:5]


def test_vault_secret_plaintext_never_leaks(
    etcd_server: EtcdServer, etcd_prefix: str, vault_server: VaultServer, vault_path: str,
    tmp_path: Path, procs: list[Any],
) -> None:
    plaintext = "S3CR3T-plaintext-7f3a9c"
    vault_server.client().secrets.kv.v2.create_or_update_secret(
        path=f"{vault_path}/github", secret={"webhook_secret": plaintext}, mount_point="secret")
    store_url = f"etcd://{etcd_server.endpoint}{etcd_prefix}"
    cp = ControlPlaneProcess(store_url).start()
    procs.append(cp)
    vault_env = {"VAULT_ADDR": vault_server.addr, "VAULT_TOKEN": vault_server.token}
    gw = GatewayProcess(store_url, {**vault_env, "WH_LOG_LEVEL": "debug"}).start()
    procs.append(gw)
    ref = f"{{$vault:{vault_path}/github#webhook_secret}}"
    cfg = write(tmp_path / "v.yaml", [ns("acme"), hook("push", ref)])
    outputs = [cp.whctl("apply", "-f", str(cfg), "-o", "json", check=True)]
    revision = json.loads(outputs[0].stdout)["revision"]
    outputs.append(cp.whctl("rollout", "status", "--revision", str(revision),
                            "--timeout", "20s", check=True))
    with httpx.Client(timeout=5) as c:
        r = post(c, f"{gw.url}/webhook/acme/push", plaintext)
        assert r.status_code == 200, r.text  # the gateway did resolve it
        answers = [r.text, c.get(f"{gw.url}/status").text, c.get(f"{gw.url}/metrics").text]
        answers += [post(c, f"{gw.url}/webhook/acme/push", "wrong").text]
        h = {"authorization": f"Bearer {cp.admin_token}"}
        answers += [c.get(f"{cp.url}{p}", headers=h).text for p in (
            "/v1/resources", f"/v1/history/{revision}", "/v1/history", "/v1/gateways",
            "/v1/rollout/status")]
    for args in (("get", "webhooks", "-A", "-o", "yaml"), ("get", "webhooks", "-A"),
                 ("rollout", "history"), ("gateways",), ("diff", "-f", str(cfg))):
        outputs.append(cp.whctl(*args))
    texts = answers + [o.stdout + o.stderr for o in outputs]
    texts += [gw.log_path.read_text(errors="replace"), cp.log_path.read_text(errors="replace")]
    leaks = [t[:200] for t in texts if plaintext in t]
    assert not leaks, leaks

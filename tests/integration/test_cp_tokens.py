"""Namespace tokens through whctl and real control-plane processes, on both stores: create with
an expiry, list without secrets, revoke at once, and the bounded staleness across processes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.processes import ControlPlaneProcess
from cli.servers import EtcdServer
from control_plane.tokens import CACHE_S, digest

ADMIN = "admin-token-for-tokens"


@pytest.fixture(params=["etcd", "dir"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "etcd":
        etcd: EtcdServer = request.getfixturevalue("etcd_server")
        prefix: str = request.getfixturevalue("etcd_prefix")
        return f"etcd://{etcd.endpoint}{prefix}"
    return f"file:{tmp_path / 'store'}"


def status(cp: ControlPlaneProcess, token: str) -> int:
    return httpx.get(f"{cp.url}/v1/resources", headers={"authorization": f"Bearer {token}"}
                     ).status_code


def listed(cp: ControlPlaneProcess) -> tuple[str, list[dict[str, Any]]]:
    result = cp.whctl("tokens", "list", "-o", "json", check=True)
    return result.stdout, json.loads(result.stdout)


def test_create_list_revoke_expire(store_url: str) -> None:
    with ControlPlaneProcess(store_url, ADMIN) as cp:
        ns = {"apiVersion": "whplane/v1", "kind": "Namespace", "metadata": {"name": "acme"}}
        assert httpx.post(f"{cp.url}/v1/apply", json={"resources": [ns]},
                          headers={"authorization": f"Bearer {ADMIN}"}).status_code == 200
        created = cp.whctl("tokens", "create", "--namespace", "acme", "--expires", "30d",
                           check=True)
        token = created.stdout.strip()
        assert created.stdout == token + "\n" and token.startswith("whp_")
        assert cp.whctl("get", "namespaces", token=token).returncode == 0

        text, items = listed(cp)
        [info] = items
        assert set(info) >= {"id", "namespace", "created", "expires", "last_used"}
        assert info["namespace"] == "acme" and info["last_used"] is not None
        assert info["expires"] == pytest.approx(info["created"] + 30 * 86400, abs=5)
        assert token not in text and digest(token) not in text
        table = cp.whctl("tokens", "list", check=True).stdout
        assert info["id"] in table and "acme" in table and token not in table
        assert cp.whctl("tokens", "list", token=token).returncode == 1  # admin only

        revoked = cp.whctl("tokens", "revoke", info["id"])
        assert revoked.returncode == 0, revoked.stderr
        # At once, although this process had just cached the token.
        assert status(cp, token) == 401
        refused = cp.whctl("get", "webhooks", token=token)
        assert refused.returncode == 1 and "401" not in refused.stdout
        assert "refused the token" in refused.stderr
        assert listed(cp)[1] == []
        again = cp.whctl("tokens", "revoke", info["id"])
        assert again.returncode == 1 and "no token with id" in again.stderr

        short = cp.whctl("tokens", "create", "-n", "acme", "--expires", "1s", check=True)
        assert status(cp, short.stdout.strip()) == 200
        time.sleep(1.2)
        assert status(cp, short.stdout.strip()) == 401


def test_revocation_reaches_other_processes_within_the_cache_time(store_url: str) -> None:
    with ControlPlaneProcess(store_url, ADMIN) as one, ControlPlaneProcess(store_url, ADMIN) as two:
        token = one.whctl("tokens", "create", "-n", "acme", check=True).stdout.strip()
        assert status(two, token) == 200  # cached by the other process now
        [info] = listed(one)[1]
        one.whctl("tokens", "revoke", info["id"], check=True)
        revoked_at = time.monotonic()
        assert status(one, token) == 401
        while status(two, token) != 401:
            assert time.monotonic() - revoked_at < CACHE_S + 2, "revoked token still accepted"
            time.sleep(0.2)

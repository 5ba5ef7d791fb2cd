"""coilmq on loopback: a small STOMP broker (queues and topics in memory)."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path

from cli.servers.ports import LOOPBACK, free_port
from cli.servers.process import START_TIMEOUT, ServerProcess, find_binary

# STOMP 1.1: coilmq accepts a 1.2 CONNECT only when its host header is the machine's FQDN.
_CONNECT = b"CONNECT\naccept-version:1.1\nhost:/\n\n\x00"
_DISCONNECT = b"DISCONNECT\n\n\x00"


class CoilmqServer(ServerProcess):
    """``coilmq`` (from the coilmq wheel), a STOMP 1.0-1.2 broker without authentication.

    A STOMP 1.2 client must send the machine's FQDN (``socket.getfqdn()``) as its ``host``
    header (the virtual host): coilmq refuses any other.
    """

    kind = "coilmq"
    binary = "coilmq"

    def __init__(
        self,
        port: int | None = None,
        *,
        extra_args: Sequence[str] = (),
        base_dir: Path | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        super().__init__("coilmq", base_dir, start_timeout)
        self.port = port if port is not None else free_port()
        self.extra_args = tuple(extra_args)

    @property
    def url(self) -> str:
        return f"stomp://{LOOPBACK}:{self.port}"

    def _argv(self) -> list[str]:
        return [find_binary(self.binary), "-b", LOOPBACK, "-p", str(self.port), *self.extra_args]

    def _healthy(self) -> bool:
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=1.0) as sock:
                sock.sendall(_CONNECT)
                answer = sock.recv(64).startswith(b"CONNECTED")
                sock.sendall(_DISCONNECT)
                return answer
        except OSError:
            return False

    def _describe(self) -> str:
        return f"coilmq@{LOOPBACK}:{self.port}"

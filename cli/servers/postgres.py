"""PostgreSQL on loopback, from the binaries the pgserver wheel ships (PostgreSQL 16).

Only the wheel's ``initdb`` and ``postgres`` are used, not its Python layer: that one keeps
servers alive across processes, adds a system user when run as root and takes a lock in the
user's runtime directory, none of which a throwaway test server wants.

PostgreSQL refuses to run as root. Under root (CI containers) the server runs as ``nobody``:
its data directory is handed to that user and its base directory made traversable.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from cli.servers.errors import BinaryNotFoundError, ServerStartError
from cli.servers.ports import LOOPBACK
from cli.servers.process import START_TIMEOUT, PortServer, child_env

USER = "postgres"
DATABASE = "test"
_UNPRIVILEGED_USER = "nobody"
_PROTOCOL_3 = 196608
_TERMINATE = b"X\x00\x00\x00\x04"

# Drops root for the server and keeps it dying with its parent: the kernel clears the
# parent-death signal that ``registry`` set when the credentials change, so it is set again.
_AS_USER = """
import ctypes, os, sys
uid, gid = int(sys.argv[1]), int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
death = ctypes.c_int(0)
libc.prctl(2, ctypes.byref(death))
parent = os.getppid()
os.setgroups([])
os.setgid(gid)
os.setuid(uid)
if death.value:
    libc.prctl(1, death.value)
    if os.getppid() != parent:
        os._exit(1)
os.execv(sys.argv[3], sys.argv[3:])
"""


def postgres_bin_dir() -> Path:
    """The directory holding ``postgres`` and ``initdb``: the pgserver wheel's, else PATH's."""
    # find_spec, not import: importing pgserver creates a lock file in the user's runtime dir.
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "pginstall" / "bin"
        if (bundled / "postgres").is_file() and (bundled / "initdb").is_file():
            return bundled
    found = shutil.which("postgres")
    if found and shutil.which("initdb", path=str(Path(found).parent)):
        return Path(found).parent
    raise BinaryNotFoundError(
        "'postgres' and 'initdb' not found; install the pgserver wheel "
        "(pip install -e '.[servers]') or put PostgreSQL's bin directory on PATH"
    )


def _unprivileged_ids() -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as when this process is root, else None."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(_UNPRIVILEGED_USER)
    except KeyError:
        raise ServerStartError(
            f"PostgreSQL refuses to run as root and there is no {_UNPRIVILEGED_USER!r} user "
            "to run it as"
        ) from None
    return entry.pw_uid, entry.pw_gid


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def ready_for_queries(host: str, port: int, user: str, database: str,
                      timeout: float = 1.0) -> bool:
    """Whether a trust login to ``database`` gets as far as ReadyForQuery.

    Earlier answers are not enough: a starting server refuses logins with an error, and
    AuthenticationOk comes before the database is looked up.
    """
    params = f"user\0{user}\0database\0{database}\0\0".encode()
    startup = struct.pack(">ii", 8 + len(params), _PROTOCOL_3) + params
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(startup)
            while True:
                kind, size = struct.unpack(">ci", _read_exactly(sock, 5))
                body = _read_exactly(sock, size - 4)
                if kind == b"Z":
                    sock.sendall(_TERMINATE)
                    return True
                if kind == b"E" or (kind == b"R" and body[:4] != b"\x00\x00\x00\x00"):
                    return False  # an error, or a password asked for
    except (OSError, struct.error):
        return False


class PostgresServer(PortServer):
    """One PostgreSQL cluster with trust authentication for user ``postgres`` on loopback TCP
    only (no Unix socket), holding an empty database ``test``.

    The data directory is kept under ``base_dir`` for the object's life, so restart() and
    kill() + start() keep the data. fsync is off: a test server never needs to survive a crash
    of the machine.
    """

    kind = "postgres"
    binary = "postgres"

    def __init__(
        self,
        port: int | None = None,
        *,
        extra_args: Sequence[str] = (),
        base_dir: Path | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        super().__init__(port, extra_args=extra_args, base_dir=base_dir,
                         start_timeout=start_timeout)
        self.data_dir = self.base_dir / "data"
        self._ids = _unprivileged_ids()

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@{LOOPBACK}:{self.port}/{DATABASE}"

    def _as_server_user(self, argv: list[str]) -> list[str]:
        if self._ids is None:
            return argv
        uid, gid = self._ids
        return [sys.executable, "-c", _AS_USER, str(uid), str(gid), *argv]

    def _prepare(self) -> None:
        if (self.data_dir / "PG_VERSION").is_file():
            return
        bin_dir = self._bin_dir()
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._ids is not None:
            os.chown(self.data_dir, *self._ids)
            self.base_dir.chmod(self.base_dir.stat().st_mode | 0o111)
        self._run_once([str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", USER,
                        "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync",
                        "--no-instructions"], stdin=None)
        # Single-user mode: creating the database needs no listening server.
        self._run_once([str(bin_dir / "postgres"), "--single", "-D", str(self.data_dir),
                        "-c", "fsync=off", "postgres"],
                       stdin=f"CREATE DATABASE {DATABASE};\n".encode())

    def _bin_dir(self) -> Path:
        """Where the server user can run the binaries from. Run as another user, a copy of
        the installation in our directory: the venv may sit under a directory only root can
        enter (a checkout in a private temporary directory, say)."""
        bin_dir = postgres_bin_dir()
        if self._ids is None:
            return bin_dir
        install = bin_dir.parent
        # The wheel's binaries find their libraries at $ORIGIN/../../../pgserver.libs: the copy
        # keeps that layout (<base>/pgserver/pginstall and <base>/pgserver.libs).
        copy = self.base_dir / "pgserver" / "pginstall"
        if not copy.is_dir():
            shutil.copytree(install, copy, symlinks=True)
            libs = install.parent.parent / "pgserver.libs"
            if libs.is_dir():
                shutil.copytree(libs, self.base_dir / "pgserver.libs", symlinks=True)
        return copy / "bin"

    def _run_once(self, argv: list[str], stdin: bytes | None) -> None:
        try:
            done = subprocess.run(self._as_server_user(argv), input=stdin, capture_output=True,
                                  env=self._env(), cwd=self.base_dir, timeout=self.start_timeout,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise ServerStartError(f"{Path(argv[0]).name} timed out after "
                                   f"{self.start_timeout:.0f}s") from None
        output = (done.stdout + done.stderr).decode(errors="replace")
        # Single-user mode reports a failed statement on stderr and still exits 0.
        if done.returncode != 0 or "ERROR:" in output:
            raise ServerStartError(f"{Path(argv[0]).name} failed ({done.returncode}):\n"
                                   f"{output[-2000:]}")

    def _argv(self) -> list[str]:
        return self._as_server_user([
            str(self._bin_dir() / "postgres"),
            "-D", str(self.data_dir),
            "-p", str(self.port),
            "-c", f"listen_addresses={LOOPBACK}",
            "-c", "unix_socket_directories=",
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
            # Last, so they override the defaults above (the last -c of a setting wins).
            *self.extra_args,
        ])  # fmt: skip

    def _env(self) -> dict[str, str]:
        # libpq and the server read PGDATA, PGPORT, PGHOST ... as settings.
        return child_env(("PG",), LC_ALL="C")

    def _healthy(self) -> bool:
        return ready_for_queries(LOOPBACK, self.port, USER, DATABASE)

    def _describe(self) -> str:
        return f"postgres@{LOOPBACK}:{self.port}"

    def _data_location(self) -> Path | None:
        return self.data_dir

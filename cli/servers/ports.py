"""Loopback ports for servers started here, and a probe for servers already running."""

from __future__ import annotations

import atexit
import fcntl
import os
import socket
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

from cli.servers.errors import ServerError

LOOPBACK = "127.0.0.1"

_lock = threading.Lock()
# Ports handed out by this process are never handed out again: a server that is stopped keeps
# its ports for restart(), and two servers picked before either starts must not collide.
_reserved_ports: set[int] = set()

# The same promise across processes (parallel test workers, a stack next to a test run): each
# process writes the ports it handed out to this file, under an exclusive lock, and the others
# skip them while it lives. Entries of processes that are gone are dropped at the next pick.
SHARED_RESERVATIONS = Path(tempfile.gettempdir()) / "whplane-reserved-ports"


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _parse(text: str) -> dict[int, int]:
    """``port pid`` lines -> {port: pid}; anything else is ignored."""
    owners: dict[int, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
            owners[int(fields[0])] = int(fields[1])
    return owners


def _update_shared(claim: Iterable[int], release: bool = False) -> bool:
    """Claim ``claim`` for this process in the shared file (or release this process's ports).

    False when a live process holds one of them. A shared file that cannot be used (another
    user's, a read-only temp dir) never blocks a pick: the ports count as claimed.
    """
    me = os.getpid()
    try:
        fd = os.open(SHARED_RESERVATIONS, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        return True
    with os.fdopen(fd, "r+", encoding="ascii") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
            owners = _parse(f.read())
            alive = {pid: pid == me or _alive(pid) for pid in set(owners.values())}
            owners = {port: pid for port, pid in owners.items() if alive[pid]}
            if release:
                owners = {port: pid for port, pid in owners.items() if pid != me}
            else:
                wanted = list(claim)
                if any(owners.get(port, me) != me for port in wanted):
                    return False
                owners.update(dict.fromkeys(wanted, me))
            f.seek(0)
            f.truncate()
            f.write("".join(f"{port} {pid}\n" for port, pid in sorted(owners.items())))
        except OSError:
            return True
    return True


@atexit.register
def _release_shared() -> None:
    with _lock:
        held = bool(_reserved_ports)
    if held:
        _update_shared((), release=True)


def free_port(consecutive: int = 1) -> int:
    """A loopback port (plus the ``consecutive - 1`` following ones) that is free right now.

    Free means bindable now and never returned before by this process nor by another live one
    (see SHARED_RESERVATIONS). A process that does not use this function may still grab it
    before the server binds it; that is the usual, rarely hit, race.
    """
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port: int = sock.getsockname()[1]
        ports = range(port, port + consecutive)
        if ports[-1] > 65535:
            continue
        with _lock:
            if any(p in _reserved_ports for p in ports):
                continue
            if not all(_bindable(p) for p in ports[1:]):
                continue
            if not _update_shared(ports):
                continue
            _reserved_ports.update(ports)
        return port
    raise ServerError(f"could not find {consecutive} free consecutive loopback port(s)")


def listening(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections at ``host:port`` right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False

"""Loopback ports for servers started here, and a probe for servers already running."""

from __future__ import annotations

import socket
import threading

from cli.servers.errors import ServerError

LOOPBACK = "127.0.0.1"

_lock = threading.Lock()
# Ports handed out by this process are never handed out again: a server that is stopped keeps
# its ports for restart(), and two servers picked before either starts must not collide.
_reserved_ports: set[int] = set()


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_port(consecutive: int = 1) -> int:
    """A loopback port (plus the ``consecutive - 1`` following ones) that is free right now.

    Free means bindable now and never returned before by this process. Another process may
    still grab it before the server binds it; that is the usual, rarely hit, race.
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

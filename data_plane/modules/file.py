"""`file` step: append the webhook as one JSON line to `config.path`.

The line is the `redis_publish` envelope. Appends to one path are serialised by a lock (from
`Clients`) and each line goes out in a single `O_APPEND` write, so lines never interleave; the
blocking I/O runs in a worker thread, off the event loop. No fsync: the file is a local
record, and the page cache survives a gateway crash (not a machine crash).

A missing directory or a permission problem is a config problem (not retried); other I/O
errors (disk full, ...) are retried.
"""

from __future__ import annotations

import asyncio
import os

from data_plane.clients import Clients
from data_plane.delivery import Delivery
from data_plane.errors import DeliveryError, destination_of
from data_plane.modules.redis_publish import envelope_json
from providers.snapshot import Endpoint
from providers.step_spec import FileStep

_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
_MODE = 0o640
_CONFIG_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


async def run(step: FileStep, endpoint: Endpoint, delivery: Delivery, clients: Clients) -> None:
    line = envelope_json(delivery) + b"\n"
    path = step.config.path
    try:
        async with clients.file_lock(path):
            await asyncio.to_thread(_append, path, line)
    except _CONFIG_ERRORS as exc:
        raise DeliveryError(
            f"cannot write ({type(exc).__name__})",
            destination=destination_of(step, endpoint.connections),
            retryable=False,
        ) from None
    except OSError as exc:
        raise DeliveryError(
            f"write failed ({type(exc).__name__}: {exc.strerror})",
            destination=destination_of(step, endpoint.connections),
        ) from None


def _append(path: str, line: bytes) -> None:
    try:
        fd = os.open(path, _FLAGS, _MODE)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)  # a first write to a new dir
        fd = os.open(path, _FLAGS, _MODE)
    try:
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)

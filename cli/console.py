"""Consoles for the `whplane` commands, made when something is printed: importing rich costs
~30 ms of every start, a gateway's included, and servers print through `logging` anyway."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


def stdout(**options: Any) -> Console:
    from rich.console import Console

    return Console(**options)


def stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True)

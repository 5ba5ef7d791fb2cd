"""The event loop of a long-running command (`whplane worker`, `whplane connect`): uvloop where
it is installed, as uvicorn's `loop="auto"` picks for the gateway, else asyncio's own. The
worker's deliveries are network round trips end to end, and uvloop's transports cost a
fraction of asyncio's selector loop per read and write."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)

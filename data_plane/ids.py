"""Ids for requests and deliveries: unique, unguessable enough to be opaque, and cheap.

`uuid4()` costs a `getrandom` syscall per id, a measurable part of a request at tens of
thousands per second. A per-process random prefix plus a counter is just as unique.
"""

from __future__ import annotations

import itertools
import os


class IdSource:
    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._pid = os.getpid()
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        if os.getpid() != self._pid:  # a forked worker must not repeat its parent's ids
            self.__init__()  # type: ignore[misc]
        return f"{self._prefix}{next(self._counter):016x}"


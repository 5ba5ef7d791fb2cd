"""Ids for requests and deliveries: unique, unguessable enough to be opaque, and cheap.

`uuid4()` costs a `getrandom` syscall per id, a measurable part of a request at tens of
thousands per second. A per-process random prefix plus a counter is just as unique.
"""

from __future__ import annotations

import itertools
import os
import weakref


class IdSource:
    def __init__(self) -> None:
        self._reset()
        # A forked worker must not repeat its parent's ids. Registered through a weak
        # reference: the hook outlives the source, and must not keep it alive.
        ref = weakref.ref(self)

        def after_fork() -> None:
            source = ref()
            if source is not None:
                source._reset()

        os.register_at_fork(after_in_child=after_fork)

    def _reset(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"

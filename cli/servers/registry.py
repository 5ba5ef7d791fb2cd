"""Every server process and temporary directory this process started, so none outlives it.

Each process runs in its own session so the whole group can be signalled, is registered here so
an ``atexit`` hook kills leftovers, and (when started from the main thread on Linux) dies with
the parent even if the parent is SIGKILLed.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

_lock = threading.Lock()
_live: dict[int, subprocess.Popen[bytes]] = {}
_owned_dirs: set[Path] = set()


def register(proc: subprocess.Popen[bytes]) -> None:
    with _lock:
        _live[proc.pid] = proc


def unregister(proc: subprocess.Popen[bytes]) -> None:
    with _lock:
        _live.pop(proc.pid, None)


def signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send ``sig`` to the process group of ``proc``; nothing if it already exited."""
    # poll() first: an unreaped process keeps its pid, so the group id cannot have been reused.
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def make_owned_dir(kind: str) -> Path:
    """A new temporary directory, deleted at exit if nobody removed it before."""
    path = Path(tempfile.mkdtemp(prefix=f"whplane-{kind}-"))
    with _lock:
        _owned_dirs.add(path)
    return path


def remove_owned_dir(path: Path) -> None:
    with _lock:
        _owned_dirs.discard(path)
    shutil.rmtree(path, ignore_errors=True)


@atexit.register
def _kill_leftovers() -> None:
    with _lock:
        procs = list(_live.values())
        dirs = list(_owned_dirs)
        _live.clear()
        _owned_dirs.clear()
    for proc in procs:
        log.warning("killing leftover server pid %d", proc.pid)
        signal_group(proc, signal.SIGKILL)
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    for path in dirs:
        shutil.rmtree(path, ignore_errors=True)


_PR_SET_PDEATHSIG = 1
_libc: ctypes.CDLL | None = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        _libc = None


def die_with_parent_hook() -> Callable[[], None] | None:
    """A preexec_fn asking the kernel to SIGKILL the child when this thread's process dies.

    atexit never runs when the test runner itself is SIGKILLed (CI timeouts), so this is what
    really guarantees no orphans. Linux delivers it when the *thread* that forked exits, hence
    only used from the main thread; servers started from other threads rely on atexit alone.
    """
    if _libc is None or threading.current_thread() is not threading.main_thread():
        return None
    libc = _libc
    parent = os.getpid()

    def hook() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return hook

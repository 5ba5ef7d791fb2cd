"""etcd on loopback: one member (``EtcdServer``) or a new cluster of several (``EtcdCluster``)."""

from __future__ import annotations

import base64
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from cli.servers import registry
from cli.servers.errors import ServerError
from cli.servers.ports import LOOPBACK, free_port
from cli.servers.process import (
    POLL_INTERVAL,
    START_TIMEOUT,
    STOP_TIMEOUT,
    ServerProcess,
    child_env,
    find_binary,
    http_json,
)
from providers.etcd_conn import prefix_range_end


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


def _etcdctl_env() -> dict[str, str]:
    return child_env(("ETCDCTL_", "ETCD_"), ETCDCTL_API="3")


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


class EtcdServer(ServerProcess):
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
            "deleterange", {"key": _b64(raw), "range_end": _b64(prefix_range_end(raw))}
        )
        return int(reply.get("deleted", 0))

    def _gateway(self, op: str, body: dict[str, str]) -> dict[str, Any]:
        try:
            _, reply = http_json("POST", f"{self.url}/v3/kv/{op}", body, timeout=10.0)
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
        return child_env(("ETCD_", "ETCDCTL_"))

    def _healthy(self) -> bool:
        try:
            status, body = http_json("GET", f"{self.url}/health", timeout=1.0)
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
        self.base_dir = registry.make_owned_dir("etcd-cluster")
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
            m.launch()
        deadline = time.monotonic() + self.start_timeout
        try:
            for m in pending:
                m.await_healthy(deadline)
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
            time.sleep(POLL_INTERVAL)

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
        registry.remove_owned_dir(self.base_dir)

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



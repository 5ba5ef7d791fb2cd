"""What every scenario shares: a narrated `Story` with ✓/✗ checks that owns (and always stops)
every process it starts, bounded waits, signed webhook posts, whctl with the token in the
environment, and `Sink`, an HTTP destination that records what it receives.

A scenario is `run("title", tell)` where `tell(story)` does the work; `run` turns the outcome
into the exit code (0: every check passed) and cleans up on any exit: success, a failed check,
an exception, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TypeVar

import httpx
import yaml

from cli.processes import ROOT, ControlPlaneProcess, GatewayProcess, github_signature
from cli.sink import Sink

T = TypeVar("T")
CM = TypeVar("CM", bound=AbstractContextManager[Any])

OK, FAIL = "✓", "✗"
INDENT = "   "
LOG_LINES = 20


class Aborted(Exception):
    """A check the rest of the story depends on failed: telling more would only add noise."""


class Story:
    def __init__(self, title: str) -> None:
        self.title = title
        self.passed = 0
        self.failures: list[str] = []
        self.interrupted = False
        self._step = 0
        self._stack = ExitStack()
        self._logs: list[tuple[str, Callable[[], str]]] = []
        # Loopback only: a proxy from the environment must never see these calls.
        self.http = httpx.Client(timeout=5.0, trust_env=False)
        self._stack.callback(self.http.close)

    # -- narration --------------------------------------------------------------------------

    def step(self, text: str) -> None:
        self._step += 1
        print(f"\n{self._step}. {text}", flush=True)

    def say(self, text: str) -> None:
        print(f"{INDENT}{text}", flush=True)

    def show(self, text: str) -> None:
        """Command output, set off from the narration."""
        for line in text.rstrip().splitlines():
            print(f"{INDENT}│ {line}", flush=True)

    def check(self, ok: object, text: str, detail: object = "") -> bool:
        if ok:
            self.passed += 1
            print(f"{INDENT}{OK} {text}", flush=True)
            return True
        self.failures.append(text)
        print(f"{INDENT}{FAIL} {text}" + (f"  [{detail}]" if detail != "" else ""), flush=True)
        return False

    def require(self, ok: object, text: str, detail: object = "") -> None:
        """A check the rest of the story builds on: stop here if it fails."""
        if not self.check(ok, text, detail):
            raise Aborted(text)

    # -- things the story owns (stopped in reverse order by close()) --------------------------

    def tempdir(self, name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"whplane-scenario-{name}-"))
        self._stack.callback(shutil.rmtree, path, ignore_errors=True)
        return path

    def server(self, server: CM) -> CM:
        """Enter a cli.servers server (started and healthy on return; closed at the end)."""
        self._stack.enter_context(server)
        tail = getattr(server, "log_tail", None)
        if callable(tail):
            self._logs.append((repr(server), tail))
        return server

    def gateway(
        self,
        config: str,
        env: Mapping[str, str] | None = None,
        *,
        gateway_id: str | None = None,
        command: str = "gateway",
        start: bool = True,
    ) -> GatewayProcess:
        gw = GatewayProcess(config, env, gateway_id=gateway_id, command=command)
        # Registered before it starts: a gateway that never gets ready is still stopped.
        self._stack.callback(_dispose_gateway, gw)
        self._logs.append((f"{command} {gw.gateway_id}", gw.log_tail))
        if start:
            gw.start()
        return gw

    def start_all(self, gateways: Iterable[GatewayProcess], timeout: float = 20) -> None:
        """Launch several gateways at once, then wait for each: faster than one by one."""
        gws = list(gateways)
        for gw in gws:
            gw.start(wait_ready=False)
        for gw in gws:
            gw.wait_ready(timeout)

    def control_plane(self, store: str) -> ControlPlaneProcess:
        cp = ControlPlaneProcess(store)
        self._stack.callback(_dispose_control_plane, cp)
        self._logs.append(("control plane", lambda: _tail(cp.log_path)))
        return cp.start()

    def sink(self, status: int = 200, delay_s: float = 0.0) -> Sink:
        return self._stack.enter_context(Sink(status, delay_s))

    def close(self) -> None:
        self._stack.close()

    def dump_logs(self) -> None:
        for name, tail in self._logs:
            try:
                text = tail()
            except Exception as exc:  # a log that cannot be read must not hide the others
                text = f"(log unreadable: {exc})"
            if text.strip():
                print(f"\n--- last lines of {name} ---")
                print("\n".join(text.splitlines()[-LOG_LINES:]))

    # -- actions ----------------------------------------------------------------------------

    def whctl(
        self, cp: ControlPlaneProcess, *args: str, token: str | None = None, quiet: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run whctl against `cp`; the token travels in WHCTL_TOKEN, never on the command line."""
        who = "" if token is None else " (tenant token)"
        if not quiet:
            shown = shlex.join(a.replace(f"{ROOT}/", "") for a in args)
            self.say(f"$ whctl {shown}{who}")
        result = cp.whctl(*args, token=token)
        if not quiet:
            self.show(result.stdout + result.stderr)
        return result

    def whplane(
        self, *args: str, env: Mapping[str, str] | None = None, quiet: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run a `whplane` command (e.g. `dlq list`) to completion."""
        if not quiet:
            self.say(f"$ whplane {shlex.join(args)}")
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("WH_", "VAULT_"))}
        # Wide enough for rich's tables to show whole ids and errors in the story's output.
        clean["COLUMNS"] = "160"
        result = subprocess.run([sys.executable, "-m", "cli.whplane", *args], cwd=ROOT,
                                env={**clean, **(env or {})}, capture_output=True, text=True,
                                timeout=60)
        if not quiet:
            self.show(result.stdout + result.stderr)
        return result

    def post(self, url: str, secret: str, body: bytes = b'{"action": "opened"}') -> httpx.Response:
        """A webhook signed the way GitHub signs it."""
        return self.http.post(url, content=body, headers={
            "content-type": "application/json",
            "x-hub-signature-256": github_signature(secret, body)})

    def status(self, gw: GatewayProcess) -> dict[str, Any]:
        answer: dict[str, Any] = self.http.get(f"{gw.url}/status").json()
        return answer

    def wait_status(
        self, gw: GatewayProcess, ok: Callable[[dict[str, Any]], object], timeout: float
    ) -> dict[str, Any] | None:
        """The gateway's /status once `ok(status)` holds; None if it does not within `timeout`."""

        def probe() -> dict[str, Any] | None:
            status = self.status(gw)
            return status if ok(status) else None

        return wait_for(probe, timeout)


def run(title: str, tell: Callable[[Story], None]) -> NoReturn:
    """Tell the story, clean up whatever happened, exit 0 if every check passed, else 1."""
    story = Story(title)
    started = time.monotonic()
    print(f"== {title} ==", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        tell(story)
    except Aborted:
        pass
    except KeyboardInterrupt:
        story.failures.append("interrupted")
        story.interrupted = True
        print(f"\n{FAIL} interrupted", flush=True)
    except Exception as exc:
        story.failures.append(f"unexpected error: {exc!r}")
        print(f"\n{FAIL} unexpected error:", flush=True)
        traceback.print_exc(file=sys.stdout)
    finally:
        # A second Ctrl-C must not cut the cleanup short and leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if story.failures and not story.interrupted:
            story.dump_logs()
        print("\ncleaning up", flush=True)
        try:
            story.close()
        except Exception as exc:  # every cleanup step ran; say which one failed
            story.failures.append(f"cleanup failed: {exc!r}")
            print(f"{FAIL} cleanup failed: {exc!r}", flush=True)
    elapsed = time.monotonic() - started
    if story.failures:
        print(f"\n{FAIL} {title}: {len(story.failures)} check(s) failed "
              f"({story.passed} passed) in {elapsed:.1f} s:")
        for text in story.failures:
            print(f"{INDENT}- {text}")
        sys.exit(1)
    print(f"\n{OK} {title}: all {story.passed} checks passed in {elapsed:.1f} s")
    sys.exit(0)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _dispose_gateway(gw: GatewayProcess) -> None:
    gw.stop(timeout=5)
    shutil.rmtree(gw.state_dir, ignore_errors=True)


def _dispose_control_plane(cp: ControlPlaneProcess) -> None:
    cp.stop()
    shutil.rmtree(cp.dir, ignore_errors=True)


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


# -- waiting ----------------------------------------------------------------------------------


def wait_for(probe: Callable[[], T], timeout: float, interval: float = 0.1) -> T | None:
    """Poll `probe` until it returns something truthy and return that; None after `timeout`.

    A probe that cannot connect (the thing is restarting) counts as "not yet".
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except (httpx.HTTPError, OSError, ValueError):
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


# -- config files -----------------------------------------------------------------------------


def load_docs(*paths: Path) -> list[dict[str, Any]]:
    return [d for p in paths for d in yaml.safe_load_all(p.read_text()) if d]


def write_atomically(path: Path, text: str) -> None:
    """Replace a file in one rename, the way an editor or a config tool should."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def json_list(text: str) -> list[dict[str, Any]]:
    """The objects of a JSON list a command printed (`-o json`); [] if it printed no list."""
    try:
        value = json.loads(text)
    except ValueError:
        return []
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def revision_of(answer: str) -> int:
    """The revision in `whctl apply -o json` / `rollout undo` output."""
    try:
        return int(json.loads(answer)["revision"])
    except (ValueError, KeyError, TypeError):
        for line in reversed(answer.splitlines()):
            if line.startswith("revision "):
                return int(line.split()[1])
        raise ValueError(f"no revision in {answer!r}") from None



"""`whplane up`: the local stack prints a working curl and whctl line, and Ctrl-C leaves no
process behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from cli.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def _free_block() -> int:
    """A base port whose next eleven are free too (`whplane up` takes port, port+10 and
    port+11), reserved like every port the test servers take, so a parallel test worker does
    not pick one of them meanwhile."""
    return free_port(consecutive=12)


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_up_serves_the_examples_and_stops_cleanly(tmp_path: Path) -> None:
    port = _free_block()
    data = tmp_path / "stack"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.whplane", "up", "--port", str(port), "--data-dir", str(data)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith(("WH_", "VAULT_"))},
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if "Ctrl-C stops everything" in line:
                break
        output = "\n".join(lines)
        curl = next(x.strip() for x in lines if x.strip().startswith("curl "))
        whctl = next(x.strip() for x in lines if "/whctl --server" in x)
        assert shutil.which("curl"), "curl is needed to run the printed line as a user would"
        r = subprocess.run(["bash", "-c", curl + " -w ' %{http_code}'"], capture_output=True,
                           text=True, timeout=30)
        assert r.stdout.endswith(" 200"), (r.stdout, r.stderr, output)
        listed = subprocess.run(["bash", "-c", whctl], capture_output=True, text=True,
                                timeout=30)  # as printed: the venv's whctl, by its path
        assert listed.returncode == 0, listed.stderr
        for name in ("github-push", "stripe-events", "github-ci"):
            assert name in listed.stdout
        assert _processes_mentioning(str(data)), "the stack's processes should be running"
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    time.sleep(0.5)
    assert proc.returncode == 0
    assert _processes_mentioning(str(data)) == [], "Ctrl-C left processes behind"

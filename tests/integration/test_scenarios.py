"""Every scenario (scenarios/<name>/) run as users run it, `python -m scenarios.<name>`, must exit
0. Each starts its own servers and processes; together they take about 30 s."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = [
    "live_reload",
    "tenants_on_etcd",
    "vault_rotation",
    "fleet_rollout",
    "store_outage",
    "async_dlq",
]
# Each finishes in under 10 s on an idle 2-core machine; the margin is for a loaded one.
TIMEOUT_S = 90
CLEANUP_S = 20

pytestmark = [pytest.mark.slow, pytest.mark.timeout(TIMEOUT_S + CLEANUP_S + 10)]


def test_every_scenario_is_listed() -> None:
    found = {p.parent.name for p in (ROOT / "scenarios").glob("*/__main__.py")}
    assert found == set(SCENARIOS)


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario(name: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", f"scenarios.{name}"], cwd=ROOT, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: the scenario then stops every process it started.
        proc.send_signal(signal.SIGTERM)
        try:
            output, _ = proc.communicate(timeout=CLEANUP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        pytest.fail(f"scenario {name} did not finish in {TIMEOUT_S} s:\n{output}")
    finally:
        if proc.poll() is None:  # interrupted by pytest-timeout or Ctrl-C
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(CLEANUP_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, f"scenario {name} exited {proc.returncode}:\n{output}"

"""Prints how many cases each fuzz target ran (and how they ended) at the end of the session."""

from __future__ import annotations

from typing import Any

from tests.fuzz.budget import FUZZ_EXAMPLES, PROFILE, TALLY


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TALLY:
        return
    tr = terminalreporter
    budget = f", {FUZZ_EXAMPLES} per target" if PROFILE == "fuzz" else ""
    tr.section(f"fuzz cases (profile {PROFILE}{budget})")
    total = 0
    for target, t in sorted(TALLY.items()):
        total += t.cases
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(t.outcomes.items()))
        tr.write_line(f"{target:<28} {t.cases:>7} cases {t.seconds:>8.1f} s   {outcomes}")
    tr.write_line(f"{'total':<28} {total:>7} cases")

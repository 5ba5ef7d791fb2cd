"""How many cases each fuzz target runs, and a count of the cases actually run.

    HYPOTHESIS_PROFILE=ci    (default) the target's small budget, derandomized: CI reproducible
    HYPOTHESIS_PROFILE=fuzz  WH_FUZZ_EXAMPLES cases per target (default 10,000), random seed

No example database: nothing is written into the working tree. A failure prints the minimal
example and a `@reproduce_failure` blob.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hypothesis import HealthCheck, Phase, settings

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
FUZZ_EXAMPLES = int(os.environ.get("WH_FUZZ_EXAMPLES", "10000"))

_COMMON: dict[str, Any] = {
    "deadline": None,
    "database": None,
    "print_blob": True,
    "suppress_health_check": list(HealthCheck),
}

settings.register_profile("ci", derandomize=True, **_COMMON)
settings.register_profile("fuzz", derandomize=False, **_COMMON)

F = TypeVar("F", bound=Callable[..., Any])


def budget(ci: int) -> Callable[[F], F]:
    """Settings for one target: `ci` cases in the regular suite, FUZZ_EXAMPLES under `make fuzz`."""
    fuzzing = PROFILE == "fuzz"
    return settings(  # type: ignore[return-value]
        settings.get_profile("fuzz" if fuzzing else "ci"),
        max_examples=FUZZ_EXAMPLES if fuzzing else ci,
        # A fuzz run stops at the first failure's shrunk example; shrinking stays on.
        phases=tuple(Phase) if fuzzing else (Phase.explicit, Phase.generate, Phase.shrink),
    )


@dataclass
class Tally:
    cases: int = 0
    seconds: float = 0.0
    outcomes: dict[str, int] = field(default_factory=lambda: defaultdict(int))


TALLY: dict[str, Tally] = defaultdict(Tally)


class count:
    """`with count("api.apply", outcome):` adds one case (and its time) to the summary."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.outcome = "?"

    def __enter__(self) -> count:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        t = TALLY[self.target]
        t.cases += 1
        t.seconds += time.perf_counter() - self.t0
        t.outcomes[self.outcome if exc[0] is None else "failed"] += 1


# With pytest-xdist each worker counts its own cases: tests/conftest.py hands them to the
# controller, which prints the summary.


def tally_as_data() -> dict[str, dict[str, Any]]:
    return {target: {"cases": t.cases, "seconds": t.seconds, "outcomes": dict(t.outcomes)}
            for target, t in TALLY.items()}


def add_tally(data: dict[str, dict[str, Any]]) -> None:
    for target, counted in data.items():
        t = TALLY[target]
        t.cases += counted["cases"]
        t.seconds += counted["seconds"]
        for outcome, n in counted["outcomes"].items():
            t.outcomes[outcome] += n


def write_summary(tr: Any) -> None:
    """How many cases each fuzz target ran (and how they ended), at the end of the session."""
    if not TALLY:
        return
    budget = f", {FUZZ_EXAMPLES} per target" if PROFILE == "fuzz" else ""
    tr.section(f"fuzz cases (profile {PROFILE}{budget})")
    total = 0
    for target, t in sorted(TALLY.items()):
        total += t.cases
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(t.outcomes.items()))
        tr.write_line(f"{target:<28} {t.cases:>7} cases {t.seconds:>8.1f} s   {outcomes}")
    tr.write_line(f"{'total':<28} {total:>7} cases")

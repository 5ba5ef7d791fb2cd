"""Reading the goals the benchmarks print next to their figures, and saying which were missed.

Benchmarks print lines such as

    cold load to ready snapshot: 2.50 s (etcd range 0.60 s) [goal <= 3 s]
    one change: 22 us at 1k webhooks, 34 us at 100k -> ratio 1.49 [goal <= 1.5]
    apply 1 resource -> ...: p50 7.1 ms  p99 10.9 ms (mean 7.3 ms) [goal p99 <= 25 ms]; ...
    goals: sync log >= 0.60 x floor; async redis_stream >= 0.40 x floor

and the measured value is: the figure the goal names (`p99`), else the one just before the
goal (`ratio 1.49`), else the first one after the line's colon. Units are converted before
comparing (`1059 B` against `2 KB`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "B": 1.0, "KB": 1024.0, "MB": 1024.0**2}
_NUMBER = r"(-?\d+(?:\.\d+)?)\s*(us|ms|s|B|KB|MB)?\b"
_GOAL = re.compile(r"\[goal\s+(?:(?P<metric>[a-z]\w*)\s+)?(?P<op><=|>=|<|>)\s*" + _NUMBER + r"\]")
_RATIOS = re.compile(r"(?P<name>[\w ]+?)\s*(?P<op>>=|<=)\s*(?P<value>\d+(?:\.\d+)?) x floor")


@dataclass(frozen=True, slots=True)
class Verdict:
    line: str
    measured: float
    op: str
    goal: float
    met: bool

    def __str__(self) -> str:
        return f"{'met   ' if self.met else 'MISSED'} {self.line.strip()}"


def _seconds_or_bytes(value: str, unit: str | None) -> float:
    return float(value) * _UNITS.get(unit or "", 1.0)


def _compare(measured: float, op: str, goal: float) -> bool:
    return {"<=": measured <= goal, ">=": measured >= goal, "<": measured < goal,
            ">": measured > goal}[op]


def line_verdicts(lines: Iterable[str]) -> list[Verdict]:
    """A verdict for every line holding `[goal ...]`; a line whose figure cannot be found is
    missed (a goal that cannot be checked is not met)."""
    out = []
    for line in lines:
        goal = _GOAL.search(line)
        if goal is None:
            continue
        target = _seconds_or_bytes(goal.group(3), goal.group(4))
        before = line[:goal.start()]
        found = None
        if goal.group("metric"):
            found = re.search(rf"\b{goal.group('metric')}\s+" + _NUMBER, before)
        if found is None:
            found = re.search(_NUMBER + r"\s*$", before)
        if found is None and ":" in before:
            found = re.search(_NUMBER, before.split(":", 1)[1])
        if found is None:
            out.append(Verdict(line, float("nan"), goal.group("op"), target, False))
            continue
        measured = _seconds_or_bytes(found.group(1), found.group(2))
        out.append(Verdict(line, measured, goal.group("op"), target,
                           _compare(measured, goal.group("op"), target)))
    return out


def ratio_verdicts(goals_line: str, ratios: Sequence[tuple[str, float]]) -> list[Verdict]:
    """`goals: sync log >= 0.60 x floor; ...` against (result name, ratio to the floor)."""
    out = []
    for goal in _RATIOS.finditer(goals_line.removeprefix("goals:")):
        name, op, target = goal.group("name").strip(), goal.group("op"), float(goal.group("value"))
        matching = [ratio for result, ratio in ratios if name in result]
        measured = matching[0] if matching else float("nan")
        met = bool(matching) and _compare(measured, op, target)
        out.append(Verdict(f"{name}: {measured:.2f} x floor [goal {op} {target:.2f}]",
                           measured, op, target, met))
    return out

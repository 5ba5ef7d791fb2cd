"""`make bench` says which goals were missed (and exits 1 then): the goal lines the benchmarks
print are read back, units and all."""

from __future__ import annotations

from bench.goals import line_verdicts, ratio_verdicts

REPORT = """\
cold load to ready snapshot: 2.50 s (etcd range 0.60 s) [goal <= 3 s]
one change: 22 us at 1k webhooks, 34 us at 100k -> ratio 1.49 [goal <= 1.5]
snapshot memory: 1059 B per resource (raw JSON kept for persistence: 306 B of it) [goal <= 2 KB]
apply 1 resource -> all 3 gateways serving it: p50 7.1 ms  p99 30.9 ms (mean 7.3 ms) [goal p99 <= 25 ms]; of which after the apply answered: p50 -1.8 ms
put -> swap at 100k webhooks: p50 0.47 ms, p99 0.73 ms (200 puts)
"""


def test_goal_lines_are_judged() -> None:
    verdicts = line_verdicts(REPORT.splitlines())
    assert [(round(v.measured, 6), v.goal, v.met) for v in verdicts] == [
        (2.5, 3.0, True), (1.49, 1.5, True), (1059.0, 2048.0, True), (0.0309, 0.025, False)]
    assert str(verdicts[3]).startswith("MISSED apply 1 resource")


def test_a_goal_without_a_figure_is_missed() -> None:
    [verdict] = line_verdicts(["nothing measured here [goal <= 3 s]"])
    assert not verdict.met


def test_ingest_ratios() -> None:
    goals = "goals: sync log >= 0.60 x floor; async redis_stream >= 0.40 x floor"
    verdicts = ratio_verdicts(goals, [("floor (bare ASGI + HMAC)", 1.0),
                                      ("gateway sync log", 0.40),
                                      ("gateway async redis_stream", 0.45)])
    assert [(v.measured, v.met) for v in verdicts] == [(0.40, False), (0.45, True)]
    assert [v.met for v in ratio_verdicts(goals, [])] == [False, False]

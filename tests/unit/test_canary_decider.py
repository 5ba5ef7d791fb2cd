"""The canary decider (control_plane/canary.py): a canary record and gateway records in, a
decision out. No store, no clock: `now` is given."""

from __future__ import annotations

from typing import Any

import pytest

from control_plane.canary import assess, baseline
from providers.rollout import Canary

T0 = 1_000_000.0
REFUSAL = {"resource": "Webhook/acme/push", "reason": "unresolved reference {$SECRET_C}"}


def canary(**kw: Any) -> Canary:
    fields: dict[str, Any] = {"revision": 10, "base": 9, "selector": {"canary": "true"},
                              "started": T0, "promote_after_s": 60.0, "max_error_rate": 0.05}
    fields.update(kw)
    return Canary(**fields)


def gw(gid: str, revision: int | None = 10, labels: dict[str, str] | None = None,
       refused: list[dict[str, str]] | None = None, requests: int = 0, errors: int = 0,
       live: bool = True) -> dict[str, Any]:
    return {"id": gid, "revision": revision, "live": live, "health": "ok",
            "labels": {"canary": "true"} if labels is None else labels,
            "refused": refused or [], "stats": {"requests": requests, "errors": errors}}


OTHERS = [gw("gw-b", 9, labels={}), gw("gw-c", 9, labels={"zone": "a"})]


def test_only_live_matching_gateways_are_canary_gateways() -> None:
    judged = assess(canary(), [gw("gw-a"), gw("gw-d", live=False), *OTHERS], T0 + 1)
    assert [g.id for g in judged.gateways] == ["gw-a"]
    assert judged.gateways[0].serving
    assert judged.decision is None
    assert "promotes itself in 59s" in judged.waiting
    assert judged.promote_in_s == pytest.approx(59)


def test_nack_of_a_canary_gateway_aborts_naming_gateway_resource_and_reason() -> None:
    judged = assess(canary(), [gw("gw-a", refused=[REFUSAL]), *OTHERS], T0 + 1)
    assert judged.decision is not None and judged.decision.action == "abort"
    reason = judged.decision.reason
    assert "gw-a" in reason and "Webhook/acme/push" in reason and "{$SECRET_C}" in reason


def test_refusals_before_the_canary_revision_or_outside_the_selector_do_not_abort() -> None:
    behind = gw("gw-a", revision=9, refused=[REFUSAL])  # still on the base revision
    other = gw("gw-b", 9, labels={}, refused=[REFUSAL])
    judged = assess(canary(), [behind, other], T0 + 120)
    assert judged.decision is None
    assert "waiting for gw-a to serve revision 10" in judged.waiting


def test_error_rate_over_the_limit_aborts_once_there_are_enough_requests() -> None:
    c = canary(baseline={"gw-a": (100, 50)})
    few = assess(c, [gw("gw-a", requests=110, errors=55)], T0 + 5)  # 10 requests, 5 errors
    assert few.decision is None and few.requests == 10 and few.errors == 5
    many = assess(c, [gw("gw-a", requests=130, errors=52)], T0 + 5)  # 30 requests, 2 errors
    assert many.decision is not None and many.decision.action == "abort"
    assert "6.7%" in many.decision.reason and "2 of 30" in many.decision.reason
    fine = assess(c, [gw("gw-a", requests=130, errors=51)], T0 + 5)  # 1 of 30: 3.3%
    assert fine.decision is None
    assert fine.error_rate == pytest.approx(1 / 30)


def test_min_requests_is_a_parameter() -> None:
    judged = assess(canary(), [gw("gw-a", requests=5, errors=1)], T0 + 1, min_requests=5)
    assert judged.decision is not None and judged.decision.action == "abort"


def test_errors_of_non_canary_gateways_do_not_count() -> None:
    judged = assess(canary(), [gw("gw-a", requests=100), gw("gw-b", 9, labels={},
                                                            requests=100, errors=100)], T0 + 1)
    assert judged.decision is None and judged.errors == 0


def test_a_restarted_gateway_counts_from_zero() -> None:
    c = canary(baseline={"gw-a": (1000, 10)})
    judged = assess(c, [gw("gw-a", requests=40, errors=0)], T0 + 1)
    assert (judged.requests, judged.errors) == (40, 0)


def test_no_error_rate_limit_never_aborts_on_errors() -> None:
    judged = assess(canary(max_error_rate=None), [gw("gw-a", requests=100, errors=100)], T0 + 1)
    assert judged.decision is None


def test_promotes_after_a_healthy_window() -> None:
    judged = assess(canary(), [gw("gw-a", requests=50, errors=1), *OTHERS], T0 + 60)
    assert judged.decision is not None and judged.decision.action == "promote"
    assert "gw-a" in judged.decision.reason and "60s" in judged.decision.reason


def test_never_promotes_by_itself_without_promote_after() -> None:
    judged = assess(canary(promote_after_s=None), [gw("gw-a")], T0 + 86400)
    assert judged.decision is None and judged.promote_in_s is None
    assert "whctl rollout promote" in judged.waiting


def test_never_promotes_what_no_canary_gateway_serves() -> None:
    nobody = assess(canary(), OTHERS, T0 + 600)
    assert nobody.decision is None and "no live gateway matches canary=true" in nobody.waiting
    lagging = assess(canary(), [gw("gw-a"), gw("gw-e", revision=9)], T0 + 600)
    assert lagging.decision is None and "gw-e" in lagging.waiting


def test_a_nack_wins_over_a_due_promotion() -> None:
    judged = assess(canary(), [gw("gw-a", refused=[REFUSAL])], T0 + 600)
    assert judged.decision is not None and judged.decision.action == "abort"


def test_malformed_gateway_records_are_judged_defensively() -> None:
    weird = [{"id": "gw-x", "labels": {"canary": "true"}, "revision": "ten", "stats": "lots",
              "refused": ["not a mapping"]},
             {"id": "gw-y", "labels": None, "stats": {"requests": True}}]
    judged = assess(canary(), weird, T0 + 1)
    assert [g.id for g in judged.gateways] == ["gw-x"]
    assert judged.gateways[0].revision is None and not judged.gateways[0].serving
    assert judged.decision is None


def test_baseline_takes_every_live_gateways_counters() -> None:
    assert baseline([gw("gw-a", requests=7, errors=2), gw("gw-b", requests=3, live=False),
                     {"id": "gw-c"}]) == {"gw-a": (7, 2), "gw-c": (0, 0)}


def test_as_dict_is_json_shaped() -> None:
    view = assess(canary(), [gw("gw-a", requests=3)], T0 + 1).as_dict()
    assert view["revision"] == 10 and view["selector"] == {"canary": "true"}
    assert view["selector_text"] == "canary=true"
    assert view["gateways"][0]["id"] == "gw-a" and view["gateways"][0]["serving"] is True
    assert view["decision"] is None and view["requests"] == 3

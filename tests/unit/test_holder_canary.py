"""What a gateway serves while a canary runs: everything when its labels match the selector,
the promoted config otherwise, then the outcome of the promote or the abort."""

from __future__ import annotations

import json
import time

from providers.holder import SnapshotHolder
from providers.provider import ChangeBatch
from providers.resources import ResourceKey
from providers.rollout import Canary
from tests.docs import webhook

A = ResourceKey("Webhook", "acme", "a")
B = ResourceKey("Webhook", "acme", "b")
NEW = ResourceKey("Webhook", "acme", "new")
CANARY = Canary(revision=11, base=10, selector={"canary": "true"}, started=time.time())


def doc(name: str, limit: float) -> bytes:
    return json.dumps(webhook(name, secret="{$S}", limits={"rate_per_second": limit})).encode()


def limit(h: SnapshotHolder, name: str) -> float | None:
    hook = h.current.webhook("acme", name)
    return None if hook is None else hook.spec.limits.rate_per_second


async def started(labels: dict[str, str]) -> SnapshotHolder:
    h = SnapshotHolder(env={"S": "s"}, labels=labels)
    await h.apply(ChangeBatch(10, {A: doc("a", 1), B: doc("b", 1)}, full=True))
    # The canary apply: changes a, deletes b, creates new; the record in the same revision.
    await h.apply(ChangeBatch(11, {A: doc("a", 2), NEW: doc("new", 2)}, frozenset({B}),
                              canary_changed=True, canary=CANARY))
    return h


async def test_a_matching_gateway_serves_the_canary() -> None:
    h = await started({"canary": "true", "zone": "a"})
    assert h.current.revision == 11
    assert (limit(h, "a"), limit(h, "b"), limit(h, "new")) == (2, None, 2)


async def test_the_others_hold_it_back_then_apply_it_on_promote() -> None:
    h = await started({"zone": "a"})
    assert h.current.revision == 10
    assert (limit(h, "a"), limit(h, "b"), limit(h, "new")) == (1, 1, None)
    await h.apply(ChangeBatch(12, canary_changed=True, canary=None))  # promote
    assert h.current.revision == 12
    assert (limit(h, "a"), limit(h, "b"), limit(h, "new")) == (2, None, 2)


async def test_an_abort_leaves_the_others_where_they_were() -> None:
    h = await started({})
    revert = ChangeBatch(12, {A: doc("a", 1), B: doc("b", 1)}, frozenset({NEW}),
                         canary_changed=True, canary=None)
    await h.apply(revert)
    assert (limit(h, "a"), limit(h, "b"), limit(h, "new")) == (1, 1, None)
    canary_side = await started({"canary": "true"})
    await canary_side.apply(revert)
    assert (limit(canary_side, "a"), limit(canary_side, "b"), limit(canary_side, "new")) == (
        1, 1, None)


async def test_a_direct_write_during_a_canary_reaches_everyone() -> None:
    other = ResourceKey("Webhook", "acme", "other")
    h = await started({})
    await h.apply(ChangeBatch(12, {other: doc("other", 5)}))
    assert limit(h, "other") == 5 and limit(h, "a") == 1


async def test_a_full_load_during_a_canary_serves_the_promoted_values() -> None:
    h = SnapshotHolder(env={"S": "s"}, labels={"zone": "a"})
    # The store holds the canary revision; history says what it changed.
    await h.apply(ChangeBatch(11, {A: doc("a", 2), NEW: doc("new", 2)}, full=True,
                              canary_changed=True, canary=CANARY,
                              canary_before={A: doc("a", 1), B: doc("b", 1), NEW: None}))
    assert h.current.revision == 10
    assert (limit(h, "a"), limit(h, "b"), limit(h, "new")) == (1, 1, None)
    await h.apply(ChangeBatch(12, canary_changed=True, canary=None))
    assert (limit(h, "a"), limit(h, "b"), limit(h, "new")) == (2, None, 2)

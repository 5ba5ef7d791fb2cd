"""run_chain with scripted fake modules: order, stop vs continue_on_error, cancellation of the
remaining steps, the total timeout in both modes, and how the result's error is chosen."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from immutables import Map
from pydantic import TypeAdapter

from data_plane.chain import ChainResult, run_chain
from data_plane.clients import Clients
from data_plane.delivery import Delivery
from data_plane.errors import ChainTimeout, DeliveryError, StepFailed
from providers.resources import Webhook
from providers.snapshot import Endpoint
from tests.docs import webhook

_WEBHOOK = TypeAdapter(Webhook)
# Generous for a loaded CI machine, yet far below the time a hanging step would take.
MARGIN_S = 0.4


class Script:
    """A fake module driven by each step's `config.path`: "NAME=ACTION[:SECONDS]".

    ACTION: ok, sleep (then ok), fail (not retryable), retry (retryable failure), boom (a bug:
    RuntimeError), hang. Records ("start" | "done" | "cancelled", NAME) events.
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    async def __call__(self, step: Any, endpoint: Endpoint, delivery: Delivery, clients: Any) -> None:
        name, _, script = step.config.path.partition("=")
        action, _, seconds = script.partition(":")
        self.events.append(("start", name))
        try:
            if seconds:
                await asyncio.sleep(float(seconds))
            if action == "hang":
                await asyncio.sleep(3600)
            elif action == "fail":
                raise DeliveryError("HTTP 400", destination=f"fake:{name}", retryable=False)
            elif action == "retry":
                raise DeliveryError("HTTP 503", destination=f"fake:{name}", retryable=True)
            elif action == "boom":
                raise RuntimeError("do-not-leak-this")
        except asyncio.CancelledError:
            self.events.append(("cancelled", name))
            raise
        self.events.append(("done", name))

    def names(self, event: str) -> list[str]:
        return [name for kind, name in self.events if kind == event]


def endpoint(*paths: str, mode: str = "sequential", timeout_s: float = 5.0,
             continue_on_error: bool = False) -> Endpoint:
    doc = webhook("hook", secret="s3cret", chain={
        "mode": mode,
        "timeout_s": timeout_s,
        "continue_on_error": continue_on_error,
        "steps": [{"module": "file", "config": {"path": p}} for p in paths],
    })
    return Endpoint(_WEBHOOK.validate_python(doc), None, Map())


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    async with Clients() as c:
        yield c


@pytest.fixture
def script() -> Script:
    return Script()


async def run(ep: Endpoint, script: Script, clients: Clients) -> tuple[ChainResult, float]:
    delivery = Delivery("acme", "hook", b"{}", {}, revision=1)
    start = time.perf_counter()
    result = await run_chain(ep, delivery, clients, modules={"file": script})
    return result, time.perf_counter() - start


# --- sequential --------------------------------------------------------------------------


async def test_sequential_runs_in_order(script: Script, clients: Clients) -> None:
    result, _ = await run(endpoint("a=sleep:0.02", "b=ok", "c=sleep:0.01"), script, clients)
    assert result.ok and result.error is None
    # Each step finishes before the next one starts.
    assert script.events == [("start", "a"), ("done", "a"), ("start", "b"), ("done", "b"),
                             ("start", "c"), ("done", "c")]
    assert [(s.index, s.module, s.ok, s.error) for s in result.steps] == [
        (0, "file", True, None), (1, "file", True, None), (2, "file", True, None)]
    assert result.steps[0].duration_s >= 0.02


async def test_sequential_stops_at_first_failure(script: Script, clients: Clients) -> None:
    result, _ = await run(endpoint("a=ok", "b=fail", "c=ok"), script, clients)
    assert not result.ok
    assert script.names("start") == ["a", "b"]  # c never ran
    assert [s.index for s in result.steps] == [0, 1]
    error = result.error
    assert isinstance(error, StepFailed)
    assert (error.index, error.module, error.retryable) == (1, "file", False)
    assert error.destination == "fake:b"
    assert str(error) == "step 1 (file) to fake:b failed: HTTP 400"
    assert isinstance(error.__cause__, DeliveryError)
    assert result.steps[1].error == str(error)


async def test_sequential_continue_on_error(script: Script, clients: Clients) -> None:
    result, _ = await run(endpoint("a=fail", "b=retry", "c=ok", continue_on_error=True),
                          script, clients)
    assert script.names("done") == ["c"]
    assert [s.ok for s in result.steps] == [False, False, True]
    assert not result.ok
    # The error is the first failure; retryable because another failed step was.
    assert isinstance(result.error, StepFailed)
    assert result.error.index == 0 and result.error.reason == "HTTP 400"
    assert result.error.retryable is True


async def test_continue_on_error_with_only_permanent_failures(
    script: Script, clients: Clients
) -> None:
    result, _ = await run(endpoint("a=ok", "b=fail", "c=fail", continue_on_error=True),
                          script, clients)
    assert not result.ok and result.error is not None
    assert result.error.retryable is False


async def test_retryable_first_failure_stays_retryable(script: Script, clients: Clients) -> None:
    result, _ = await run(endpoint("a=retry", "b=ok"), script, clients)
    assert result.error is not None and result.error.retryable is True
    assert script.names("start") == ["a"]


async def test_module_bug_is_a_permanent_failure_without_its_text(
    script: Script, clients: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    result, _ = await run(endpoint("a=boom"), script, clients)
    assert isinstance(result.error, StepFailed)
    assert result.error.retryable is False
    assert "internal error (RuntimeError)" in str(result.error)
    assert "do-not-leak-this" not in str(result.error)
    assert any("raised" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_unknown_module_is_a_config_problem(clients: Clients) -> None:
    delivery = Delivery("acme", "hook", b"{}", {}, revision=1)
    result = await run_chain(endpoint("a=ok"), delivery, clients, modules={})
    assert result.error is not None and result.error.retryable is False
    assert "no such module 'file'" in str(result.error)


# --- parallel ----------------------------------------------------------------------------


async def test_parallel_runs_steps_concurrently(script: Script, clients: Clients) -> None:
    result, _ = await run(
        endpoint("a=sleep:0.2", "b=sleep:0.2", "c=sleep:0.2", mode="parallel"), script, clients
    )
    assert result.ok
    # All three started before any of them was done: they overlapped (one after the other,
    # each start would follow the previous done). Told by order, not by time: a busy
    # machine can stretch 0.2 s sleeps, never reorder them.
    assert script.events[:3] == [("start", "a"), ("start", "b"), ("start", "c")]
    assert sorted(script.names("done")) == ["a", "b", "c"]
    assert [s.index for s in result.steps] == [0, 1, 2]


async def test_parallel_failure_cancels_the_rest(script: Script, clients: Clients) -> None:
    result, elapsed = await run(
        endpoint("a=hang", "b=fail:0.05", "c=hang", "d=ok", mode="parallel"), script, clients
    )
    assert elapsed < 0.05 + MARGIN_S
    assert sorted(script.names("cancelled")) == ["a", "c"]  # they saw CancelledError
    assert script.names("done") == ["d"]
    assert not result.ok
    assert isinstance(result.error, StepFailed) and result.error.index == 1
    outcomes = {s.index: s for s in result.steps}
    assert outcomes[0].error == "step 0 (file) to file:a=hang cancelled: step 1 failed"
    assert not outcomes[2].ok and outcomes[3].ok
    assert outcomes[0].duration_s >= 0.04


async def test_parallel_continue_on_error_lets_others_finish(
    script: Script, clients: Clients
) -> None:
    result, _ = await run(
        endpoint("a=fail", "b=sleep:0.1", "c=retry:0.05", mode="parallel",
                 continue_on_error=True),
        script, clients,
    )
    assert script.names("cancelled") == []
    assert script.names("done") == ["b"]
    assert [s.ok for s in result.steps] == [False, True, False]
    # First failure in time is a; c's retryable failure makes the whole result retryable.
    assert isinstance(result.error, StepFailed) and result.error.index == 0
    assert result.error.retryable is True


# --- the total timeout -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sequential", "parallel"])
async def test_timeout_cuts_a_hanging_step(mode: str, script: Script, clients: Clients) -> None:
    ep = endpoint("a=ok", "b=hang", "c=sleep:0.05", mode=mode, timeout_s=0.3)
    result, elapsed = await run(ep, script, clients)
    assert 0.3 <= elapsed < 0.3 + MARGIN_S
    assert script.names("cancelled") == ["b"]
    assert not result.ok
    error = result.error
    assert isinstance(error, ChainTimeout)
    assert error.retryable is True
    assert error.running == ((1, "file"),)
    assert error.destination == "file:b=hang"
    assert "chain timed out after 0.3s" in str(error)
    cut = next(s for s in result.steps if s.index == 1)
    assert not cut.ok and cut.error is not None and "chain timeout (0.3s)" in cut.error
    if mode == "sequential":
        assert script.names("start") == ["a", "b"]  # c never started
    else:
        assert script.names("done") == ["a", "c"]


async def test_timeout_cancels_every_running_step_in_parallel(
    script: Script, clients: Clients
) -> None:
    ep = endpoint("a=hang", "b=hang", "c=ok", mode="parallel", timeout_s=0.2)
    result, elapsed = await run(ep, script, clients)
    assert elapsed < 0.2 + MARGIN_S
    assert sorted(script.names("cancelled")) == ["a", "b"]
    assert isinstance(result.error, ChainTimeout)
    assert result.error.running == ((0, "file"), (1, "file"))


async def test_timeout_after_a_failure_keeps_the_first_failure(
    script: Script, clients: Clients
) -> None:
    ep = endpoint("a=fail", "b=hang", continue_on_error=True, timeout_s=0.2)
    result, _ = await run(ep, script, clients)
    assert isinstance(result.error, StepFailed) and result.error.index == 0
    assert result.error.retryable is True  # the timeout is worth a retry
    assert [s.ok for s in result.steps] == [False, False]


@pytest.mark.parametrize("mode", ["sequential", "parallel"])
async def test_callers_cancellation_propagates(mode: str, script: Script,
                                               clients: Clients) -> None:
    delivery = Delivery("acme", "hook", b"{}", {}, revision=1)
    ep = endpoint("a=hang", "b=hang", mode=mode)
    task = asyncio.create_task(run_chain(ep, delivery, clients, modules={"file": script}))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "a" in script.names("cancelled")

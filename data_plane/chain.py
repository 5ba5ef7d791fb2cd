"""Run a webhook's chain of delivery steps: `result = await run_chain(endpoint, delivery, clients)`.

Sequential mode runs the steps in order and stops at the first failure; parallel mode starts
them all at once (an `asyncio.TaskGroup`) and cancels the others at the first failure. With
`continue_on_error` every step runs to its end whatever the others do. `chain.timeout_s` bounds
the whole chain in both modes: whatever is still running then is cancelled.

The result never raises for a delivery problem; it says what happened:

- `ok`: every step that ran succeeded and none was cut (skipped steps only follow a failure).
- `steps`: one `StepOutcome` per step that started, in step order. A step cancelled because a
  sibling failed or the chain timed out is `ok=False` with an error saying so; a step that never
  started (sequential, after a failure or the timeout) is absent.
- `error`: the first failure in time (a `StepFailed` whose `__cause__` is the module's error,
  or a `ChainTimeout`), with `retryable` True if ANY failure was retryable: a retry of the chain
  is worth it as soon as one destination may take the webhook later.

Each step with a Connection obeys that Connection's circuit breaker (`clients.circuits`): while
it is open the step is not tried and fails with `CircuitOpen` (retryable). Retryable failures
feed the breaker, successes close it; a non-retryable failure (the destination answered "no",
or the config is wrong) says nothing about whether the destination is up. Every step is
counted in `clients.metrics` by module and result.

Only the caller's own cancellation propagates (as CancelledError).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from data_plane.circuit import CircuitBreaker, CircuitOpen
from data_plane.clients import Clients, connection_key
from data_plane.delivery import Delivery
from data_plane.errors import ChainTimeout, DeliveryError, StepFailed, destination_of
from data_plane.modules import MODULES, Runner
from providers.snapshot import Endpoint

log = logging.getLogger(__name__)

# Modules whose runner never awaits: a chain of only these ends in the step that starts it, so
# it needs no timer (arming and cancelling one is a fifth of a `log` webhook's cost), and
# running it in order is what running it in parallel would do.
INSTANT = frozenset({"log"})


@dataclass(slots=True, order=True)
class StepOutcome:
    # Not frozen: one is built per step of every webhook, and a frozen init costs several
    # times more. Nothing changes one after the chain built it.
    index: int
    module: str
    ok: bool
    error: str | None
    duration_s: float


@dataclass(frozen=True, slots=True)
class ChainResult:
    ok: bool
    steps: tuple[StepOutcome, ...]
    error: DeliveryError | None


async def run_chain(
    endpoint: Endpoint,
    delivery: Delivery,
    clients: Clients,
    *,
    modules: Mapping[str, Runner] = MODULES,
) -> ChainResult:
    """Deliver `delivery` through `endpoint`'s chain (see the module doc)."""
    chain = endpoint.webhook.spec.chain
    if modules is MODULES and all_instant(chain.steps):
        return await run_instant(endpoint, delivery, clients)
    run = _Run(endpoint, delivery, clients, modules, chain.continue_on_error)
    timed_out = False
    try:
        async with asyncio.timeout(chain.timeout_s):
            if chain.mode == "parallel" and len(chain.steps) > 1:
                await run.parallel(chain.steps)
            else:
                await run.sequential(chain.steps)
    except TimeoutError:
        # Steps turn every exception of theirs into a failure, so this is the chain's own.
        timed_out = True
    return run.result(chain.timeout_s if timed_out else None)


def all_instant(steps: Sequence[Any]) -> bool:
    """Whether every step is INSTANT, so that `run_instant` can run the chain."""
    return all(step.module in INSTANT for step in steps)


async def run_instant(endpoint: Endpoint, delivery: Delivery, clients: Clients) -> ChainResult:
    """`run_chain` for a chain of INSTANT steps only: in order, without the bookkeeping a
    step that can wait, fail on a destination or trip a breaker needs (none has a Connection).
    Half the cost of a `log` chain went there. A step that raises anyway (a bug) is recorded as
    `_Run.step` would."""
    chain = endpoint.webhook.spec.chain
    steps, continue_on_error = chain.steps, chain.continue_on_error
    metrics = clients.metrics
    outcomes: list[StepOutcome] = []
    for index, step in enumerate(steps):
        module: str = step.module
        start = time.perf_counter()
        try:
            await MODULES[module](step, endpoint, delivery, clients)
        except Exception as exc:
            run = _Run(endpoint, delivery, clients, MODULES, continue_on_error)
            run.outcomes = outcomes
            run.raised(index, step, exc, start)
            if continue_on_error:
                for later in range(index + 1, len(steps)):
                    await run.step(later, steps[later])
            return run.result(None)
        took = time.perf_counter() - start
        metrics.step(module, "ok", took)
        outcomes.append(StepOutcome(index, module, True, None, took))
    return ChainResult(True, tuple(outcomes), None)


class _Abort(Exception):
    """Raised by a failed step's task in parallel mode so the TaskGroup cancels the rest."""


class _Run:
    """The bookkeeping of one chain run."""

    __slots__ = ("cancelled", "clients", "continue_on_error", "delivery", "endpoint",
                 "failures", "modules", "outcomes")  # fmt: skip

    def __init__(
        self,
        endpoint: Endpoint,
        delivery: Delivery,
        clients: Clients,
        modules: Mapping[str, Runner],
        continue_on_error: bool,
    ) -> None:
        self.endpoint = endpoint
        self.delivery = delivery
        self.clients = clients
        self.modules = modules
        self.continue_on_error = continue_on_error
        self.outcomes: list[StepOutcome] = []  # in the order the steps ended
        self.failures: list[DeliveryError] = []  # in the order they happened
        # Steps cut short: index -> (module, destination, seconds run); judged once we know why.
        self.cancelled: dict[int, tuple[str, str, float]] | None = None

    async def sequential(self, steps: Sequence[Any]) -> None:
        for index, step in enumerate(steps):
            if not await self.step(index, step) and not self.continue_on_error:
                return

    async def parallel(self, steps: Sequence[Any]) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                for index, step in enumerate(steps):
                    group.create_task(self.step_or_abort(index, step))
        except* _Abort:
            pass

    async def step_or_abort(self, index: int, step: Any) -> None:
        if not await self.step(index, step) and not self.continue_on_error:
            raise _Abort

    async def step(self, index: int, step: Any) -> bool:
        """Run one step, record its outcome; True if it succeeded."""
        module: str = step.module
        metrics = self.clients.metrics
        start = time.perf_counter()
        breaker = self.breaker(step)
        try:
            runner = self.modules.get(module)
            if runner is None:
                raise DeliveryError(
                    f"no such module {module!r}",
                    destination=self.destination(step),
                    retryable=False,
                )
            if breaker is not None and not breaker.allow():
                raise CircuitOpen(breaker.retry_after(), destination=self.destination(step))
            await runner(step, self.endpoint, self.delivery, self.clients)
        except asyncio.CancelledError:
            if self.cancelled is None:
                self.cancelled = {}
            self.cancelled[index] = (module, self.destination(step), time.perf_counter() - start)
            metrics.step(module, "cancelled", None)
            raise
        except CircuitOpen as exc:
            failure = StepFailed(index, module, exc.reason, destination=exc.destination,
                                 retryable=True)
            failure.__cause__ = exc
            metrics.step(module, "circuit_open", None)
        except DeliveryError as exc:
            failure = StepFailed(
                index, module, exc.reason, destination=exc.destination, retryable=exc.retryable
            )
            failure.__cause__ = exc
            if breaker is not None and exc.retryable:
                breaker.failure()
            metrics.step(module, "failed", time.perf_counter() - start)
        except Exception as exc:
            self.raised(index, step, exc, start)
            return False
        else:
            took = time.perf_counter() - start
            if breaker is not None:
                breaker.success()
            metrics.step(module, "ok", took)
            self.outcomes.append(StepOutcome(index, module, True, None, took))
            return True
        self._failed(index, module, failure, start)
        return False

    def _failed(self, index: int, module: str, failure: StepFailed, start: float) -> None:
        self.failures.append(failure)
        self.outcomes.append(
            StepOutcome(index, module, False, str(failure), time.perf_counter() - start))

    def raised(self, index: int, step: Any, exc: Exception, start: float) -> None:
        """Record a step that raised something other than a DeliveryError."""
        module: str = step.module
        # A bug in a module, not a destination problem: log it whole, retrying will not fix
        # it. The message stays generic; an exception's text may hold anything.
        log.exception(
            "step %d (%s) of %s/%s raised", index, module, self.delivery.namespace,
            self.delivery.webhook, exc_info=exc,
        )  # fmt: skip
        failure = StepFailed(
            index, module, f"internal error ({type(exc).__name__})",
            destination=self.destination(step), retryable=False,
        )  # fmt: skip
        failure.__cause__ = exc
        self.clients.metrics.step(module, "failed", time.perf_counter() - start)
        self._failed(index, module, failure, start)

    def breaker(self, step: Any) -> CircuitBreaker | None:
        """The circuit breaker of the step's Connection; None for a step without one."""
        name = getattr(step, "connection", None)
        conn = self.endpoint.connections.get(name) if name is not None else None
        if conn is None:
            return None
        circuit = conn.spec.circuit
        return self.clients.circuits.get(connection_key(conn), circuit.failures,
                                         circuit.cooldown_s)

    def destination(self, step: Any) -> str:
        return destination_of(step, self.endpoint.connections)

    def result(self, timeout_s: float | None) -> ChainResult:
        """The ChainResult; `timeout_s` is set when the chain's timeout cut it."""
        if self.cancelled is None and timeout_s is None:  # the usual case: every step ended
            steps = tuple(self.outcomes)
            if len(steps) > 1:
                steps = tuple(sorted(steps))  # parallel steps end in any order
            if not self.failures:
                return ChainResult(True, steps, None)
            return ChainResult(False, steps, _first_failure(self.failures))
        cut = sorted((self.cancelled or {}).items())
        outcomes = {o.index: o for o in self.outcomes}
        if timeout_s is not None:
            timeout = ChainTimeout(
                timeout_s,
                tuple((i, module) for i, (module, _, _) in cut),
                destination=cut[0][1][1] if cut else "chain",
            )
            self.failures.append(timeout)
            why = f"cut by the chain timeout ({timeout_s:g}s)"
        elif cut:  # only a sibling's failure cancels steps in parallel mode
            why = f"cancelled: step {getattr(self.failures[0], 'index', '?')} failed"
        for index, (module, destination, ran_s) in cut:
            error = f"step {index} ({module}) to {destination} {why}"
            outcomes[index] = StepOutcome(index, module, False, error, ran_s)
        steps = tuple(outcomes[i] for i in sorted(outcomes))
        if not self.failures:
            return ChainResult(True, steps, None)
        return ChainResult(False, steps, _first_failure(self.failures))


def _first_failure(failures: Sequence[DeliveryError]) -> DeliveryError:
    first = failures[0]
    retryable = any(f.retryable for f in failures)
    if first.retryable == retryable or not isinstance(first, StepFailed):
        return first
    # Same failure, but the chain as a whole is worth retrying for another step's sake.
    error = StepFailed(
        first.index, first.module, first.reason, destination=first.destination, retryable=True
    )
    error.__cause__ = first.__cause__
    return error

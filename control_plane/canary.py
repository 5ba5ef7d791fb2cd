"""How a running canary is doing, and whether it should be promoted or aborted by itself.

A pure judgement of the canary record (providers/rollout.py) and the gateways' registration
records, with no I/O, so that the status route, the automatic decider and the tests share it:

- The canary gateways are the live gateways whose labels match the selector. One *serves* the
  canary revision C when its snapshot revision is >= C and it refuses nothing.
- Abort when a canary gateway NACKs: it is at revision >= C and its `refused` list is not empty.
- Abort when the error rate of the canary gateways since the canary started (registration
  `stats`, less the counters recorded in `Canary.baseline` at the start) is over
  `max_error_rate`; judged only once they have served `min_requests` requests, so that two
  unlucky answers out of three do not end a canary.
- Promote when `promote_after_s` has passed since the start, at least one canary gateway is
  live, and every canary gateway serves C. A canary nobody serves is never promoted by itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from providers.rollout import Canary

AUTOMATIC = "control plane (automatic)"
MIN_REQUESTS = 20
MAX_NAMED = 5  # refusals named in one abort reason; the rest are counted


class CanarySettings(BaseSettings):
    """How often the control plane judges a running canary (`WH_CANARY_*`)."""

    model_config = SettingsConfigDict(env_prefix="WH_CANARY_", extra="ignore", frozen=True)

    check_s: float = Field(default=1.0, gt=0, le=3600,
                           description="seconds between two judgements of a running canary")
    min_requests: int = Field(default=MIN_REQUESTS, ge=1,
                              description="requests the canary gateways must have served "
                              "before their error rate is judged")


@dataclass(frozen=True, slots=True)
class Decision:
    action: Literal["promote", "abort"]
    reason: str


@dataclass(frozen=True, slots=True)
class CanaryGateway:
    id: str
    revision: int | None
    health: str
    refused: tuple[Mapping[str, Any], ...]
    requests: int  # since the canary started
    errors: int
    serving: bool  # at the canary revision or later, refusing nothing

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "revision": self.revision, "health": self.health,
                "serving": self.serving, "refused": [dict(r) for r in self.refused],
                "requests": self.requests, "errors": self.errors}


@dataclass(frozen=True, slots=True)
class Assessment:
    canary: Canary
    gateways: tuple[CanaryGateway, ...]
    requests: int
    errors: int
    decision: Decision | None
    waiting: str  # why nothing is decided yet; "" with a decision
    promote_in_s: float | None  # until the automatic promotion may happen; None: never by itself

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.canary.to_json(),
            "selector_text": self.canary.selector_text(),
            "gateways": [g.as_dict() for g in self.gateways],
            "requests": self.requests, "errors": self.errors, "error_rate": self.error_rate,
            "promote_in_s": self.promote_in_s, "waiting": self.waiting,
            "decision": None if self.decision is None else
            {"action": self.decision.action, "reason": self.decision.reason},
        }  # fmt: skip


def assess(canary: Canary, gateways: Iterable[Mapping[str, Any]], now: float,
           min_requests: int = MIN_REQUESTS) -> Assessment:
    """The canary's state given the gateways' registration records, and what to do about it."""
    rows = tuple(sorted((_row(canary, g) for g in gateways
                         if g.get("live", True) and canary.matches(_labels(g))),
                        key=lambda r: r.id))
    requests = sum(r.requests for r in rows)
    errors = sum(r.errors for r in rows)
    elapsed = max(0.0, now - canary.started)
    promote_in = (None if canary.promote_after_s is None
                  else max(0.0, canary.promote_after_s - elapsed))

    def result(decision: Decision | None, waiting: str = "") -> Assessment:
        return Assessment(canary, rows, requests, errors, decision, waiting, promote_in)

    nacks = [(r.id, ref) for r in rows
             if r.revision is not None and r.revision >= canary.revision for ref in r.refused]
    if nacks:
        return result(Decision("abort", _nack_reason(nacks)))
    limit = canary.max_error_rate
    if limit is not None and requests >= min_requests and errors / requests > limit:
        return result(Decision("abort", (
            f"error rate {errors / requests:.1%} ({errors} of {requests} requests since the "
            f"canary started, 5xx answers and verification failures) on canary gateways "
            f"{', '.join(r.id for r in rows)} is over the limit of {limit:.1%}")))
    if not rows:
        return result(None, f"no live gateway matches {canary.selector_text()}")
    behind = [r.id for r in rows if not r.serving]
    if behind:
        return result(None, f"waiting for {', '.join(behind)} to serve revision "
                            f"{canary.revision}")
    if promote_in is None:
        return result(None, "healthy; waiting for `whctl rollout promote` or `abort`")
    if promote_in > 0:
        return result(None, f"healthy; promotes itself in {promote_in:.0f}s")
    rate = "" if limit is None else f", error rate limit {limit:.1%}"
    return result(Decision("promote", (
        f"healthy for {canary.promote_after_s:g}s on {len(rows)} canary gateway(s) "
        f"({', '.join(r.id for r in rows)}): {errors} error(s) in {requests} request(s)"
        f"{rate}")))


def _row(canary: Canary, g: Mapping[str, Any]) -> CanaryGateway:
    gid = str(g.get("id", "?"))
    revision = _int_or_none(g.get("revision"))
    refused = tuple(r for r in _list(g.get("refused")) if isinstance(r, Mapping))
    requests, errors = _counters(g.get("stats"))
    base_requests, base_errors = canary.baseline.get(gid, (0, 0))
    if requests < base_requests or errors < base_errors:
        base_requests = base_errors = 0  # restarted since: its counters began again at zero
    requests, errors = requests - base_requests, errors - base_errors
    serving = revision is not None and revision >= canary.revision and not refused
    return CanaryGateway(gid, revision, str(g.get("health", "")), refused, requests,
                         min(errors, requests), serving)


def _nack_reason(nacks: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    named = [f"{gid} refused {ref.get('resource', '?')}: {ref.get('reason', '?')}"
             for gid, ref in nacks[:MAX_NAMED]]
    more = f" (and {len(nacks) - MAX_NAMED} more)" if len(nacks) > MAX_NAMED else ""
    return "canary gateway NACK: " + "; ".join(named) + more


def baseline(gateways: Iterable[Mapping[str, Any]]) -> dict[str, tuple[int, int]]:
    """Every live gateway's counters now: the zero of the canary's error rate."""
    return {str(g["id"]): _counters(g.get("stats")) for g in gateways
            if g.get("live", True) and "id" in g}


def _labels(g: Mapping[str, Any]) -> dict[str, str]:
    labels = g.get("labels")
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {}


def _counters(stats: object) -> tuple[int, int]:
    if not isinstance(stats, Mapping):
        return 0, 0
    return max(0, _int_or_none(stats.get("requests")) or 0), max(
        0, _int_or_none(stats.get("errors")) or 0)


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []

"""A canary rollout, as the config store records it and every reader sees it.

While a canary runs, the store holds one record (etcd: `{prefix}rollout/canary`; directory
store: `canary.json` in the published generation): the canary revision, the revision it started
from, and the label selector of the gateways that serve it. The canary's resources are written
like any apply's; a gateway whose labels do not match the selector holds that revision's changes
back and keeps serving what it had, until the canary is promoted (then it applies them) or
aborted (then the control plane writes their revert, and it drops them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

CANARY_FILE = ".canary.json"  # hidden: the file provider reads every other file as config
LABEL_RE = re.compile(r"[A-Za-z0-9._/-]{1,63}")


@dataclass(frozen=True, slots=True)
class Canary:
    revision: int  # the canary revision: what matching gateways serve
    base: int  # the promoted revision it started from: what the others keep serving
    selector: Mapping[str, str]
    started: float
    promote_after_s: float | None = None
    max_error_rate: float | None = None
    by: str = ""
    message: str = ""
    # Gateways' request and error counters when the canary started (id -> [requests, errors]):
    # the error rate is judged on what happened since.
    baseline: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """True when every `key=value` of the selector is among `labels`."""
        return all(labels.get(k) == v for k, v in self.selector.items())

    def selector_text(self) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(self.selector.items()))

    def to_json(self) -> dict[str, Any]:
        return {
            "revision": self.revision, "base": self.base, "selector": dict(self.selector),
            "started": self.started, "promote_after_s": self.promote_after_s,
            "max_error_rate": self.max_error_rate, "by": self.by, "message": self.message,
            "baseline": {k: list(v) for k, v in self.baseline.items()},
        }  # fmt: skip

    @classmethod
    def from_json(cls, raw: bytes | str | Mapping[str, Any]) -> Canary:
        """Parse a stored record; ValueError naming what is wrong."""
        try:
            d = json.loads(raw) if isinstance(raw, bytes | str) else raw
            if not isinstance(d, Mapping):
                raise ValueError("not a JSON object")
            selector = {str(k): str(v) for k, v in dict(d["selector"]).items()}
            baseline = {str(k): (int(v[0]), int(v[1]))
                        for k, v in dict(d.get("baseline") or {}).items()}
            return cls(
                revision=int(d["revision"]), base=int(d["base"]), selector=selector,
                started=float(d["started"]),
                promote_after_s=_opt_float(d.get("promote_after_s")),
                max_error_rate=_opt_float(d.get("max_error_rate")),
                by=str(d.get("by", "")), message=str(d.get("message", "")), baseline=baseline,
            )  # fmt: skip
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"invalid canary record: {exc}") from None


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def parse_selector(text: str) -> dict[str, str]:
    """`k=v[,k=v]` -> mapping; ValueError naming the part that is not `key=value`."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"{part!r} is not key=value")
        if not LABEL_RE.fullmatch(key) or not LABEL_RE.fullmatch(value):
            raise ValueError(f"{part!r}: keys and values are 1-63 of A-Z a-z 0-9 . _ / -")
        out[key] = value
    if not out:
        raise ValueError("empty selector: give at least one key=value")
    return out

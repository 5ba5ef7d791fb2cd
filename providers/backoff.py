"""Exponential backoff with full jitter, for every reconnect and retry loop."""

from __future__ import annotations

import random


def backoff(attempt: int, base: float = 0.2, cap: float = 10.0) -> float:
    """Seconds to wait before retry number `attempt` (0-based): uniform in [0, min(cap, base·2ⁿ)].

    Full jitter spreads a fleet of gateways that lost the same store, so they do not all
    reconnect in the same instant.
    """
    return random.uniform(0, min(cap, base * 2 ** min(attempt, 30)))

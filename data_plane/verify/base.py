"""The shapes every verification scheme shares: the request it sees, its failure, its answer."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple


class Inbound(NamedTuple):
    """One webhook request as the gateway received it.

    `headers` has lower-case names, so schemes look headers up case-insensitively by
    lower-casing their own names once at build time. `now` is passed in rather than read
    from the clock so a whole request is judged against one instant (and tests are exact).

    A named tuple rather than a frozen dataclass: as immutable, and built in a fifth of the
    time (one is built per request; a frozen init sets each field through `object.__setattr__`).
    """

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes
    client_ip: str
    now: float


class VerifyFailed(Exception):
    """The request is not authentic or not allowed; the gateway answers 401.

    `reason` goes to logs, metrics and sometimes the caller, so it is written for an operator
    and never carries a secret or an expected signature: only the name of what was wrong.
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __repr__(self) -> str:
        return f"VerifyFailed({self.reason!r})"


@dataclass(frozen=True, slots=True)
class Answer:
    """A reply the scheme gives in place of delivering (a provider's endpoint challenge)."""

    status: int
    body: bytes
    content_type: str


Verifier = Callable[[Inbound], Answer | None]
"""Returns None to go on delivering, an Answer to reply at once, or raises VerifyFailed."""

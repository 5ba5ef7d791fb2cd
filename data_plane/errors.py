"""The data plane's errors: what a delivery step, a chain or the SSRF guard can fail with.

    DataPlaneError
     └── DeliveryError            retryable: bool, destination: str
          ├── StepFailed          a chain step failed (index, module, reason)
          ├── ChainTimeout        the chain's total timeout cut it (always retryable)
          ├── DestinationFull     the destination takes nothing more for now (503 to a sync sender)
          └── SsrfBlocked         the destination is not allowed (never retryable)

`retryable` tells the worker whether trying again later can succeed: timeouts, connection
errors, HTTP 5xx/408/429 can; 4xx, refused destinations and config problems cannot.

`destination` names where the step delivers without revealing anything secret: the module and
the connection ("http:acme/acme-api", "redis_stream:events" for a global connection), "file:PATH"
or "log". Messages are written for operators: step index, module, destination and what went
wrong (an HTTP status, an exception kind), never a URL path or query (a Slack or Discord
webhook URL *is* a credential), a header value or a body.
"""

from __future__ import annotations

from typing import Any

from providers.resources import GLOBAL
from providers.step_spec import FileStep, LogStep, RelayStep


class DataPlaneError(Exception):
    """Base of every error the data plane raises on purpose."""


class DeliveryError(DataPlaneError):
    """Delivering to one destination failed.

    A subclass may fix `retryable` for all its instances: `class X(DeliveryError,
    retryable=False)`; otherwise it is given per instance.
    """

    retryable: bool = True

    def __init_subclass__(cls, *, retryable: bool | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if retryable is not None:
            cls.retryable = retryable

    def __init__(self, reason: str, *, destination: str, retryable: bool | None = None) -> None:
        super().__init__(f"{destination}: {reason}")
        self.reason = reason
        self.destination = destination
        if retryable is not None:
            self.retryable = retryable

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r}, retryable={self.retryable})"


class StepFailed(DeliveryError):
    """Step `index` of a chain failed; `__cause__` holds the module's own error, if any."""

    def __init__(
        self, index: int, module: str, reason: str, *, destination: str, retryable: bool
    ) -> None:
        super().__init__(reason, destination=destination, retryable=retryable)
        self.index = index
        self.module = module
        self.args = (f"step {index} ({module}) to {destination} failed: {reason}",)


class ChainTimeout(DeliveryError, retryable=True):
    """The chain's total timeout expired; `running` are the steps it cut (index, module)."""

    def __init__(
        self, timeout_s: float, running: tuple[tuple[int, str], ...], *, destination: str
    ) -> None:
        steps = ", ".join(f"step {i} ({m})" for i, m in running) or "no step"
        reason = f"chain timed out after {timeout_s:g}s; cut: {steps}"
        super().__init__(reason, destination=destination)
        self.timeout_s = timeout_s
        self.running = running


class DestinationFull(DeliveryError, retryable=True):
    """The destination is at its bound (a relay channel's buffer): nothing was written. A
    sync sender is answered 503 with `Retry-After`, not 502: trying later will work."""

    def __init__(self, reason: str, *, destination: str, retry_after_s: float) -> None:
        super().__init__(reason, destination=destination)
        self.retry_after_s = retry_after_s


class SsrfBlocked(DeliveryError, retryable=False):
    """The destination resolves to an address the SSRF guard refuses."""


def destination_of(step: Any, connections: Any) -> str:
    """The `destination` label of a step; `connections` is the endpoint's name -> Connection.

    A namespaced connection reads "module:namespace/name", a global one "module:name".
    """
    if isinstance(step, LogStep):
        return "log"
    if isinstance(step, FileStep):
        return f"file:{step.config.path}"
    if isinstance(step, RelayStep):  # no connection: the gateway's own Redis
        return f"relay:{step.config.channel}"
    name: str = step.connection
    conn = connections.get(name)
    namespace = conn.metadata.namespace if conn is not None else None
    if namespace is None or namespace == GLOBAL:
        return f"{step.module}:{name}"
    return f"{step.module}:{namespace}/{name}"

"""The control plane's errors, and the one table that turns each into an HTTP answer.

    ControlPlaneError          base; `detail()` is the answer's body
    ├── Unauthorized           401: no token, an unknown, revoked or expired one
    ├── Forbidden              403: the token may not do this (may name documents)
    ├── NotFound               404
    ├── Invalid                422: documents that break the rules, every problem named
    ├── BadInput               422: a body, path or query that is not what the route takes
    ├── TooLarge               413: a body over the size limit
    └── StoreError             the config store
        ├── Conflict           409: the config moved since it was read
        │   └── CanaryRunning  409: a canary runs; promote or abort it first
        ├── StoreRefused       413: the store would not take one transaction, with the fix
        └── StoreFailed        502: the store answered with an error we do not know

Errors of the config layer that escape (`providers.errors`) are in the table too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from providers.errors import DocumentError, DocumentErrors, ProviderError
from providers.rollout import Canary


class ControlPlaneError(Exception):
    def detail(self) -> Any:
        return str(self)


class Unauthorized(ControlPlaneError):
    headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(ControlPlaneError):
    def __init__(self, message: str, errors: Sequence[DocumentError] = ()) -> None:
        self.errors = list(errors)
        super().__init__(message)

    def detail(self) -> Any:
        if not self.errors:
            return str(self)
        return {"error": str(self), "errors": [e.as_dict() for e in self.errors]}


class NotFound(ControlPlaneError):
    pass


class Invalid(ControlPlaneError):
    def __init__(self, errors: Sequence[DocumentError]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(str(e) for e in errors))

    def detail(self) -> Any:
        return {"errors": [e.as_dict() for e in self.errors]}


class BadInput(ControlPlaneError):
    """Answered in FastAPI's own shape for request validation, which whctl already prints.

    Each problem is (location, message); a location starts with `body`, `path` or `query`.
    """

    def __init__(self, problems: Sequence[tuple[Sequence[str | int], str]]) -> None:
        self.problems = [(tuple(loc), msg) for loc, msg in problems]
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {m}" for loc, m in self.problems))

    def detail(self) -> Any:
        return [{"loc": list(loc), "msg": msg, "type": "value_error"}
                for loc, msg in self.problems]


class TooLarge(ControlPlaneError):
    pass


class StoreError(ControlPlaneError):
    pass


class Conflict(StoreError):
    def __init__(self, message: str, current_revision: int) -> None:
        self.current_revision = current_revision
        super().__init__(message)

    def detail(self) -> Any:
        return {"error": str(self), "current_revision": self.current_revision}


class CanaryRunning(Conflict):
    """A write while a canary runs: there is one canary at a time, and nothing else meanwhile."""

    def __init__(self, canary: Canary, current_revision: int) -> None:
        self.canary = canary
        super().__init__(
            f"canary revision {canary.revision} ({canary.selector_text()}, by {canary.by}) is "
            "running: promote it or abort it first (whctl rollout promote | abort)",
            current_revision)

    def detail(self) -> Any:
        c = self.canary
        return {**super().detail(), "canary": {
            "revision": c.revision, "base": c.base, "selector": dict(c.selector), "by": c.by,
            "started": c.started}}


class StoreRefused(StoreError):
    pass


class StoreFailed(StoreError):
    pass


STATUS: Mapping[type[Exception], int] = {
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    StoreRefused: 413,
    Invalid: 422,
    BadInput: 422,
    DocumentError: 422,
    DocumentErrors: 422,
    StoreFailed: 502,
    ProviderError: 503,  # the store cannot be reached: try again later
}


def status_of(exc: Exception) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    raise LookupError(type(exc).__name__)


async def _answer(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, ControlPlaneError):
        detail = exc.detail()
    elif isinstance(exc, DocumentErrors):
        detail = {"errors": [e.as_dict() for e in exc.errors]}
    elif isinstance(exc, DocumentError):
        detail = {"errors": [exc.as_dict()]}
    else:
        detail = f"config store unavailable: {exc}"
    return JSONResponse({"detail": detail}, status_of(exc), getattr(exc, "headers", None))


def install_handlers(app: FastAPI) -> None:
    # Starlette looks handlers up along the exception's MRO, so the bases cover their leaves.
    for cls in (ControlPlaneError, ProviderError):
        app.add_exception_handler(cls, _answer)

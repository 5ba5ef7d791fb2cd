"""The control plane's HTTP API (FastAPI): `/v1/...`, `/healthz`, `/metrics`, OpenAPI at `/docs`.

Every `/v1` call needs `Authorization: Bearer <token>`: the admin token, or a namespace token
that reads and writes only its namespace.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field

from control_plane.service import ControlPlane, Forbidden, Invalid, NotFound, Outcome
from control_plane.store import Conflict, Store, StoreRefused
from control_plane.tokens import Principal, Tokens
from providers.errors import ProviderError
from providers.model import NAME_PATTERN
from providers.resources import GLOBAL, KINDS, ResourceKey


class ApplyRequest(BaseModel):
    resources: list[dict[str, Any]] = Field(description="resource documents")
    dry_run: bool = False
    prune: bool = False
    expected_revision: int | None = None
    message: str = ""
    sources: list[str] | None = Field(default=None, description="label per document")


class DiffRequest(BaseModel):
    resources: list[dict[str, Any]]
    prune: bool = False
    sources: list[str] | None = None


class RollbackRequest(BaseModel):
    namespace: str = Field(pattern=NAME_PATTERN)
    to_revision: int | None = None
    message: str = ""


class TokenRequest(BaseModel):
    namespace: str = Field(pattern=NAME_PATTERN)


class ChangeSummary(BaseModel):
    op: str
    kind: str
    namespace: str | None
    name: str


class ApplyAnswer(BaseModel):
    revision: int
    dry_run: bool = False
    changes: list[ChangeSummary]


async def _principal(request: Request) -> Principal:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, "missing bearer token", {"WWW-Authenticate": "Bearer"})
    tokens: Tokens = request.app.state.tokens
    who = await tokens.authenticate(token.strip())
    if who is None:
        raise HTTPException(401, "invalid token", {"WWW-Authenticate": "Bearer"})
    return who


Who = Annotated[Principal, Depends(_principal)]


def create_api(store: Store, admin_token: str | None,
               allow_plaintext_secrets: bool = False) -> FastAPI:
    cp = ControlPlane(store, allow_plaintext_secrets)
    tokens = Tokens(store, admin_token)
    registry = CollectorRegistry()
    applies = Counter("whplane_applies", "Applies by result", ["result"], registry=registry)
    apply_seconds = Histogram("whplane_apply_duration_seconds", "Apply latency",
                              registry=registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await store.close()

    app = FastAPI(title="whplane control plane", version="1", lifespan=lifespan)
    app.state.control_plane = cp
    app.state.tokens = tokens

    @app.exception_handler(Invalid)
    async def invalid(request: Request, exc: Invalid) -> JSONResponse:
        return JSONResponse({"detail": {"errors": [e.as_dict() for e in exc.errors]}}, 422)

    @app.exception_handler(Conflict)
    async def conflict(request: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse(
            {"detail": {"error": str(exc), "current_revision": exc.current_revision}}, 409)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 403)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 404)

    @app.exception_handler(StoreRefused)
    async def refused(request: Request, exc: StoreRefused) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 413)

    @app.exception_handler(ProviderError)
    async def unavailable(request: Request, exc: ProviderError) -> JSONResponse:
        return JSONResponse({"detail": f"config store unavailable: {exc}"}, 503)

    async def timed(result: str, op: Callable[[], Awaitable[Any]]) -> Any:
        t0 = time.perf_counter()
        try:
            out = await op()
        except Exception as exc:
            applies.labels(type(exc).__name__.lower()).inc()
            raise
        applies.labels(result).inc()
        apply_seconds.observe(time.perf_counter() - t0)
        return out

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    @app.post("/v1/apply", response_model=ApplyAnswer)
    async def apply(body: ApplyRequest, who: Who) -> dict[str, Any]:
        outcome: Outcome = await timed("ok", lambda: cp.apply(
            body.resources, who, sources=body.sources, dry_run=body.dry_run, prune=body.prune,
            expected_revision=body.expected_revision, message=body.message))
        return outcome.as_dict()

    @app.post("/v1/diff")
    async def diff(body: DiffRequest, who: Who) -> dict[str, Any]:
        outcome = await cp.diff(body.resources, who, sources=body.sources, prune=body.prune)
        return {"revision": outcome.revision, "changes": [c.as_dict() for c in outcome.changes]}

    @app.get("/v1/resources")
    async def list_resources(who: Who, kind: str | None = None,
                             namespace: str | None = None) -> dict[str, Any]:
        if kind is not None and kind not in KINDS:
            raise HTTPException(422, f"unknown kind {kind!r}; expected one of {KINDS}")
        revision, items = await cp.resources(who, kind, namespace)
        return {"revision": revision, "items": items}

    def key_of(kind: str, namespace: str, name: str) -> ResourceKey:
        if kind not in KINDS:
            raise HTTPException(422, f"unknown kind {kind!r}; expected one of {KINDS}")
        return ResourceKey(kind, None if namespace == GLOBAL else namespace, name)

    @app.get("/v1/resources/{kind}/{namespace}/{name}")
    async def get_resource(kind: str, namespace: str, name: str, who: Who) -> dict[str, Any]:
        return await cp.resource(key_of(kind, namespace, name), who)

    @app.delete("/v1/resources/{kind}/{namespace}/{name}", response_model=ApplyAnswer)
    async def delete_resource(kind: str, namespace: str, name: str, who: Who,
                              message: str = "") -> dict[str, Any]:
        key = key_of(kind, namespace, name)
        outcome: Outcome = await timed("ok", lambda: cp.delete(key, who, message))
        return outcome.as_dict()

    @app.get("/v1/history")
    async def history(who: Who, namespace: str | None = None,
                      limit: int = 50) -> dict[str, Any]:
        return {"items": await cp.history(who, namespace, max(1, min(limit, 1000)))}

    @app.get("/v1/history/{revision}")
    async def history_record(revision: int, who: Who) -> dict[str, Any]:
        return await cp.history_record(revision, who)

    @app.post("/v1/rollback", response_model=ApplyAnswer)
    async def rollback(body: RollbackRequest, who: Who) -> dict[str, Any]:
        outcome: Outcome = await timed("ok", lambda: cp.rollback(
            body.namespace, who, body.to_revision, body.message))
        return outcome.as_dict()

    @app.get("/v1/gateways")
    async def gateways(who: Who) -> dict[str, Any]:
        return {"items": await cp.gateways()}

    @app.get("/v1/rollout/status")
    async def rollout(who: Who, revision: int | None = None) -> dict[str, Any]:
        return await cp.rollout(revision)

    @app.post("/v1/tokens")
    async def create_token(body: TokenRequest, who: Who) -> dict[str, str]:
        if not who.admin:
            raise Forbidden("only the admin token creates tokens")
        return {"token": await tokens.create(body.namespace, who), "namespace": body.namespace}

    return app

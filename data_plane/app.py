"""The gateway's ASGI app: the webhook route as plain ASGI (the hot path), everything else
(`/healthz`, `/readyz`, `/status`, `/metrics`) through FastAPI, with one lifespan that starts
and stops the `Gateway`."""

from __future__ import annotations

import gc
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse

from data_plane.gateway import Gateway
from data_plane.ingest import Ingest
from data_plane.metrics import CONTENT_TYPE
from data_plane.settings import GatewaySettings

WEBHOOK_PREFIX = "/webhook/"


class GatewayApp:
    """Routes `/webhook/...` straight to `Ingest`; the rest, lifespan included, to FastAPI."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.ingest = Ingest(gateway)
        self.api = _api(gateway)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith(WEBHOOK_PREFIX):
            await self.ingest(scope, receive, send)
        else:
            await self.api(scope, receive, send)


def _api(gw: Gateway) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gw.start()
        # Everything loaded so far (framework, schemas, config) lives as long as the process:
        # keep the cyclic GC from rescanning it during every full collection under load.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await gw.stop()

    api = FastAPI(title="whplane gateway", lifespan=lifespan, docs_url=None, redoc_url=None)

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @api.get("/readyz")
    async def readyz() -> JSONResponse:
        if gw.holder.ready:
            snap = gw.holder.current
            return JSONResponse({"status": "ready", "revision": snap.revision,
                                 "since": snap.built_at})
        return JSONResponse({"status": "not ready: no config loaded yet"}, status_code=503)

    @api.get("/status")
    async def status() -> dict[str, Any]:
        return gw.status()

    @api.get("/metrics")
    async def metrics() -> Response:
        return Response(gw.metrics.render(), media_type=CONTENT_TYPE)

    return api


def create_app(settings: GatewaySettings, env: Mapping[str, str] | None = None) -> GatewayApp:
    return GatewayApp(Gateway(settings, dict(os.environ) if env is None else env))


def app_from_env() -> GatewayApp:
    """Factory for `uvicorn --factory` (several worker processes): settings from `WH_*`."""
    settings = GatewaySettings()
    if settings.workers > 1 and "gateway_id" in settings.model_fields_set:
        # Each process registers and consumes on its own: an id given to all would collide.
        settings = settings.model_copy(
            update={"gateway_id": f"{settings.gateway_id}-{os.getpid()}"})
    return create_app(settings)

"""The gateway's ASGI app: the webhook route as plain ASGI (the hot path), the relay's
connector routes (`/connect/...`, HTTP and WebSocket, data_plane/relay/routes.py) as plain ASGI
too, everything else (`/healthz`, `/readyz`, `/status`, `/metrics`) through Starlette, with one
lifespan that starts and stops the `Gateway` and the relay hub; and how uvicorn must serve it
(`server_options`)."""

from __future__ import annotations

import gc
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from data_plane.edge import WEBHOOK_PREFIX, EdgeGuard, EdgeLimits
from data_plane.gateway import Gateway
from data_plane.ingest import Ingest
from data_plane.metrics import CONTENT_TYPE
from data_plane.relay.hub import RelayHub
from data_plane.relay.routes import CONNECT_PREFIX, RelayRoutes
from data_plane.relay.wiring import relay_hub
from data_plane.settings import GatewaySettings


class GatewayApp:
    """Routes `/webhook/...` straight to `Ingest`; the rest, lifespan included, to Starlette."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        settings = gateway.settings
        self.ingest = Ingest(gateway, max_concurrent=settings.max_concurrent_requests)
        # Read by data_plane.edge.EdgeProtocol, the connection layer uvicorn runs this app on.
        self.edge = EdgeGuard(edge_limits(settings), lambda: gateway.holder.current.revision)
        _edge_metrics(gateway, self.edge)
        self.relay = relay_hub(gateway)
        self.connect = RelayRoutes(self.relay, lambda: gateway.holder.ready, self.edge.draining)
        self.api = _api(gateway, self.edge, self.relay)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" and scope["path"].startswith(WEBHOOK_PREFIX):
            await self.ingest(scope, receive, send)
        elif kind in ("http", "websocket") and scope["path"].startswith(CONNECT_PREFIX):
            await self.connect(scope, receive, send)
        else:
            await self.api(scope, receive, send)


def _api(gw: Gateway, edge: EdgeGuard, relay: RelayHub | None) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gw.start()
        if relay is not None:
            relay.start()
        # Everything loaded so far (framework, schemas, config) lives as long as the process:
        # keep the cyclic GC from rescanning it during every full collection under load.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            if relay is not None:  # before the gateway closes the Redis it releases into
                await relay.aclose()
            await gw.stop()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        if gw.holder.ready:
            snap = gw.holder.current
            return JSONResponse({"status": "ready", "revision": snap.revision,
                                 "since": snap.built_at})
        return JSONResponse({"status": "not ready: no config loaded yet"}, status_code=503)

    async def status(request: Request) -> Response:
        return JSONResponse({**gw.status(), "edge": edge.stats()})

    async def metrics(request: Request) -> Response:
        return Response(gw.metrics.render(), media_type=CONTENT_TYPE)

    # Plain Starlette: four routes need no request models or OpenAPI, and FastAPI alone
    # would be a third of a gateway's start-up imports.
    return Starlette(
        routes=[Route("/healthz", healthz), Route("/readyz", readyz), Route("/status", status),
                Route("/metrics", metrics)],
        exception_handlers={HTTPException: _http_error}, lifespan=lifespan)


async def _http_error(request: Request, exc: Exception) -> Response:
    """404, 405, ... as JSON `{"detail": ...}`, as they always were."""
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def _edge_metrics(gw: Gateway, edge: EdgeGuard) -> None:
    gw.metrics.probe(
        {"whplane_edge_open_connections": ("Open connections", lambda: edge.open)},
        {
            "whplane_edge_refused_connections": (
                "Connections refused over the process or per-address cap (503)",
                lambda: edge.refused),
            "whplane_edge_head_timeouts": (
                "Requests whose head did not arrive in time (408)", lambda: edge.head_timeouts),
            "whplane_edge_body_timeouts": (
                "Requests whose body did not arrive in time (408)", lambda: edge.body_timeouts),
            "whplane_edge_heads_too_large": (
                "Requests whose head was over the limit (431)", lambda: edge.heads_too_large),
        },
    )  # fmt: skip


def edge_limits(settings: GatewaySettings) -> EdgeLimits:
    return EdgeLimits(
        max_connections=settings.max_connections,
        max_connections_per_ip=settings.max_connections_per_ip,
        max_header_bytes=settings.max_header_bytes,
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        keepalive_timeout_s=settings.keepalive_timeout_s,
    )


def server_options(settings: GatewaySettings) -> dict[str, Any]:
    """uvicorn options for serving the gateway, this factory's processes included.

    Proxy headers off: uvicorn would otherwise believe X-Forwarded-For from 127.0.0.1 and
    rewrite the client address before `ip_allow` sees it; only a webhook's `trusted_proxies`
    may vouch for a forwarded address. No `limit_concurrency`: it counts idle and trickling
    connections, which would let them refuse everyone; `EdgeProtocol` caps those instead.
    """
    return {
        "host": settings.host,
        "port": settings.port,
        "http": "data_plane.edge:EdgeProtocol",
        "proxy_headers": False,
        "timeout_keep_alive": settings.keepalive_timeout_s,
        "log_config": None,
        "access_log": False,
    }


def create_app(settings: GatewaySettings, env: Mapping[str, str] | None = None) -> GatewayApp:
    return GatewayApp(Gateway(settings, dict(os.environ) if env is None else env))


def app_from_env() -> GatewayApp:
    """Factory for `uvicorn --factory` (several worker processes): settings from `WH_*`.

    Serve it with `server_options` (as `whplane gateway --workers N` does): a bare
    `uvicorn --factory` trusts X-Forwarded-For from loopback and runs without the edge limits.
    """
    settings = GatewaySettings()
    if settings.workers > 1 and "gateway_id" in settings.model_fields_set:
        # Each process registers and consumes on its own: an id given to all would collide.
        settings = settings.model_copy(
            update={"gateway_id": f"{settings.gateway_id}-{os.getpid()}"})
    return create_app(settings)

"""The control plane's HTTP API (FastAPI): `/v1/...`, `/healthz`, `/metrics`, OpenAPI at `/docs`.

Every `/v1` call needs `Authorization: Bearer <token>`: the admin token, or a namespace token
that reads and writes only its namespace. Who may call which route is `authz.py`; the routes
are in `routes/`; errors become answers through the one table in `errors.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from control_plane.authz import authorize, check_routes
from control_plane.canary import CanarySettings
from control_plane.canary_watch import CanaryWatch
from control_plane.errors import install_handlers
from control_plane.metrics import ApiMetrics
from control_plane.routes import ROUTERS
from control_plane.service import ControlPlane
from control_plane.settings import ApiLimits
from control_plane.store import Store
from control_plane.tokens import Tokens


def create_api(store: Store, admin_token: str | None, allow_plaintext_secrets: bool = False,
               *, max_request_bytes: int | None = None,
               canary: CanarySettings | None = None) -> FastAPI:
    """The app over `store`; `max_request_bytes` defaults to WH_MAX_REQUEST_BYTES or 16 MiB,
    `canary` (how running canaries are judged) to the WH_CANARY_* environment."""
    canary = canary if canary is not None else CanarySettings()
    service = ControlPlane(store, allow_plaintext_secrets, canary.min_requests)

    metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        watch = asyncio.create_task(CanaryWatch(service, canary, metrics).run(),
                                    name="canary-watch")
        try:
            yield
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
            await store.close()

    app = FastAPI(title="whplane control plane", version="1", lifespan=lifespan,
                  dependencies=[Depends(authorize)])
    app.state.control_plane = service
    app.state.tokens = Tokens(store, admin_token)
    app.state.metrics = metrics
    app.state.max_request_bytes = (max_request_bytes if max_request_bytes is not None
                                   else ApiLimits().max_request_bytes)
    install_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    check_routes(app)
    return app

"""The API's routes, one router per area; `create_api` includes them all."""

from __future__ import annotations

from control_plane.routes import config, fleet, history, ops, rollout, tokens

ROUTERS = (ops.router, config.router, history.router, fleet.router, rollout.router,
           tokens.router)

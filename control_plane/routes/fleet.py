"""The gateways and how far a revision has rolled out to them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from control_plane.authz import Who
from control_plane.routes.deps import MAX_REVISION, Service

router = APIRouter(prefix="/v1")


@router.get("/gateways")
async def gateways(who: Who, cp: Service) -> dict[str, Any]:
    return {"items": await cp.gateways(who)}


@router.get("/rollout/status")
async def rollout_status(
    who: Who, cp: Service,
    revision: Annotated[int | None, Query(ge=0, le=MAX_REVISION)] = None,
) -> dict[str, Any]:
    return await cp.rollout(who, revision)

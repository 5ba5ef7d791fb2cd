"""The gateways, as they registered themselves."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from control_plane.authz import Who
from control_plane.routes.deps import Service

router = APIRouter(prefix="/v1")


@router.get("/gateways")
async def gateways(who: Who, cp: Service) -> dict[str, Any]:
    return {"items": await cp.gateways(who)}

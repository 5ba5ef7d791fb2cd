"""History of revisions, and rollback of one namespace to an earlier one."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from control_plane.authz import Who
from control_plane.body import Body, openapi_body
from control_plane.routes.deps import MAX_REVISION, ApplyAnswer, Metrics, Service
from providers.model import NAME_PATTERN

router = APIRouter(prefix="/v1")


class RollbackRequest(BaseModel):
    namespace: str = Field(pattern=NAME_PATTERN)
    to_revision: int | None = Field(default=None, ge=0, le=MAX_REVISION)
    message: str = ""


@router.get("/history")
async def history(who: Who, cp: Service, namespace: str | None = None,
                  limit: int = 50) -> dict[str, Any]:
    return {"items": await cp.history(who, namespace, max(1, min(limit, 1000)))}


@router.get("/history/{revision}")
async def history_record(revision: Annotated[int, Path(ge=0, le=MAX_REVISION)], who: Who,
                         cp: Service) -> dict[str, Any]:
    return await cp.history_record(revision, who)


@router.post("/rollback", response_model=ApplyAnswer, openapi_extra=openapi_body(RollbackRequest))
async def rollback(body: Annotated[RollbackRequest, Body(RollbackRequest)], who: Who,
                   cp: Service, metrics: Metrics) -> dict[str, Any]:
    outcome = await metrics.timed(lambda: cp.rollback(
        body.namespace, who, body.to_revision, body.message))
    return outcome.as_dict()

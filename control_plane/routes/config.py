"""Config: apply, diff, and resources read and deleted one by one."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from control_plane.authz import Who
from control_plane.body import Body, openapi_body
from control_plane.errors import BadInput
from control_plane.routes.deps import MAX_REVISION, ApplyAnswer, Metrics, Service
from providers.resources import GLOBAL, KINDS, ResourceKey

router = APIRouter(prefix="/v1")


class ApplyRequest(BaseModel):
    resources: list[dict[str, Any]] = Field(description="resource documents")
    dry_run: bool = False
    prune: bool = False
    expected_revision: int | None = Field(default=None, ge=0, le=MAX_REVISION)
    message: str = ""
    sources: list[str] | None = Field(default=None, description="label per document")


class DiffRequest(BaseModel):
    resources: list[dict[str, Any]]
    prune: bool = False
    sources: list[str] | None = None


@router.post("/apply", response_model=ApplyAnswer, openapi_extra=openapi_body(ApplyRequest))
async def apply(body: Annotated[ApplyRequest, Body(ApplyRequest)], who: Who, cp: Service,
                metrics: Metrics) -> dict[str, Any]:
    outcome = await metrics.timed(lambda: cp.apply(
        body.resources, who, sources=body.sources, dry_run=body.dry_run, prune=body.prune,
        expected_revision=body.expected_revision, message=body.message))
    return outcome.as_dict()


@router.post("/diff", openapi_extra=openapi_body(DiffRequest))
async def diff(body: Annotated[DiffRequest, Body(DiffRequest)], who: Who,
               cp: Service) -> dict[str, Any]:
    outcome = await cp.diff(body.resources, who, sources=body.sources, prune=body.prune)
    return {"revision": outcome.revision, "changes": [c.as_dict() for c in outcome.changes]}


@router.get("/resources")
async def list_resources(who: Who, cp: Service, kind: str | None = None,
                         namespace: str | None = None) -> dict[str, Any]:
    if kind is not None:
        _check_kind(kind, "query")
    revision, items = await cp.resources(who, kind, namespace)
    return {"revision": revision, "items": items}


@router.get("/resources/{kind}/{namespace}/{name}")
async def get_resource(kind: str, namespace: str, name: str, cp: Service) -> dict[str, Any]:
    return await cp.resource(_key(kind, namespace, name))


@router.delete("/resources/{kind}/{namespace}/{name}", response_model=ApplyAnswer)
async def delete_resource(kind: str, namespace: str, name: str, who: Who, cp: Service,
                          metrics: Metrics, message: str = "") -> dict[str, Any]:
    key = _key(kind, namespace, name)
    outcome = await metrics.timed(lambda: cp.delete(key, who, message))
    return outcome.as_dict()


def _check_kind(kind: str, where: str) -> None:
    if kind not in KINDS:
        raise BadInput([((where, "kind"),
                         f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")])


def _key(kind: str, namespace: str, name: str) -> ResourceKey:
    _check_kind(kind, "path")
    return ResourceKey(kind, None if namespace == GLOBAL else namespace, name)

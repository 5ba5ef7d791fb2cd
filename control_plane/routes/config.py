"""Config: apply, diff, and resources read and deleted one by one."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from control_plane.authz import Who
from control_plane.body import Body, openapi_body
from control_plane.errors import BadInput
from control_plane.routes.deps import MAX_REVISION, ApplyAnswer, Metrics, Service
from control_plane.service import CanaryPlan
from providers.resources import GLOBAL, KINDS, ResourceKey
from providers.rollout import parse_selector

router = APIRouter(prefix="/v1")
MAX_WINDOW_S = 30 * 86400.0


class ApplyRequest(BaseModel):
    resources: list[dict[str, Any]] = Field(description="resource documents")
    dry_run: bool = False
    prune: bool = False
    expected_revision: int | None = Field(default=None, ge=0, le=MAX_REVISION)
    message: str = ""
    sources: list[str] | None = Field(default=None, description="label per document")
    canary: str | dict[str, str] | None = Field(
        default=None, description="start a canary: the label selector (`k=v,k2=v2` or a "
        "mapping) of the gateways that serve this revision first; admin only")
    promote_after_s: float | None = Field(
        default=None, gt=0, le=MAX_WINDOW_S,
        description="with canary: promote by itself after this many healthy seconds")
    max_error_rate: float | None = Field(
        default=None, ge=0, le=1,
        description="with canary: abort by itself when the canary gateways' error rate (5xx "
        "answers and verification failures) goes over this fraction")

    def canary_plan(self) -> CanaryPlan | None:
        if self.canary is None:
            extra = [f for f in ("promote_after_s", "max_error_rate")
                     if getattr(self, f) is not None]
            if extra:
                raise BadInput([(("body", f), "only with canary") for f in extra])
            return None
        try:
            if isinstance(self.canary, str):
                selector = parse_selector(self.canary)
            else:
                # Item by item: a value holding `,` or `=` must not become a second label.
                selector = {k: v for k, v in self.canary.items()
                            if parse_selector(f"{k}={v}") == {k: v}}
                if len(selector) != len(self.canary) or not selector:
                    raise ValueError("keys and values are 1-63 of A-Z a-z 0-9 . _ / -")
        except ValueError as exc:
            raise BadInput([(("body", "canary"), str(exc))]) from None
        return CanaryPlan(selector, self.promote_after_s, self.max_error_rate)


class DiffRequest(BaseModel):
    resources: list[dict[str, Any]]
    prune: bool = False
    sources: list[str] | None = None


@router.post("/apply", response_model=ApplyAnswer, openapi_extra=openapi_body(ApplyRequest))
async def apply(body: Annotated[ApplyRequest, Body(ApplyRequest)], who: Who, cp: Service,
                metrics: Metrics) -> dict[str, Any]:
    canary = body.canary_plan()
    outcome = await metrics.timed(lambda: cp.apply(
        body.resources, who, sources=body.sources, dry_run=body.dry_run, prune=body.prune,
        expected_revision=body.expected_revision, message=body.message, canary=canary))
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

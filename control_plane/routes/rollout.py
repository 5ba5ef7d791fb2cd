"""How far a revision has rolled out, and the running canary: its status, promote, abort."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ValidationError

from control_plane.authz import Who
from control_plane.body import openapi_body, parse_json, read_limited
from control_plane.errors import BadInput
from control_plane.routes.deps import MAX_REVISION, ApplyAnswer, Metrics, Service

router = APIRouter(prefix="/v1/rollout")


class DecisionRequest(BaseModel):
    message: str = ""


async def _decision(request: Request, who: Who) -> DecisionRequest:
    # The body is optional: `POST /v1/rollout/promote` alone is a complete request.
    raw = await read_limited(request, request.app.state.max_request_bytes)
    if not raw.strip():
        return DecisionRequest()
    try:
        return DecisionRequest.model_validate(parse_json(raw))
    except ValidationError as exc:
        raise BadInput([(("body", *e["loc"]), e["msg"]) for e in exc.errors(
            include_url=False, include_context=False, include_input=False)]) from None


Decision = Annotated[DecisionRequest, Depends(_decision)]
OPTIONAL_BODY = {"requestBody": {**openapi_body(DecisionRequest)["requestBody"], "required": False}}


@router.get("/status")
async def rollout_status(
    who: Who, cp: Service,
    revision: Annotated[int | None, Query(ge=0, le=MAX_REVISION)] = None,
) -> dict[str, Any]:
    answer = await cp.rollout(who, revision)
    return {**answer, "canary": await cp.canary_status(who)}


@router.post("/promote", response_model=ApplyAnswer, openapi_extra=OPTIONAL_BODY)
async def promote(body: Decision, who: Who, cp: Service, metrics: Metrics) -> dict[str, Any]:
    outcome = await metrics.timed(lambda: cp.promote(who, body.message))
    metrics.canary_decisions.labels("promote", "operator").inc()
    return outcome.as_dict()


@router.post("/abort", response_model=ApplyAnswer, openapi_extra=OPTIONAL_BODY)
async def abort(body: Decision, who: Who, cp: Service, metrics: Metrics) -> dict[str, Any]:
    outcome = await metrics.timed(lambda: cp.abort(who, body.message))
    metrics.canary_decisions.labels("abort", "operator").inc()
    return outcome.as_dict()

"""Liveness and metrics: no token needed."""

from __future__ import annotations

from fastapi import APIRouter, Response

from control_plane.routes.deps import Metrics

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/metrics")
async def metrics(m: Metrics) -> Response:
    return Response(m.exposition(), media_type="text/plain; version=0.0.4")

"""What routes take from the app: its state, set once by `create_api`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from pydantic import BaseModel

from control_plane.metrics import ApiMetrics
from control_plane.service import ControlPlane
from control_plane.tokens import Tokens

MAX_REVISION = 2**63 - 1  # etcd revisions are int64


def _service(request: Request) -> ControlPlane:
    service: ControlPlane = request.app.state.control_plane
    return service


def _metrics(request: Request) -> ApiMetrics:
    metrics: ApiMetrics = request.app.state.metrics
    return metrics


def _tokens(request: Request) -> Tokens:
    tokens: Tokens = request.app.state.tokens
    return tokens


Service = Annotated[ControlPlane, Depends(_service)]
Metrics = Annotated[ApiMetrics, Depends(_metrics)]
TokenStore = Annotated[Tokens, Depends(_tokens)]


class ChangeSummary(BaseModel):
    op: str
    kind: str
    namespace: str | None
    name: str


class ApplyAnswer(BaseModel):
    revision: int
    dry_run: bool = False
    changes: list[ChangeSummary]

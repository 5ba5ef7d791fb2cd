"""Namespace tokens: create, list, revoke (admin only, see authz.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from control_plane.authz import Who
from control_plane.body import Body, openapi_body
from control_plane.routes.deps import TokenStore
from providers.model import NAME_PATTERN

router = APIRouter(prefix="/v1/tokens")
MAX_EXPIRES_S = 100 * 365 * 86400.0


class TokenRequest(BaseModel):
    namespace: str = Field(pattern=NAME_PATTERN)
    expires_in_s: float | None = Field(
        default=None, gt=0, le=MAX_EXPIRES_S,
        description="seconds until the token stops working; none: it never expires")


@router.post("", openapi_extra=openapi_body(TokenRequest))
async def create_token(body: Annotated[TokenRequest, Body(TokenRequest)], who: Who,
                       tokens: TokenStore) -> dict[str, Any]:
    token, info = await tokens.create(body.namespace, who, body.expires_in_s)
    return {"token": token, **info.as_dict()}


@router.get("")
async def list_tokens(tokens: TokenStore) -> dict[str, Any]:
    return {"items": [t.as_dict() for t in await tokens.list()]}


@router.delete("/{token_id}")
async def revoke_token(token_id: str, tokens: TokenStore) -> dict[str, Any]:
    info = await tokens.revoke(token_id)
    return {**info.as_dict(), "revoked": True}

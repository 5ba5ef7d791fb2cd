"""Who may call what: one rule per route, checked before the route reads its body.

Every route of the app has an entry in `ROUTES` (`check_routes` refuses to build an app where one
is missing). A rule says who may call the route at all, and what more is checked of a namespace
token's request:

- `public`: anyone, no token.
- `admin`: the admin token only; a namespace token gets 403.
- `tenant`: the admin, or a namespace token within its namespace. What "within" means for the
  route is the rule's `check` when it can be decided from the path and query (done here, before
  the body is read), or its `note` when it needs the body or the stored data (done by
  `ControlPlane` with the same `Principal` methods, or by cutting the answer to what the token
  may see, `visibility.py`).

Asking for another namespace is 403, never an empty 200. Authentication failures (no token, an
unknown, revoked or expired one) are 401.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from control_plane.errors import Forbidden, Unauthorized
from control_plane.principal import Principal
from control_plane.tokens import Tokens
from providers.resources import GLOBAL, ResourceKey

# A reason to refuse the request, or None to let it through.
Check = Callable[[Principal, Request], str | None]


class Access(StrEnum):
    PUBLIC = "public"
    TENANT = "tenant"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Rule:
    access: Access
    note: str = ""
    check: Check | None = None


def _namespace_query(allowed: Callable[[Principal, str], bool], what: str) -> Check:
    def check(principal: Principal, request: Request) -> str | None:
        namespace = request.query_params.get("namespace")
        if namespace is None or allowed(principal, namespace):
            return None
        return f"{principal.name} may not read {what} of namespace {namespace!r}"

    return check


def _resource(allowed: Callable[[Principal, ResourceKey], bool], verb: str) -> Check:
    def check(principal: Principal, request: Request) -> str | None:
        p = request.path_params
        namespace = str(p.get("namespace", ""))
        key = ResourceKey(str(p.get("kind", "")), None if namespace == GLOBAL else namespace,
                          str(p.get("name", "")))
        return None if allowed(principal, key) else f"{principal.name} may not {verb} {key}"

    return check


PUBLIC = Rule(Access.PUBLIC)
ADMIN = Rule(Access.ADMIN)
DOCUMENTS = Rule(Access.TENANT, "each document: Principal.can_write, then the tenant rules; "
                 "starting a canary (the body's `canary`): admin only")
# A canary spans the fleet and every namespace: promoting or aborting one would write (or
# revert) other namespaces' resources, so no namespace token may, not even for a canary that
# only changed its own namespace. A namespace token sees the canary in rollout status.
ROLLOUT_DECISION = Rule(Access.ADMIN, "a canary's changes may span every namespace")

ROUTES: dict[tuple[str, str], Rule] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("POST", "/v1/apply"): DOCUMENTS,
    ("POST", "/v1/diff"): DOCUMENTS,
    ("GET", "/v1/resources"): Rule(
        Access.TENANT, "items: Principal.can_read",
        _namespace_query(Principal.can_list, "the resources")),
    ("GET", "/v1/resources/{kind}/{namespace}/{name}"): Rule(
        Access.TENANT, check=_resource(Principal.can_read, "read")),
    ("DELETE", "/v1/resources/{kind}/{namespace}/{name}"): Rule(
        Access.TENANT, check=_resource(Principal.can_write, "delete")),
    ("GET", "/v1/history"): Rule(
        Access.TENANT, "records: those that changed its namespace, cut to it",
        _namespace_query(Principal.can_manage, "the history")),
    ("GET", "/v1/history/{revision}"): Rule(
        Access.TENANT, "403 unless the revision changed its namespace; cut to it"),
    ("POST", "/v1/rollback"): Rule(
        Access.TENANT, "the body's namespace: Principal.can_manage; then as an apply"),
    ("GET", "/v1/gateways"): Rule(Access.TENANT, "records cut to what it may see"),
    ("GET", "/v1/rollout/status"): Rule(
        Access.TENANT, "records cut to what it may see; of the canary, no message, traffic or "
        "other namespaces' refusals"),
    ("POST", "/v1/rollout/promote"): ROLLOUT_DECISION,
    ("POST", "/v1/rollout/abort"): ROLLOUT_DECISION,
    ("POST", "/v1/tokens"): ADMIN,
    ("GET", "/v1/tokens"): ADMIN,
    ("DELETE", "/v1/tokens/{token_id}"): ADMIN,
}


async def authenticate(request: Request) -> Principal:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token (Authorization: Bearer TOKEN)")
    tokens: Tokens = request.app.state.tokens
    principal = await tokens.authenticate(token.strip())
    if principal is None:
        raise Unauthorized("invalid token: unknown, revoked or expired")
    return principal


async def authorize(request: Request) -> Principal | None:
    """The app-wide dependency: runs first on every route, before any body is read."""
    route = request.scope.get("route")
    path = route.path if isinstance(route, APIRoute) else request.url.path
    rule = ROUTES.get((request.method, path))
    if rule is None:  # check_routes makes this unreachable; refuse rather than guess
        raise Forbidden(f"no authorization rule for {request.method} {path}")
    if rule.access is Access.PUBLIC:
        return None
    principal = await authenticate(request)
    if rule.access is Access.ADMIN and not principal.admin:
        raise Forbidden(f"only the admin token may use {request.method} {path}")
    reason = rule.check(principal, request) if rule.check is not None else None
    if reason is not None:
        raise Forbidden(reason)
    return principal


async def _principal(who: Annotated[Principal | None, Depends(authorize)]) -> Principal:
    if who is None:
        raise RuntimeError("a public route asked who is calling")
    return who


Who = Annotated[Principal, Depends(_principal)]


def check_routes(app: FastAPI) -> None:
    """Every route has a rule and every rule a route: a new route cannot skip authorization."""
    # Computed afresh: app.openapi() caches, and would miss a route added after the first call.
    spec = get_openapi(title=app.title, version=app.version, routes=app.routes)
    routes = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}
    missing = sorted(routes - ROUTES.keys())
    stale = sorted(ROUTES.keys() - routes)
    if missing or stale:
        raise RuntimeError(f"control_plane/authz.py ROUTES: no rule for {missing}; "
                           f"rules without a route: {stale}")

"""Every route of the control plane's OpenAPI spec, called by every kind of caller.

The expected answers are written out here, route by route: a new route without an entry fails
`test_every_route_has_an_expected_answer`, and `create_api` itself refuses a route without a rule
in control_plane/authz.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from control_plane.api import create_api
from control_plane.authz import check_routes
from control_plane.dir_store import DirStore

ADMIN = "admin-token-for-authz"
CALLERS = ("admin", "own", "other", "none", "bad", "revoked", "expired")
UNAUTHENTICATED = ("none", "bad", "revoked", "expired")
ANY = {"admin": 200, "own": 200, "other": 200}
TENANT = {"admin": 200, "own": 200, "other": 403}
ADMIN_ONLY = {"admin": 200, "own": 403, "other": 403}

# (method, route) -> what the admin, an acme token ("own") and a globex token ("other") get
# for a request about namespace acme; the unauthenticated callers get 401 on every /v1 route.
EXPECTED: dict[tuple[str, str], dict[str, int]] = {
    ("GET", "/healthz"): ANY,
    ("GET", "/metrics"): ANY,
    ("POST", "/v1/apply"): TENANT,
    ("POST", "/v1/diff"): TENANT,
    ("GET", "/v1/resources"): TENANT,
    ("GET", "/v1/resources/{kind}/{namespace}/{name}"): TENANT,
    ("DELETE", "/v1/resources/{kind}/{namespace}/{name}"): TENANT,
    ("GET", "/v1/history"): TENANT,
    ("GET", "/v1/history/{revision}"): TENANT,
    ("POST", "/v1/rollback"): TENANT,
    ("GET", "/v1/gateways"): ANY,
    ("GET", "/v1/rollout/status"): ANY,
    ("POST", "/v1/rollout/promote"): ADMIN_ONLY,
    ("POST", "/v1/rollout/abort"): ADMIN_ONLY,
    ("POST", "/v1/tokens"): ADMIN_ONLY,
    ("GET", "/v1/tokens"): ADMIN_ONLY,
    ("DELETE", "/v1/tokens/{token_id}"): ADMIN_ONLY,
}
PUBLIC = {("GET", "/healthz"), ("GET", "/metrics")}


def ns(name: str) -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Namespace", "metadata": {"name": name}}


def hook(name: str, namespace: str = "acme") -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Webhook",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"verify": {"scheme": "github", "secret": f"{{$vault:{namespace}/gh#s}}"},
                     "chain": {"steps": [{"module": "log"}]}}}


@dataclass
class World:
    client: httpx.AsyncClient
    tokens: dict[str, str | None]
    acme_revision: int

    def headers(self, caller: str) -> dict[str, str]:
        token = self.tokens[caller]
        return {} if token is None else {"authorization": f"Bearer {token}"}

    async def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        r = await self.client.request(method, path, headers=self.headers("admin"), **kw)
        assert r.status_code == 200, r.text
        return r

    async def token(self, namespace: str, **kw: Any) -> dict[str, Any]:
        body = {"namespace": namespace, **kw}
        answer: dict[str, Any] = (await self.admin("POST", "/v1/tokens", json=body)).json()
        return answer

    async def reset(self) -> None:
        ended = await self.client.post("/v1/rollout/abort", headers=self.headers("admin"))
        assert ended.status_code in (200, 404), ended.text  # 404: no canary was running
        await self.admin("POST", "/v1/apply", json={"resources": [
            ns("acme"), ns("globex"), hook("a"), hook("b"), hook("g", "globex")]})


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    app = create_api(DirStore(tmp_path / "store"), ADMIN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://cp.test") as client:
        w = World(client, {"admin": ADMIN, "none": None, "bad": "whp_not-a-token"}, 0)
        await w.reset()
        applied = await w.admin("POST", "/v1/apply", json={"resources": [hook("c")]})
        w.acme_revision = applied.json()["revision"]
        w.tokens["own"] = (await w.token("acme"))["token"]
        w.tokens["other"] = (await w.token("globex"))["token"]
        revoked = await w.token("acme")
        await w.admin("DELETE", f"/v1/tokens/{revoked['id']}")
        w.tokens["revoked"] = revoked["token"]
        w.tokens["expired"] = (await w.token("acme", expires_in_s=0.01))["token"]
        await asyncio.sleep(0.05)
        yield w


async def call(w: World, method: str, route: str, caller: str) -> httpx.Response:
    """One request to `route` about namespace acme, on a freshly reset config."""
    await w.reset()
    docs = {"resources": [hook("a")]}
    requests: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {
        ("GET", "/healthz"): ("/healthz", {}),
        ("GET", "/metrics"): ("/metrics", {}),
        ("POST", "/v1/apply"): ("/v1/apply", {"json": docs}),
        ("POST", "/v1/diff"): ("/v1/diff", {"json": docs}),
        ("GET", "/v1/resources"): ("/v1/resources", {"params": {"namespace": "acme"}}),
        ("GET", "/v1/resources/{kind}/{namespace}/{name}"): ("/v1/resources/Webhook/acme/a", {}),
        ("DELETE", "/v1/resources/{kind}/{namespace}/{name}"):
            ("/v1/resources/Webhook/acme/b", {}),
        ("GET", "/v1/history"): ("/v1/history", {"params": {"namespace": "acme"}}),
        ("GET", "/v1/history/{revision}"): (f"/v1/history/{w.acme_revision}", {}),
        ("POST", "/v1/rollback"): ("/v1/rollback", {"json": {
            "namespace": "acme", "to_revision": w.acme_revision}}),
        ("GET", "/v1/gateways"): ("/v1/gateways", {}),
        ("GET", "/v1/rollout/status"): ("/v1/rollout/status", {}),
        ("POST", "/v1/rollout/promote"): ("/v1/rollout/promote", {"json": {"message": "ok"}}),
        ("POST", "/v1/rollout/abort"): ("/v1/rollout/abort", {}),
        ("POST", "/v1/tokens"): ("/v1/tokens", {"json": {"namespace": "acme"}}),
        ("GET", "/v1/tokens"): ("/v1/tokens", {}),
    }
    if route in ("/v1/rollout/promote", "/v1/rollout/abort"):
        # Something to promote or abort: a canary of acme's webhook a, started by the admin.
        await w.admin("POST", "/v1/apply", json={
            "resources": [hook("a") | {"spec": {**hook("a")["spec"], "chain": {
                "steps": [{"module": "log"}, {"module": "log"}]}}}],
            "canary": "canary=true"})
    if (method, route) == ("DELETE", "/v1/tokens/{token_id}"):
        path, kw = f"/v1/tokens/{(await w.token('acme'))['id']}", {}
    else:
        path, kw = requests[method, route]
    return await w.client.request(method, path, headers=w.headers(caller), **kw)


async def test_every_route_has_an_expected_answer(world: World) -> None:
    spec = (await world.client.get("/openapi.json")).json()
    routes = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert routes == set(EXPECTED)


async def test_every_route_for_every_caller(world: World) -> None:
    got: dict[tuple[str, str, str], int] = {}
    want: dict[tuple[str, str, str], int] = {}
    for (method, route), answers in EXPECTED.items():
        for caller in CALLERS:
            r = await call(world, method, route, caller)
            got[method, route, caller] = r.status_code
            if caller in UNAUTHENTICATED:
                want[method, route, caller] = 200 if (method, route) in PUBLIC else 401
            else:
                want[method, route, caller] = answers[caller]
    assert {k: v for k, v in got.items() if want[k] != v} == {}


async def test_a_route_without_a_rule_is_refused(tmp_path: Path) -> None:
    app = create_api(DirStore(tmp_path / "store"), ADMIN)

    @app.get("/v1/forgotten")
    async def forgotten() -> dict[str, str]:
        return {}

    with pytest.raises(RuntimeError, match="/v1/forgotten"):
        check_routes(app)

"""The gateway in-process (ASGI): verification, routing, limits, sync and async delivery."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cli.processes import github_signature
from cli.servers import RedisServer
from cli.sink import Sink
from data_plane.app import GatewayApp, create_app
from data_plane.dlq import DeadLetters
from data_plane.settings import GatewaySettings

SECRET = "gh-secret"


def hook(name: str, steps: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "whplane/v1", "kind": "Webhook",
        "metadata": {"name": name, "namespace": "acme"},
        "spec": {"verify": {"scheme": "github", "secret": "{$GH_SECRET}"},
                 "chain": {"steps": steps, **spec.pop("chain", {})}, **spec},
    }  # fmt: skip


def http_conn(name: str, url: str, allow_private: bool = True) -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Connection",
            "metadata": {"name": name, "namespace": "acme"},
            "spec": {"type": "http", "url": url, "allow_private": allow_private}}


class Harness:
    def __init__(self, app: GatewayApp) -> None:
        self.app = app
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                        base_url="http://gw.test")

    async def post(self, path: str, body: bytes, secret: str = SECRET,
                   **headers: str) -> httpx.Response:
        h = {"content-type": "application/json", "x-hub-signature-256":
             github_signature(secret, body), **headers}
        return await self.client.post(path, content=body, headers=h)


async def start(tmp_path: Path, docs: list[dict[str, Any]], redis_url: str | None = None,
                **env: str) -> Harness:
    cfg = tmp_path / "config"
    cfg.mkdir(exist_ok=True)
    (cfg / "all.yaml").write_text(yaml.safe_dump_all(docs))
    settings = GatewaySettings(config=f"file:{cfg}", state_dir=tmp_path / "state",
                               redis_url=redis_url, claim_idle_s=0.5, gateway_id="gw-test")
    app = create_app(settings, env={"GH_SECRET": SECRET, **env})
    await app.gateway.start()
    await app.gateway.holder.wait_ready(10)
    return Harness(app)


@pytest.fixture
async def harnesses() -> AsyncIterator[list[Harness]]:
    made: list[Harness] = []
    yield made
    for h in made:
        await h.client.aclose()
        await h.app.gateway.stop()


async def test_github_verification_and_routing(tmp_path: Path, harnesses: list[Harness]) -> None:
    out = tmp_path / "out.jsonl"
    h = await start(tmp_path, [hook("gh", [{"module": "file", "config": {"path": str(out)}}])])
    harnesses.append(h)
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    ok = await h.post("/webhook/acme/gh", body)
    assert ok.status_code == 200, ok.text
    assert ok.headers["x-whplane-revision"] == str(h.app.gateway.holder.current.revision)
    assert ok.headers["x-request-id"]
    assert json.loads(out.read_text().splitlines()[0])["webhook"] == "gh"
    tampered = await h.client.post("/webhook/acme/gh", content=body + b" ", headers={
        "x-hub-signature-256": github_signature(SECRET, body)})
    assert tampered.status_code == 401
    assert (await h.post("/webhook/acme/gh", body, secret="wrong")).status_code == 401
    missing = await h.client.post("/webhook/acme/gh", content=body)
    assert missing.status_code == 401
    unknown_name = await h.post("/webhook/acme/nope", body)
    unknown_ns = await h.post("/webhook/nope/gh", body)
    assert unknown_name.status_code == unknown_ns.status_code == 404
    assert unknown_name.json() == unknown_ns.json()
    assert (await h.client.get("/webhook/acme/gh")).status_code == 405
    status = (await h.client.get("/status")).json()
    assert status["namespaces"] == {"acme": 1} and status["ready"]
    metrics = (await h.client.get("/metrics")).text
    assert 'whplane_webhook_requests_total{namespace="acme",outcome="unauthorized"} 3.0' in metrics
    assert "whplane_config_revision" in metrics
    assert SECRET not in json.dumps(status) and SECRET not in metrics


async def test_limits_body_depth_and_rate(tmp_path: Path, harnesses: list[Harness]) -> None:
    h = await start(tmp_path, [hook("gh", [{"module": "log"}], limits={
        "max_body_bytes": 1000, "max_json_depth": 5, "rate_per_second": 1, "burst": 3})])
    harnesses.append(h)
    assert (await h.post("/webhook/acme/gh", b"x" * 1001)).status_code == 413
    deep = b"[" * 6 + b"]" * 6
    assert (await h.post("/webhook/acme/gh", deep)).status_code == 400
    codes = [(await h.post("/webhook/acme/gh", b"{}")).status_code for _ in range(3)]
    limited = await h.post("/webhook/acme/gh", b"{}")
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    # The 413 was refused on its declared size alone; the 400 had already spent a token.
    assert codes.count(200) <= 2 and 429 in codes


async def test_sync_failures_timeouts_and_ssrf(
    tmp_path: Path, harnesses: list[Harness], caplog: pytest.LogCaptureFixture
) -> None:
    generic = {"status": "failed", "error": "delivery failed"}
    with Sink(status=500) as failing, Sink(delay_s=5) as hanging:
        h = await start(tmp_path, [
            http_conn("failing", failing.url),
            http_conn("hanging", hanging.url),
            http_conn("private", failing.url, allow_private=False),
            hook("fails", [{"module": "http", "connection": "failing"}]),
            hook("hangs", [{"module": "http", "connection": "hanging"}],
                 chain={"timeout_s": 0.5}),
            hook("ssrf", [{"module": "http", "connection": "private"}]),
        ])
        harnesses.append(h)
        # The sender learns that delivery failed, never where or why: that goes to the log.
        r = await h.post("/webhook/acme/fails", b"{}")
        assert r.status_code == 502 and r.json().items() >= generic.items(), r.text
        assert r.json()["request_id"] == r.headers["x-request-id"]
        t0 = time.perf_counter()
        r = await h.post("/webhook/acme/hangs", b"{}")
        elapsed = time.perf_counter() - t0
        assert r.status_code == 502 and elapsed < 2, (r.text, elapsed)
        n_before = len(failing.received)
        r = await h.post("/webhook/acme/ssrf", b"{}")
        assert r.status_code == 502 and r.json().items() >= generic.items(), r.text
        assert "refused" not in r.text and "127.0.0.1" not in r.text
        assert len(failing.received) == n_before  # nothing was sent
        logged = caplog.text
        assert "HTTP 500" in logged and "refused" in logged.lower()


async def test_async_delivery_dlq_and_replay(
    tmp_path: Path, redis_own: RedisServer, harnesses: list[Harness]
) -> None:
    with Sink() as ok_sink, Sink(status=503) as bad_sink:
        h = await start(tmp_path, [
            http_conn("ok", ok_sink.url),
            http_conn("bad", bad_sink.url),
            hook("fast", [{"module": "http", "connection": "ok"}],
                 delivery={"mode": "async"}),
            hook("doomed", [{"module": "http", "connection": "bad"}], delivery={
                "mode": "async", "retry": {"attempts": 2, "initial_delay_s": 0.05,
                                           "max_delay_s": 0.1}}),
        ], redis_url=redis_own.url)
        harnesses.append(h)
        r = await h.post("/webhook/acme/fast", b'{"n": 1}')
        assert r.status_code == 202
        delivery_id = r.json()["id"]
        await wait_for(lambda: delivery_id in ok_sink.delivered_ids())

        r = await h.post("/webhook/acme/doomed", b'{"n": 2}')
        assert r.status_code == 202
        dlq = h.app.gateway.dlq
        assert isinstance(dlq, DeadLetters)
        await wait_for_async(lambda: dlq.size(), lambda n: n == 1)
        [dead] = await dlq.list()
        assert dead.delivery.webhook == "doomed" and dead.attempts == 2
        assert "503" in dead.last_error
        bad_sink.status = 200
        # Operators list and replay through the CLI.
        listed = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "cli.whplane", "dlq", "list", "-o", "json", "--redis-url",
            redis_own.url], capture_output=True, text=True, check=True)
        assert [e["id"] for e in json.loads(listed.stdout)] == [dead.id]
        await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "cli.whplane", "dlq", "replay", dead.id, "--redis-url",
            redis_own.url], check=True, capture_output=True)
        await wait_for(lambda: r.json()["id"] in bad_sink.delivered_ids())
        assert await dlq.size() == 0


async def wait_for(check: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def wait_for_async(get: Any, check: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check(await get()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def _sign(scheme: str, secret: str, body: bytes, now: int) -> dict[str, str]:
    import base64
    import hashlib
    import hmac as hm

    def hexmac(msg: bytes, key: bytes = secret.encode()) -> str:
        return hm.new(key, msg, hashlib.sha256).hexdigest()

    if scheme == "github":
        return {"x-hub-signature-256": "sha256=" + hexmac(body)}
    if scheme == "stripe":
        return {"stripe-signature": f"t={now},v1=" + hexmac(f"{now}.".encode() + body)}
    if scheme == "slack":
        return {"x-slack-request-timestamp": str(now),
                "x-slack-signature": "v0=" + hexmac(f"v0:{now}:".encode() + body)}
    if scheme == "standard":
        key = base64.b64decode(secret.removeprefix("whsec_"))
        mac = hm.new(key, f"msg_1.{now}.".encode() + body, hashlib.sha256).digest()
        return {"webhook-id": "msg_1", "webhook-timestamp": str(now),
                "webhook-signature": "v1," + base64.b64encode(mac).decode()}
    if scheme == "bearer":
        return {"authorization": f"Bearer {secret}"}
    raise AssertionError(scheme)


SCHEME_SECRETS = {
    "github": "gh-vault-secret",
    "stripe": "whsec_stripe_vault_secret",
    "slack": "slack-vault-secret",
    "standard": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "bearer": "bearer-vault-token",
}


async def test_schemes_end_to_end_with_vault_secrets(
    tmp_path: Path, harnesses: list[Harness], vault_server: Any, vault_path: str
) -> None:
    client = vault_server.client()
    docs = []
    for scheme, secret in SCHEME_SECRETS.items():
        client.secrets.kv.v2.create_or_update_secret(
            path=f"{vault_path}/{scheme}", secret={"secret": secret}, mount_point="secret")
        doc = hook(scheme, [{"module": "log"}])
        doc["spec"]["verify"] = {"scheme": scheme,
                                 "secret": f"{{$vault:{vault_path}/{scheme}#secret}}"}
        docs.append(doc)
    h = await start(tmp_path, docs, VAULT_ADDR=vault_server.addr, VAULT_TOKEN=vault_server.token)
    harnesses.append(h)
    assert not h.app.gateway.holder.current.errors
    body = b'{"event": "test"}'
    now = int(time.time())
    for scheme, secret in SCHEME_SECRETS.items():
        url = f"/webhook/acme/{scheme}"
        good = _sign(scheme, secret, body, now)
        r = await h.client.post(url, content=body, headers=good)
        assert r.status_code == 200, (scheme, r.text)
        tampered = await h.client.post(url, content=body + b"x", headers=good)
        wrong = await h.client.post(url, content=body, headers=_sign(
            scheme, secret[:-1] + "Q" if scheme != "standard" else
            "whsec_" + "QUJD" * 8, body, now))
        missing = await h.client.post(url, content=body)
        codes = (tampered.status_code, wrong.status_code, missing.status_code)
        if scheme == "bearer":  # a bearer token does not sign the body
            assert codes[1:] == (401, 401), scheme
        else:
            assert codes == (401, 401, 401), (scheme, codes)
        if scheme in ("stripe", "slack", "standard"):
            stale = await h.client.post(url, content=body, headers=_sign(
                scheme, secret, body, now - 3600))
            assert stale.status_code == 401, scheme
    status = (await h.client.get("/status")).json()
    assert status["vault"]["configured"] and status["vault"]["reachable"]
    assert not any(s in json.dumps(status) for s in SCHEME_SECRETS.values())


async def test_unsigned_floods_do_not_spend_the_rate_limit(
    tmp_path: Path, harnesses: list[Harness]
) -> None:
    h = await start(tmp_path, [hook("gh", [{"module": "log"}], limits={
        "rate_per_second": 0.1, "burst": 2})])
    harnesses.append(h)
    for _ in range(10):
        assert (await h.client.post("/webhook/acme/gh", content=b"{}")).status_code == 401
    assert (await h.post("/webhook/acme/gh", b"{}")).status_code == 200
    # A GET answers the same for a webhook that exists and one that does not.
    known = await h.client.get("/webhook/acme/gh")
    unknown = await h.client.get("/webhook/x/y")
    assert known.status_code == unknown.status_code == 405 and known.json() == unknown.json()

"""The tenant boundary, attacked through real processes: a control plane and a gateway on etcd,
secrets in OpenBao, deliveries to a recording sink.

Each attack is tried twice: through the control plane with a namespace token (refused, naming
the field, nothing written), and written straight into etcd with the tenant stamp (or without
it, for the rules that hold for everyone), which the gateway must refuse on its own.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from cli.processes import ControlPlaneProcess, GatewayProcess, github_signature
from cli.servers import EtcdServer, VaultServer
from cli.sink import Sink
from providers.resources import ResourceKey
from providers.store_keys import resource_key

pytestmark = pytest.mark.slow
GATEWAY_ONLY = "gateway-env-secret-value"


@dataclass
class Fleet:
    cp: ControlPlaneProcess
    gw: GatewayProcess
    etcd: EtcdServer
    prefix: str
    alpha: str  # namespace names, unique per run: Vault paths are shared by the session
    beta: str
    alpha_token: str
    sink: Sink
    secrets: dict[str, str]

    def post(self, path: str, body: Any, token: str | None = None) -> httpx.Response:
        return httpx.post(f"{self.cp.url}{path}", json=body, timeout=30,
                          headers={"authorization": f"Bearer {token or self.cp.admin_token}"})

    def apply(self, docs: list[dict[str, Any]], token: str | None = None) -> httpx.Response:
        return self.post("/v1/apply", {"resources": docs}, token)

    def revision(self) -> int:
        r = httpx.get(f"{self.cp.url}/v1/resources", timeout=30,
                      headers={"authorization": f"Bearer {self.cp.admin_token}"})
        return int(r.json()["revision"])

    def write_straight(self, doc: dict[str, Any]) -> str:
        """Put `doc` into etcd without the control plane; returns its key as the gateway names
        it in /status."""
        meta = doc["metadata"]
        key = ResourceKey(doc["kind"], meta.get("namespace"), meta["name"])
        self.etcd.put(resource_key(self.prefix, key), json.dumps(doc))
        return str(key)

    def gateway_error(self, key: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            errors = httpx.get(f"{self.gw.url}/status", timeout=5).json()["errors"]
            if key in errors:
                return str(errors[key])
            time.sleep(0.1)
        raise AssertionError(f"the gateway did not refuse {key}:\n{self.gw.log_tail()}")

    def leaked(self) -> list[str]:
        """Secret values that reached the sink, anywhere in a request."""
        seen = json.dumps([{**r, "body": r["body"].decode(errors="replace")}
                           for r in self.sink.received])
        return [name for name, value in self.secrets.items() if value in seen]


def ns(name: str) -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Namespace", "metadata": {"name": name}}


def hook(name: str, namespace: str, steps: list[dict[str, Any]] | None = None,
         sandbox: bool = False, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if sandbox:
        meta["sandbox"] = True
    return {"apiVersion": "whplane/v1", "kind": "Webhook", "metadata": meta,
            "spec": {"verify": {"scheme": "github",
                                "secret": "{$vault:" + namespace + "/gh#secret}"},
                     "chain": {"steps": steps or [{"module": "log"}]}, **spec}}


@pytest.fixture(scope="module")
def fleet(etcd_server: EtcdServer, vault_server: VaultServer) -> Iterator[Fleet]:
    run = uuid.uuid4().hex[:6]
    alpha, beta = f"alpha-{run}", f"beta-{run}"
    prefix = f"/tb-{run}/"
    # What must never reach a tenant's destination (the partner's key legitimately goes to the
    # partner's URL, so it is not in this list).
    secrets = {"alpha-api": f"alpha-api-{run}", "beta-db": f"beta-db-{run}",
               "gateway-env": GATEWAY_ONLY}
    kv = vault_server.client().secrets.kv.v2
    kv.create_or_update_secret(path=f"{alpha}/gh", secret={"secret": "gh-alpha"})
    kv.create_or_update_secret(path=f"{alpha}/api", secret={"token": secrets["alpha-api"]})
    kv.create_or_update_secret(path=f"{beta}/db", secret={"password": secrets["beta-db"]})
    kv.create_or_update_secret(path=f"global-{run}/partner", secret={"key": f"partner-{run}"})
    store = f"etcd://{etcd_server.endpoint}{prefix}"
    vault_env = {"VAULT_ADDR": vault_server.addr, "VAULT_TOKEN": vault_server.token}
    with Sink() as sink, ControlPlaneProcess(store) as cp, GatewayProcess(
        store, env={**vault_env, "WH_CANARY": GATEWAY_ONLY}
    ) as gw:
        f = Fleet(cp, gw, etcd_server, prefix, alpha, beta, "", sink, secrets)
        partner = {"apiVersion": "whplane/v1", "kind": "Connection",
                   "metadata": {"name": "partner"},
                   "spec": {"type": "http", "url": f"{sink.url}/partner", "allow_private": True,
                            "headers": {"X-Api-Key": "{$vault:global-" + run + "/partner#key}"}}}
        r = f.apply([ns(alpha), ns(beta), partner])
        assert r.status_code == 200, r.text
        r = f.post("/v1/tokens", {"namespace": alpha})
        assert r.status_code == 200, r.text
        f.alpha_token = r.json()["token"]
        yield f
    etcd_server.delete_prefix(prefix)


def refused(f: Fleet, docs: list[dict[str, Any]], field: str, status: int = 422) -> str:
    """Apply `docs` as tenant alpha: refused with `status`, naming `field`, nothing written."""
    before = f.revision()
    r = f.apply(docs, f.alpha_token)
    assert r.status_code == status, r.text
    assert field in r.text, r.text
    assert f.revision() == before
    return r.text


# -- 1. references in mapping keys ---------------------------------------------------------


def test_references_in_mapping_keys_are_refused_everywhere(fleet: Fleet) -> None:
    f = fleet
    steps = [{"module": "http", "connection": "partner",
              "config": {"headers": {"{$WH_CANARY}": "1",
                                     "{$vault:" + f.beta + "/db#password}": "2"}}}]
    text = refused(f, [hook("keys", f.alpha, steps)], "config.headers")
    assert "mapping key" in text
    # Written straight into etcd, even by whoever holds etcd (no tenant stamp): refused.
    key = f.write_straight(hook("keys", f.alpha, steps))
    assert "mapping key" in f.gateway_error(key)
    assert f.leaked() == []


# -- 2. vault path traversal ---------------------------------------------------------------


def test_vault_path_traversal_is_refused(fleet: Fleet) -> None:
    f = fleet
    secret = "{$vault:" + f.alpha + "/../" + f.beta + "/db#password}"
    doc = hook("trav", f.alpha)
    doc["spec"]["verify"]["secret"] = secret
    refused(f, [doc], "spec.verify.secret")
    key = f.write_straight(doc)
    assert "'..' segments" in f.gateway_error(key)


def test_another_namespaces_vault_path_is_refused_at_the_gateway_too(fleet: Fleet) -> None:
    f = fleet
    doc = hook("other", f.alpha, [{"module": "http", "connection": "partner",
                                   "config": {"headers": {"X": "{$vault:" + f.beta
                                                          + "/db#password}"}}}])
    refused(f, [doc], "config.headers.X", status=403)
    key = f.write_straight(hook("other", f.alpha, doc["spec"]["chain"]["steps"], sandbox=True))
    assert "tenant rules" in f.gateway_error(key)
    env_doc = hook("env", f.alpha, sandbox=True)
    env_doc["spec"]["verify"]["secret"] = "{$WH_CANARY}"
    assert "environment references" in f.gateway_error(f.write_straight(env_doc))
    assert f.leaked() == []


# -- 3. retargeting a global connection ----------------------------------------------------


def test_a_step_path_cannot_leave_the_connections_host(fleet: Fleet) -> None:
    f = fleet
    with Sink() as thief:
        steps = [{"module": "http", "connection": "partner",
                  "config": {"path": "@" + thief.url.removeprefix("http://") + "/steal"}}]
        refused(f, [hook("retarget", f.alpha, steps)], "config.path")
        key = f.write_straight(hook("retarget", f.alpha, steps))
        assert "config.path" in f.gateway_error(key)
        # The legitimate use: a path below the connection's URL, its credentials sent there.
        ok = [{"module": "http", "connection": "partner", "config": {"path": "/in?x=1"}}]
        r = f.apply([hook("below", f.alpha, ok)], f.alpha_token)
        assert r.status_code == 200, r.text
        body = b'{"hello": "world"}'
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            answer = httpx.post(f"{f.gw.url}/webhook/{f.alpha}/below", content=body,
                                headers={"x-hub-signature-256": github_signature("gh-alpha", body),
                                         "content-type": "application/json"}, timeout=10)
            if answer.status_code != 404:
                break
            time.sleep(0.1)
        assert answer.status_code == 200, answer.text
        assert f.sink.received[-1]["path"] == "/partner/in?x=1"
        assert thief.received == []


# -- 4. secrets in answers to senders ------------------------------------------------------


def test_payload_schema_cannot_hold_references(fleet: Fleet) -> None:
    f = fleet
    schema = {"const": "{$vault:" + f.alpha + "/api#token}"}
    refused(f, [hook("schema-ref", f.alpha, payload_schema=schema)], "spec.payload_schema.const")
    key = f.write_straight(hook("schema-ref", f.alpha, payload_schema=schema))
    assert "not allowed here" in f.gateway_error(key)
    body = b'{"a": 1}'
    answer = httpx.post(f"{f.gw.url}/webhook/{f.alpha}/schema-ref", content=body,
                        headers={"x-hub-signature-256": github_signature("gh-alpha", body)})
    assert answer.status_code == 404
    assert f.secrets["alpha-api"] not in answer.text


# -- 5. whplane's own Redis keys -----------------------------------------------------------


@pytest.mark.parametrize("stream", ["whplane:{q}:deliveries", "whplane:{q}:deliveries:scheduled"])
def test_steps_cannot_reach_the_gateways_own_keys(fleet: Fleet, stream: str) -> None:
    f = fleet
    steps = [{"module": "redis_stream", "connection": "events",
              "config": {"stream": stream, "maxlen": 1}}]
    doc = hook("own-keys", f.alpha, steps)
    r = f.apply([doc])  # not even the admin
    assert r.status_code == 422 and "config.stream" in r.text, r.text
    key = f.write_straight(doc)
    assert "gateways' own" in f.gateway_error(key)


def test_tenant_stream_names_stay_under_the_namespace(fleet: Fleet) -> None:
    f = fleet
    steps = [{"module": "redis_publish", "connection": "events",
              "config": {"channel": f"{f.beta}:orders"}}]
    refused(f, [hook("their-channel", f.alpha, steps)], "config.channel", status=403)
    key = f.write_straight(hook("their-channel", f.alpha, steps, sandbox=True))
    assert f"start with '{f.alpha}:'" in f.gateway_error(key)


# -- 6. remote $refs -----------------------------------------------------------------------


def test_payload_schema_never_fetches_remote_refs(fleet: Fleet) -> None:
    f = fleet
    silent = socket.create_server(("127.0.0.1", 0))
    silent.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(silent.accept()[0])
            except TimeoutError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/schema.json"
        schema = {"$ref": url}
        refused(f, [hook("remote-ref", f.alpha, payload_schema=schema)], "payload_schema")
        key = f.write_straight(hook("remote-ref", f.alpha, payload_schema=schema))
        assert "points outside the schema" in f.gateway_error(key)
        t0 = time.monotonic()
        assert httpx.get(f"{f.gw.url}/healthz", timeout=5).status_code == 200
        assert time.monotonic() - t0 < 1
        assert accepted == []
    finally:
        stop.set()
        silent.close()
        for s in accepted:
            s.close()


# -- 7. ReDoS ------------------------------------------------------------------------------


def test_payload_patterns_run_in_linear_time(fleet: Fleet) -> None:
    f = fleet
    backref = {"type": "object", "properties": {"a": {"pattern": "^(a)\\1$"}}}
    text = refused(f, [hook("backref", f.alpha, payload_schema=backref)], "payload_schema")
    assert "RE2" in text
    evil = {"type": "object", "properties": {"a": {"type": "string", "pattern": "^(a+)+$"}},
            "patternProperties": {"^(b+)+$": {"type": "integer"}}}
    r = f.apply([hook("redos", f.alpha, payload_schema=evil)], f.alpha_token)
    assert r.status_code == 200, r.text
    body = json.dumps({"a": "a" * 4096 + "!", "b" * 4096 + "!": 1}).encode()
    headers = {"x-hub-signature-256": github_signature("gh-alpha", body),
               "content-type": "application/json"}
    deadline = time.monotonic() + 10
    while True:
        t0 = time.monotonic()
        answer = httpx.post(f"{f.gw.url}/webhook/{f.alpha}/redos", content=body,
                            headers=headers, timeout=10)
        took = time.monotonic() - t0
        if answer.status_code != 404 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert answer.status_code == 422, answer.text
    # Exponential backtracking would take longer than the universe; RE2 takes microseconds.
    assert took < 2, took

"""The control-plane API against both stores: real etcd and a local directory."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.servers import EtcdServer
from control_plane.api import create_api
from control_plane.dir_store import DirStore
from control_plane.etcd_store import EtcdStore
from providers.etcd_conn import EtcdSettings
from providers.file import FileProvider

ADMIN = "admin-token-for-tests"


def ns(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Namespace", "metadata": {"name": name},
            "spec": spec}


def conn(name: str, namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": "whplane/v1", "kind": "Connection", "metadata": meta,
            "spec": {"type": "http", "url": "https://example.com/h",
                     "headers": {"Authorization": "Bearer {$vault:acme/api#token}"}}}


def hook(name: str, namespace: str = "acme", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Webhook",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"verify": {"scheme": "github", "secret": "{$vault:acme/gh#secret}"},
                     "chain": {"steps": [{"module": "log"}]}, **spec}}


class Api:
    def __init__(self, client: httpx.AsyncClient, store: Any) -> None:
        self.client, self.store = client, store

    async def apply(self, docs: list[dict[str, Any]], token: str = ADMIN,
                    **opts: Any) -> httpx.Response:
        return await self.client.post("/v1/apply", json={"resources": docs, **opts},
                                      headers={"authorization": f"Bearer {token}"})

    async def get(self, path: str, token: str = ADMIN, **params: Any) -> httpx.Response:
        return await self.client.get(path, params=params,
                                     headers={"authorization": f"Bearer {token}"})

    async def post(self, path: str, body: dict[str, Any], token: str = ADMIN) -> httpx.Response:
        return await self.client.post(path, json=body,
                                      headers={"authorization": f"Bearer {token}"})

    async def items(self, kind: str | None = None) -> list[dict[str, Any]]:
        params = {"kind": kind} if kind else {}
        return list((await self.get("/v1/resources", **params)).json()["items"])


@pytest.fixture(params=["etcd", "dir"])
async def api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Api]:
    if request.param == "etcd":
        etcd: EtcdServer = request.getfixturevalue("etcd_server")
        prefix: str = request.getfixturevalue("etcd_prefix")
        store: Any = EtcdStore(EtcdSettings.from_url(f"etcd://{etcd.endpoint}{prefix}"))
    else:
        store = DirStore(tmp_path / "store")
    app = create_api(store, ADMIN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://cp.test") as client:
        yield Api(client, store)
    await store.close()


async def test_apply_versions_and_reports_changes(api: Api) -> None:
    r = await api.apply([ns("acme"), conn("api", "acme"), hook("gh")], message="first")
    assert r.status_code == 200, r.text
    first = r.json()
    assert [c["op"] for c in first["changes"]] == ["create"] * 3
    again = (await api.apply([ns("acme"), conn("api", "acme"), hook("gh")])).json()
    assert again["revision"] == first["revision"]  # nothing changed, nothing written
    assert {c["op"] for c in again["changes"]} == {"unchanged"}
    changed = (await api.apply([hook("gh", limits={"rate_per_second": 5})])).json()
    assert changed["revision"] > first["revision"]
    assert changed["changes"] == [{"op": "update", "kind": "Webhook", "namespace": "acme",
                                   "name": "gh"}]
    [doc] = await api.items("Webhook")
    assert doc["metadata"]["generation"] == 2 and doc["spec"]["limits"] == {"rate_per_second": 5}
    history = (await api.get("/v1/history")).json()["items"]
    assert [h["revision"] for h in history] == [changed["revision"], first["revision"]]
    assert history[1]["message"] == "first" and history[1]["author"] == "admin"


async def test_dry_run_and_expected_revision_change_nothing(api: Api) -> None:
    base = (await api.apply([ns("acme")])).json()["revision"]
    dry = (await api.apply([hook("gh")], dry_run=True)).json()
    assert dry["dry_run"] and dry["changes"][0]["op"] == "create"
    assert await api.items("Webhook") == []
    r = await api.apply([hook("gh")], expected_revision=base - 1)
    assert r.status_code == 409 and r.json()["detail"]["current_revision"] == base
    assert await api.items("Webhook") == []
    ok = await api.apply([hook("gh")], expected_revision=base)
    assert ok.status_code == 200


async def test_invalid_document_among_many_writes_nothing(api: Api) -> None:
    docs = [ns("acme")] + [hook(f"h{i}") for i in range(100)]
    docs[57] = hook("h56x", chain={"steps": [{"module": "http"}]})
    sources = [f"hooks.yaml[{i}]" for i in range(len(docs))]
    r = await api.apply(docs, sources=sources)
    assert r.status_code == 422
    [error] = r.json()["detail"]["errors"]
    assert error["source"] == "hooks.yaml[57]"
    assert error["field"] == "spec.chain.steps[0].connection"
    assert await api.items() == []


async def test_cross_document_rules(api: Api) -> None:
    r = await api.apply([hook("gh")])
    assert r.status_code == 422
    assert "namespace 'acme' does not exist" in r.text
    hooked = hook("gh", chain={"steps": [{"module": "http", "connection": "nope"}]})
    r = await api.apply([ns("acme"), hooked])
    assert "connection 'nope' exists neither" in r.text
    plain = hook("gh")
    plain["spec"]["verify"]["secret"] = "hunter2"
    r = await api.apply([ns("acme"), plain])
    assert r.status_code == 422 and "plaintext secret" in r.text and "hunter2" not in r.text
    # A connection still in use cannot be deleted.
    using = hook("gh", chain={"steps": [{"module": "http", "connection": "api"}]})
    assert (await api.apply([ns("acme"), conn("api", "acme"), using])).status_code == 200
    r = await api.client.delete("/v1/resources/Connection/acme/api",
                                headers={"authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 422 and "still uses connection 'api'" in r.text


async def test_prune_and_cascade_delete(api: Api) -> None:
    await api.apply([ns("acme"), ns("globex"), hook("a"), hook("b"), hook("c", "globex")])
    r = (await api.apply([ns("acme"), hook("a")], prune=True)).json()
    ops = {(c["op"], c["name"]) for c in r["changes"]}
    assert ("delete", "b") in ops and ("delete", "c") not in ops
    r = await api.client.delete("/v1/resources/Namespace/_global/globex",
                                headers={"authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200
    names = sorted(d["metadata"]["name"] for d in await api.items())
    assert names == ["a", "acme"]


async def test_large_apply_is_one_revision(api: Api) -> None:
    docs = [ns("acme")] + [hook(f"h{i:04d}") for i in range(1000)]
    r = await api.apply(docs)
    assert r.status_code == 200, r.text[:500]
    revision = r.json()["revision"]
    record = (await api.get(f"/v1/history/{revision}")).json()
    assert len(record["changes"]) == 1001
    if isinstance(api.store, EtcdStore):
        _, stored = await api.store.read()
        assert {s.mod_revision for s in stored.values()} == {revision}


async def test_tokens_and_tenancy(api: Api) -> None:
    await api.apply([ns("acme"), ns("globex"), hook("a"), hook("g", "globex")])
    assert (await api.client.get("/v1/resources")).status_code == 401
    assert (await api.get("/v1/resources", token="whp_nope")).status_code == 401
    token = (await api.post("/v1/tokens", {"namespace": "acme"})).json()["token"]
    mine = (await api.get("/v1/resources", token=token)).json()["items"]
    assert {(d["kind"], d["metadata"]["name"]) for d in mine} == {("Namespace", "acme"),
                                                                  ("Webhook", "a")}
    assert (await api.apply([hook("g2", "globex")], token=token)).status_code == 403
    assert (await api.get("/v1/resources/Webhook/globex/g", token=token)).status_code == 403
    assert (await api.apply([hook("a2")], token=token)).status_code == 200
    assert (await api.post("/v1/tokens", {"namespace": "acme"}, token=token)).status_code == 403
    r = await api.post("/v1/rollback", {"namespace": "globex"}, token=token)
    assert r.status_code == 403
    if isinstance(api.store, DirStore):
        stored = list((api.store.root / "tokens").glob("*.json"))
        assert stored and token not in stored[0].read_text()


async def test_rollback_restores_exactly(api: Api) -> None:
    before = (await api.apply([ns("acme"), conn("api", "acme"), hook("a"), hook("b")])).json()
    snapshot = sorted(await api.items(), key=json.dumps)
    await api.apply([hook("a", limits={"rate_per_second": 1}), hook("c")])
    await api.client.delete("/v1/resources/Webhook/acme/b",
                            headers={"authorization": f"Bearer {ADMIN}"})
    r = await api.post("/v1/rollback", {"namespace": "acme", "to_revision": before["revision"]})
    assert r.status_code == 200, r.text

    def strip(docs: list[dict[str, Any]]) -> list[str]:
        return sorted(json.dumps({**d, "metadata": {k: v for k, v in d["metadata"].items()
                                                    if k != "generation"}}, sort_keys=True)
                      for d in docs)

    assert strip(await api.items()) == strip(snapshot)
    # Undo (no revision given) reverts just the rollback.
    r = await api.post("/v1/rollback", {"namespace": "acme"})
    assert r.status_code == 200
    names = sorted(d["metadata"]["name"] for d in await api.items("Webhook"))
    assert names == ["a", "c"]


async def test_dir_store_is_read_whole_by_the_file_provider(tmp_path: Path) -> None:
    store = DirStore(tmp_path / "store")
    app = create_api(store, ADMIN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://cp.test") as client:
        api = Api(client, store)
        r = (await api.apply([ns("acme"), hook("a"), hook("b")])).json()
    batch = await FileProvider(tmp_path / "store").load()
    assert batch.revision == r["revision"]
    assert sorted(k.name for k in batch.puts) == ["a", "acme", "b"]
    assert not batch.source_errors


async def test_history_survives_etcd_compaction(etcd_server: EtcdServer, etcd_prefix: str,
                                                tmp_path: Path) -> None:
    import aetcd

    store = EtcdStore(EtcdSettings.from_url(f"etcd://{etcd_server.endpoint}{etcd_prefix}"))
    app = create_api(store, ADMIN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://cp.test") as client:
        api = Api(client, store)
        first = (await api.apply([ns("acme"), hook("a")])).json()["revision"]
        last = (await api.apply([hook("a", limits={"burst": 3})])).json()["revision"]
        host, port = etcd_server.endpoint.split(":")
        c = aetcd.Client(host=host, port=int(port))
        await c.compact(last)
        await c.close()
        record = (await api.get(f"/v1/history/{first}")).json()
        assert record["changes"][1]["after"]["metadata"]["name"] == "a"
        r = await api.post("/v1/rollback", {"namespace": "acme", "to_revision": first})
        assert r.status_code == 200
        [doc] = await api.items("Webhook")
        assert "limits" not in doc["spec"]
    await store.close()


async def test_namespace_tokens_are_sandboxed(api: Api) -> None:
    await api.apply([ns("acme"), ns("globex")])
    token = (await api.post("/v1/tokens", {"namespace": "acme"})).json()["token"]
    ok = hook("fine")
    ok["spec"]["verify"]["secret"] = "{$vault:acme/gh#secret}"
    assert (await api.apply([ok], token=token)).status_code == 200
    theirs = hook("theirs")
    theirs["spec"]["verify"]["secret"] = "{$vault:globex/gh#secret}"
    env = hook("env")
    env["spec"]["verify"]["secret"] = "{$VAULT_TOKEN}"
    filed = hook("filed", chain={"steps": [{"module": "file", "config": {"path": "/etc/x"}}]})
    private = conn("inside", "acme")
    private["spec"]["allow_private"] = True
    for doc, field in ((theirs, "spec.verify.secret"), (env, "spec.verify.secret"),
                       (filed, "spec.chain.steps[0]"), (private, "spec.allow_private")):
        r = await api.apply([doc], token=token, sources=["tenant.yaml[0]"])
        assert r.status_code == 403, r.text
        [error] = r.json()["detail"]["errors"]
        assert (error["source"], error["field"]) == ("tenant.yaml[0]", field), error
    assert (await api.apply([theirs, env])).status_code == 200  # the admin may

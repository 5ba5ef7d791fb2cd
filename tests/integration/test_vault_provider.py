"""VaultProvider (`vault://MOUNT/PATH`) against a real OpenBao dev server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from cli.servers import LOOPBACK, VaultServer, free_port
from providers.errors import StoreUnavailable
from providers.provider import ChangeBatch, ConfigProvider, ProviderState
from providers.resources import ResourceKey
from providers.vault import VaultProvider, live_version, parse_url
from providers.vault_client import VaultSettings

POLL = 0.5


def namespace_doc(name: str, description: str = "") -> dict[str, Any]:
    return {
        "apiVersion": "whplane/v1",
        "kind": "Namespace",
        "metadata": {"name": name},
        "spec": {"description": description},
    }


def connection_doc(name: str, namespace: str | None, url: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {
        "apiVersion": "whplane/v1",
        "kind": "Connection",
        "metadata": meta,
        "spec": {"type": "http", "url": url},
    }


class Tree:
    """Writes resources into Vault with the root token, in the provider's layout."""

    def __init__(self, server: VaultServer, root: str) -> None:
        self.kv = server.client().secrets.kv.v2
        self.root = root

    def put(self, rel: str, doc: dict[str, Any]) -> None:
        self.kv.create_or_update_secret(path=f"{self.root}/{rel}", secret=doc, mount_point="secret")

    def delete(self, rel: str) -> None:
        self.kv.delete_metadata_and_all_versions(path=f"{self.root}/{rel}", mount_point="secret")

    def delete_latest(self, rel: str) -> None:
        self.kv.delete_latest_version_of_secret(path=f"{self.root}/{rel}", mount_point="secret")


def _provider(server: VaultServer, path: str) -> VaultProvider:
    settings = VaultSettings(addr=server.addr, token=server.token, timeout_s=2.0)
    return VaultProvider(settings, "secret", path, poll_interval_s=POLL)


async def _until(
    batches: AsyncIterator[ChangeBatch],
    done: Callable[[list[ChangeBatch]], bool],
    timeout: float = 4 * POLL + 2,
) -> list[ChangeBatch]:
    seen: list[ChangeBatch] = []

    async def collect() -> None:
        async for batch in batches:
            seen.append(batch)
            if done(seen):
                return

    await asyncio.wait_for(collect(), timeout)
    return seen


def _merge(batches: list[ChangeBatch]) -> tuple[dict[ResourceKey, Any], set[ResourceKey]]:
    puts: dict[ResourceKey, Any] = {}
    deletes: set[ResourceKey] = set()
    for b in batches:
        for k, v in b.puts.items():
            puts[k] = v
            deletes.discard(k)
        for k in b.deletes:
            deletes.add(k)
            puts.pop(k, None)
    return puts, deletes


async def test_load(vault_server: VaultServer, vault_path: str) -> None:
    tree = Tree(vault_server, f"{vault_path}/whplane")
    tree.put("_global/Namespace/acme", namespace_doc("acme"))
    tree.put("_global/Connection/api", connection_doc("api", None, "https://api.example"))
    tree.put("acme/Connection/local", connection_doc("local", "acme", "https://l.example"))
    tree.put("acme/Connection/gone", connection_doc("gone", "acme", "https://g.example"))
    tree.delete_latest("acme/Connection/gone")

    provider = _provider(vault_server, f"{vault_path}/whplane")
    checker: ConfigProvider = provider
    try:
        assert provider.status.state is ProviderState.CONNECTING
        batch = await checker.load()
        assert batch.full and batch.revision == 1 and not batch.deletes
        assert batch.source_errors == ()
        assert dict(batch.puts) == {
            ResourceKey("Namespace", None, "acme"): namespace_doc("acme"),
            ResourceKey("Connection", None, "api"): connection_doc(
                "api", None, "https://api.example"
            ),
            ResourceKey("Connection", "acme", "local"): connection_doc(
                "local", "acme", "https://l.example"
            ),
        }
        status = provider.status
        assert status.state is ProviderState.CONNECTED
        assert status.url == f"vault://secret/{vault_path}/whplane"
        assert status.endpoint == vault_server.addr
        assert (await provider.load()).revision == 2
    finally:
        await provider.close()
    assert provider.status.state is ProviderState.CLOSED


async def test_bad_layout_is_a_source_error(vault_server: VaultServer, vault_path: str) -> None:
    tree = Tree(vault_server, vault_path)
    tree.put("acme/Webhook/ok", {"kind": "Webhook"})
    tree.put("stray", {"a": "1"})
    tree.put("acme/Gadget/x", {"a": "1"})
    tree.put("acme/Webhook/deep/er", {"a": "1"})

    provider = _provider(vault_server, vault_path)
    try:
        batch = await provider.load()
        assert list(batch.puts) == [ResourceKey("Webhook", "acme", "ok")]
        errors = "\n".join(batch.source_errors)
        assert len(batch.source_errors) == 3
        for bad in ("stray", "acme/Gadget/x", "acme/Webhook/deep/"):
            assert f"secret/{vault_path}/{bad} is not" in errors
        assert "<namespace or _global>/<Kind>/<name>" in errors
    finally:
        await provider.close()


async def test_watch_sees_change_new_and_delete(vault_server: VaultServer, vault_path: str) -> None:
    tree = Tree(vault_server, vault_path)
    tree.put("_global/Namespace/a", namespace_doc("a", "v1"))
    tree.put("_global/Namespace/b", namespace_doc("b"))
    tree.put("_global/Namespace/c", namespace_doc("c"))
    provider = _provider(vault_server, vault_path)
    try:
        first = await provider.load()
        assert len(first.puts) == 3
        watch = provider.watch(first.revision)

        tree.put("_global/Namespace/a", namespace_doc("a", "v2"))  # change
        tree.put("acme/Connection/new", connection_doc("new", "acme", "https://n.example"))
        tree.delete("_global/Namespace/b")  # gone entirely
        tree.delete_latest("_global/Namespace/c")  # latest version deleted
        a, b, c = (ResourceKey("Namespace", None, n) for n in "abc")
        new = ResourceKey("Connection", "acme", "new")

        def complete(seen: list[ChangeBatch]) -> bool:
            puts, deletes = _merge(seen)
            return {a, new} <= puts.keys() and {b, c} <= deletes

        t0 = time.monotonic()
        seen = await _until(watch, complete)
        elapsed = time.monotonic() - t0
        assert elapsed < 2 * POLL + 1
        puts, _ = _merge(seen)
        assert puts[a]["spec"]["description"] == "v2"
        assert [s.revision for s in seen] == list(range(2, 2 + len(seen)))
        assert not any(s.full for s in seen)

        # Unchanged polls yield nothing; the next change gets the next revision.
        await asyncio.sleep(2 * POLL)
        tree.put("_global/Namespace/b", namespace_doc("b", "back"))
        again = await _until(watch, lambda s: bool(s))
        assert again[0].revision == seen[-1].revision + 1
        assert dict(again[0].puts) == {b: namespace_doc("b", "back")}
        assert provider.status.state is ProviderState.CONNECTED
        await watch.aclose()  # type: ignore[attr-defined]
    finally:
        await provider.close()


async def test_watch_from_foreign_revision_starts_full(
    vault_server: VaultServer, vault_path: str
) -> None:
    Tree(vault_server, vault_path).put("_global/Namespace/a", namespace_doc("a"))
    provider = _provider(vault_server, vault_path)
    try:
        # As after a start from a saved last-good snapshot of another process.
        batches = await _until(provider.watch(41), lambda s: bool(s))
        assert batches[0].full and batches[0].revision == 42
        assert list(batches[0].puts) == [ResourceKey("Namespace", None, "a")]
    finally:
        await provider.close()


async def test_vault_down_then_back(vault_own: VaultServer) -> None:
    tree = Tree(vault_own, "cfg")
    tree.put("_global/Namespace/a", namespace_doc("a"))
    provider = _provider(vault_own, "cfg")
    try:
        await provider.load()
        watch = provider.watch(1)
        next_batch = asyncio.ensure_future(anext(watch))
        vault_own.stop()
        deadline = time.monotonic() + 5
        while provider.status.state is not ProviderState.DISCONNECTED:
            assert time.monotonic() < deadline, "never noticed Vault going down"
            await asyncio.sleep(0.05)
        assert provider.status.last_error is not None
        assert "connection refused" in provider.status.last_error
        assert not next_batch.done()

        # Dev mode is in memory: Vault comes back empty, so the namespace is deleted.
        vault_own.start()
        batch = await asyncio.wait_for(next_batch, 10)
        assert batch.deletes == {ResourceKey("Namespace", None, "a")}
        assert provider.status.state is ProviderState.CONNECTED
        assert provider.status.reconnects == 1
        assert provider.status.last_error is None
    finally:
        await provider.close()


async def test_load_fails_with_store_unavailable() -> None:
    settings = VaultSettings(addr=f"http://{LOOPBACK}:{free_port()}", token="t")
    provider = VaultProvider(settings, "secret", "cfg", poll_interval_s=0.01)
    assert provider.poll_interval_s == 0.5  # bounded
    try:
        with pytest.raises(StoreUnavailable, match="vault://secret/cfg"):
            await provider.load()
        assert provider.status.state is ProviderState.DISCONNECTED
    finally:
        await provider.close()


async def test_close_ends_watch(vault_server: VaultServer, vault_path: str) -> None:
    provider = _provider(vault_server, vault_path)
    await provider.load()

    async def drain() -> list[ChangeBatch]:
        return [b async for b in provider.watch(1)]

    task = asyncio.ensure_future(drain())
    await asyncio.sleep(0.2)
    t0 = time.monotonic()
    await provider.close()
    assert await asyncio.wait_for(task, 2) == []
    assert time.monotonic() - t0 < 1


def test_parse_url_and_live_version() -> None:
    assert parse_url("vault://secret/whplane/prod") == ("secret", "whplane/prod")
    assert parse_url("vault://kv") == ("kv", "")
    with pytest.raises(ValueError, match="vault://MOUNT/PATH"):
        parse_url("etcd://x/y")
    with pytest.raises(ValueError, match="no mount"):
        parse_url("vault:///x")
    v = {"deletion_time": "", "destroyed": False}
    assert live_version({"current_version": 2, "versions": {"1": v, "2": v}}) == 2
    assert live_version(None) is None
    past = {"deletion_time": "2020-01-02T03:04:05.123456789Z", "destroyed": False}
    assert live_version({"current_version": 1, "versions": {"1": past}}) is None
    future = {"deletion_time": "2999-01-02T03:04:05.1Z", "destroyed": False}
    assert live_version({"current_version": 1, "versions": {"1": future}}) == 1
    destroyed = {"deletion_time": "", "destroyed": True}
    assert live_version({"current_version": 1, "versions": {"1": destroyed}}) is None

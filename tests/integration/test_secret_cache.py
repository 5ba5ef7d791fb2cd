"""SecretCache against a real OpenBao dev server."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from cli.servers import VaultServer
from providers.errors import ReferenceError_
from providers.references import VaultRef, env_resolver, parse
from providers.secret_cache import SecretCache
from providers.vault_client import VaultClient, VaultSettings


class CountingClient(VaultClient):
    """A real client that counts reads per path."""

    def __init__(self, settings: VaultSettings) -> None:
        super().__init__(settings)
        self.reads: Counter[str] = Counter()
        self._count_lock = threading.Lock()

    def read(self, path: str) -> dict[str, Any] | None:
        with self._count_lock:
            self.reads[path] += 1
        return super().read(path)


def _client(server: VaultServer, timeout_s: float = 5.0) -> CountingClient:
    return CountingClient(VaultSettings(addr=server.addr, token=server.token, timeout_s=timeout_s))


@pytest.fixture
def client(vault_server: VaultServer) -> Iterator[CountingClient]:
    c = _client(vault_server)
    yield c
    c.close()


def _put(server: VaultServer, path: str, data: dict[str, Any]) -> None:
    server.client().secrets.kv.v2.create_or_update_secret(
        path=path, secret=data, mount_point="secret"
    )


async def test_whole_and_embedded_references(
    vault_server: VaultServer, vault_path: str, client: CountingClient
) -> None:
    _put(vault_server, f"{vault_path}/api", {"token": " t0k\n", "port": 8080})
    cache = SecretCache(client)
    await cache.fetch([f"{vault_path}/api"])
    resolve = env_resolver({}, cache.lookup)
    doc = {
        "whole": "{$vault:" + vault_path + "/api#token}",
        "embedded": "Bearer <$vault:" + vault_path + "/api#token>!",
        "port": "{$vault:" + vault_path + "/api#port}",
    }
    # Exactly the stored value, whitespace included; non-strings as str().
    assert {k: parse(v).render(resolve) for k, v in doc.items()} == {
        "whole": " t0k\n",
        "embedded": "Bearer  t0k\n!",
        "port": "8080",
    }


async def test_defaults_and_missing(
    vault_server: VaultServer, vault_path: str, client: CountingClient
) -> None:
    _put(vault_server, f"{vault_path}/app", {"a": "1"})
    cache = SecretCache(client)
    await cache.fetch([f"{vault_path}/app", f"{vault_path}/nope"])

    assert cache.lookup(VaultRef(f"{vault_path}/app", "b", "dflt")) == "dflt"
    assert cache.lookup(VaultRef(f"{vault_path}/nope", "a", "")) == ""
    with pytest.raises(ReferenceError_, match="no such field 'b'"):
        cache.lookup(VaultRef(f"{vault_path}/app", "b"))
    with pytest.raises(ReferenceError_, match=f"{vault_path}/nope#a: not found"):
        cache.lookup(VaultRef(f"{vault_path}/nope", "a"))


async def test_one_read_per_path_for_many_fields(
    vault_server: VaultServer, vault_path: str, client: CountingClient
) -> None:
    paths = [f"{vault_path}/s{i}" for i in range(50)]
    for p in paths[:5]:
        _put(vault_server, p, {f"f{j}": f"v{j}" for j in range(20)})
    cache = SecretCache(client, concurrency=8)

    # What a batch of resources asks for: every path once per field it uses.
    await cache.fetch(p for p in paths for _ in range(20))
    await cache.fetch(paths)  # all cached: no new reads
    for p in paths[:5]:
        for j in range(20):
            assert cache.lookup(VaultRef(p, f"f{j}")) == f"v{j}"
    assert client.reads == Counter({p: 1 for p in paths})
    assert cache.status.cached == 50


async def test_rotation_is_picked_up_by_refresh(
    vault_server: VaultServer, vault_path: str, client: CountingClient
) -> None:
    stay, rotate, vanish = (f"{vault_path}/{n}" for n in ("stay", "rotate", "vanish"))
    for p in (stay, rotate, vanish):
        _put(vault_server, p, {"k": "old"})
    late = f"{vault_path}/late"  # missing at first, created later
    cache = SecretCache(client)
    await cache.fetch([stay, rotate, vanish, late])
    assert cache.lookup(VaultRef(rotate, "k")) == "old"

    _put(vault_server, rotate, {"k": "new"})
    vault_server.client().secrets.kv.v2.delete_metadata_and_all_versions(
        path=vanish, mount_point="secret"
    )
    _put(vault_server, late, {"k": "here"})

    assert await cache.refresh() == {rotate, vanish, late}
    assert cache.lookup(VaultRef(rotate, "k")) == "new"
    assert cache.lookup(VaultRef(late, "k")) == "here"
    with pytest.raises(ReferenceError_, match="not found"):
        cache.lookup(VaultRef(vanish, "k"))
    assert await cache.refresh() == set()
    status = cache.status
    assert status.reachable is True and status.last_error is None
    assert status.last_refresh is not None


async def test_vault_down_keeps_cached_secrets(vault_own: VaultServer) -> None:
    _put(vault_own, "app/db", {"password": "pw"})
    client = _client(vault_own, timeout_s=1.0)
    cache = SecretCache(client)
    try:
        await cache.fetch(["app/db"])
        vault_own.stop()

        assert await cache.refresh() == set()
        assert cache.lookup(VaultRef("app/db", "password")) == "pw"

        await cache.fetch(["app/other"])
        with pytest.raises(ReferenceError_, match="Vault unreachable: connection refused") as info:
            cache.lookup(VaultRef("app/other", "password"))
        assert "app/other#password" in str(info.value)
        # A default stands in for a missing secret, not for an unreachable Vault.
        with pytest.raises(ReferenceError_, match="unreachable"):
            cache.lookup(VaultRef("app/other", "password", "fallback"))

        status = cache.status
        assert status.configured is True
        assert status.reachable is False
        assert status.last_error is not None and "connection refused" in status.last_error
        assert status.cached == 1
        assert "pw" not in status.last_error
    finally:
        client.close()


async def test_never_fetched_path(client: CountingClient) -> None:
    cache = SecretCache(client)
    with pytest.raises(ReferenceError_, match="not fetched"):
        cache.lookup(VaultRef("some/path", "f"))
    assert cache.status.reachable is None

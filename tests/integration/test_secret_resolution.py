"""Secret references resolved by the holder from a real OpenBao: whole, embedded, KV v2,
AppRole, rotation without restart, and Vault outages."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from cli.servers import VaultServer
from providers.holder import SnapshotHolder
from providers.provider import ChangeBatch
from providers.resources import ResourceKey
from providers.secret_cache import SecretCache
from providers.vault_client import VaultClient, VaultSettings
from tests.docs import connection, webhook

HOOK = ResourceKey("Webhook", "acme", "gh")
CONN = ResourceKey("Connection", "acme", "api")


def raw(doc: dict[str, object]) -> bytes:
    return json.dumps(doc).encode()


@pytest.fixture
def client(vault_server: VaultServer) -> Iterator[VaultClient]:
    c = VaultClient(VaultSettings(addr=vault_server.addr, token=vault_server.token))
    yield c
    c.close()


async def test_whole_and_embedded_references(client: VaultClient, vault_path: str) -> None:
    client.write(f"{vault_path}/github", {"webhook_secret": "gh-s3cret", "old": "gh-0ld"})
    client.write(f"{vault_path}/api", {"token": "t0k=n/+"})
    h = SnapshotHolder(env={}, secrets=SecretCache(client))
    hook = webhook("gh", secret=f"{{$vault:{vault_path}/github#webhook_secret}}")
    hook["spec"]["verify"]["secret"] = [
        f"{{$vault:{vault_path}/github#webhook_secret}}",
        f"<$vault:{vault_path}/github#old>",
    ]
    api = connection("api", "acme", type="http", url="https://x.example",
                     headers={"Authorization": f"Bearer {{$vault:{vault_path}/api#token}}"})
    snap = await h.apply(ChangeBatch(1, {HOOK: raw(hook), CONN: raw(api)}))
    assert not snap.errors
    assert snap.webhook("acme", "gh").spec.verify.secret == ("gh-s3cret", "gh-0ld")  # type: ignore[union-attr]
    assert snap.connection("acme", "api").spec.headers == {"Authorization": "Bearer t0k=n/+"}  # type: ignore[union-attr]
    # The stored form keeps the reference, never the value.
    assert b"gh-s3cret" not in snap.entries[HOOK].raw  # type: ignore[operator]


async def test_missing_secret_or_field_is_recorded(client: VaultClient, vault_path: str) -> None:
    client.write(f"{vault_path}/github", {"webhook_secret": "x"})
    h = SnapshotHolder(env={}, secrets=SecretCache(client))
    batch = {
        HOOK: raw(webhook("gh", secret=f"{{$vault:{vault_path}/github#nope}}")),
        ResourceKey("Webhook", "acme", "b"): raw(
            webhook("b", secret=f"{{$vault:{vault_path}/absent#x}}")),
        ResourceKey("Webhook", "acme", "c"): raw(
            webhook("c", secret=f"{{$vault:{vault_path}/absent#x:fallback}}")),
    }
    snap = await h.apply(ChangeBatch(1, batch))
    assert "nope" in snap.errors[str(HOOK)] and "x" not in snap.errors[str(HOOK)].split(":")[-1]
    assert "absent" in snap.errors["Webhook/acme/b"]
    assert snap.webhook("acme", "c").spec.verify.secret == ("fallback",)  # type: ignore[union-attr]


async def test_rotation_is_picked_up_without_restart(client: VaultClient, vault_path: str) -> None:
    client.write(f"{vault_path}/github", {"webhook_secret": "v1"})
    h = SnapshotHolder(env={}, secrets=SecretCache(client, ttl_s=0.1))
    ref = f"{{$vault:{vault_path}/github#webhook_secret}}"
    first = await h.apply(ChangeBatch(3, {HOOK: raw(webhook("gh", secret=ref))}))
    client.write(f"{vault_path}/github", {"webhook_secret": "v2"})
    assert await h.refresh_secrets() == 1
    snap = h.current
    assert snap.webhook("acme", "gh").spec.verify.secret == ("v2",)  # type: ignore[union-attr]
    assert snap.revision == first.revision  # same config, new secret value
    assert await h.refresh_secrets() == 0  # nothing changed: no rebuild


async def test_approle(vault_server: VaultServer, vault_path: str) -> None:
    root = vault_server.client()
    if "approle/" not in root.sys.list_auth_methods():
        root.sys.enable_auth_method("approle")
    root.sys.create_or_update_policy(
        "whplane-gw", f'path "secret/data/{vault_path}/*" {{ capabilities = ["read"] }}')
    root.auth.approle.create_or_update_approle("gw", token_policies=["whplane-gw"], token_ttl="1m")
    role_id = root.auth.approle.read_role_id("gw")["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id("gw")["data"]["secret_id"]
    root.secrets.kv.v2.create_or_update_secret(path=f"{vault_path}/github",
                                               secret={"webhook_secret": "via-approle"})
    settings = VaultSettings.from_env({"VAULT_ADDR": vault_server.addr,
                                       "VAULT_ROLE_ID": role_id, "VAULT_SECRET_ID": secret_id})
    assert settings is not None
    c = VaultClient(settings)
    try:
        h = SnapshotHolder(env={}, secrets=SecretCache(c))
        snap = await h.apply(ChangeBatch(1, {HOOK: raw(webhook(
            "gh", secret=f"{{$vault:{vault_path}/github#webhook_secret}}"))}))
        assert snap.webhook("acme", "gh").spec.verify.secret == ("via-approle",)  # type: ignore[union-attr]
    finally:
        c.close()


async def test_vault_down_resolved_keep_working_new_ones_fail(vault_own: VaultServer) -> None:
    c = VaultClient(VaultSettings(addr=vault_own.addr, token=vault_own.token, timeout_s=1))
    try:
        c.write("acme/github", {"webhook_secret": "kept"})
        c.write("acme/other", {"webhook_secret": "never-read"})
        h = SnapshotHolder(env={}, secrets=SecretCache(c, ttl_s=0.1))
        await h.apply(ChangeBatch(1, {HOOK: raw(webhook(
            "gh", secret="{$vault:acme/github#webhook_secret}"))}))
        vault_own.stop()
        await h.refresh_secrets()  # fails to reach Vault: keeps the values it has
        new = ResourceKey("Webhook", "acme", "new")
        same = ResourceKey("Webhook", "acme", "same-secret")
        snap = await h.apply(ChangeBatch(2, {
            new: raw(webhook("new", secret="{$vault:acme/other#webhook_secret}")),
            same: raw(webhook("same-secret", secret="{$vault:acme/github#webhook_secret}")),
        }))
        assert snap.webhook("acme", "gh").spec.verify.secret == ("kept",)  # type: ignore[union-attr]
        assert snap.webhook("acme", "same-secret") is not None  # cached secret still resolves
        assert snap.webhook("acme", "new") is None
        assert "unreachable" in snap.errors[str(new)].lower()
        # Vault back (a dev server comes back empty): the never-resolved one is retried.
        vault_own.start()
        c.write("acme/other", {"webhook_secret": "now-there"})
        await h.refresh_secrets()
        assert h.current.webhook("acme", "new").spec.verify.secret == ("now-there",)  # type: ignore[union-attr]
    finally:
        c.close()

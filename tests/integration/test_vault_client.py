"""VaultClient against a real OpenBao dev server."""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from cli.servers import LOOPBACK, VaultServer, free_port
from providers.errors import SecretBackendError
from providers.vault_client import VaultClient, VaultRequestError, VaultSettings

log = logging.getLogger(__name__)


@pytest.fixture
def client(vault_server: VaultServer) -> Iterator[VaultClient]:
    c = VaultClient(VaultSettings(addr=vault_server.addr, token=vault_server.token))
    yield c
    c.close()


# --- KV v2 ---------------------------------------------------------------------------------------


def test_kv2_write_read_list_metadata(client: VaultClient, vault_path: str) -> None:
    # Values come back exactly as written: whitespace, types and all.
    client.write(f"{vault_path}/app", {"token": "  s3cret\n", "port": 5432, "on": True})
    assert client.read(f"{vault_path}/app") == {"token": "  s3cret\n", "port": 5432, "on": True}
    assert client.read_versioned(f"{vault_path}/app")[1] == 1
    client.write(f"{vault_path}/app", {"token": "rotated"})
    assert client.read_versioned(f"{vault_path}/app") == ({"token": "rotated"}, 2)
    client.write(f"{vault_path}/dir/inner", {"a": "1"})

    assert sorted(client.list(vault_path)) == ["app", "dir/"]
    assert client.list(f"{vault_path}/dir") == ["inner"]
    assert client.list(f"{vault_path}/nothing-here") == []
    meta = client.read_metadata(f"{vault_path}/app")
    assert meta is not None and meta["current_version"] == 2
    assert client.read_metadata(f"{vault_path}/missing") is None


def test_kv2_missing_and_deleted(
    client: VaultClient, vault_server: VaultServer, vault_path: str
) -> None:
    assert client.read(f"{vault_path}/never-written") is None

    path = f"{vault_path}/soft"
    client.write(path, {"v": "1"})
    client.write(path, {"v": "2"})
    vault_server.client().secrets.kv.v2.delete_latest_version_of_secret(
        path=path, mount_point="secret"
    )
    # Version 1 still exists, but the latest one is deleted: the secret reads as absent.
    assert client.read(path) is None
    assert client.read_versioned(path) == (None, None)

    client.delete(path)
    assert client.read_metadata(path) is None
    client.delete(path)  # deleting what is gone is fine


def test_kv1_mount(vault_server: VaultServer, vault_path: str) -> None:
    root = vault_server.client()
    mount = f"kv1-{uuid.uuid4().hex[:8]}"
    root.sys.enable_secrets_engine("kv", path=mount, options={"version": "1"})
    c = VaultClient(
        VaultSettings(addr=vault_server.addr, token=vault_server.token, mount=mount, kv_version=1)
    )
    try:
        c.write("a/b", {"k": "v"})
        assert c.read("a/b") == {"k": "v"}
        assert c.read_versioned("a/b") == ({"k": "v"}, None)
        assert c.read("a/missing") is None
        assert c.list("a") == ["b"]
        with pytest.raises(SecretBackendError, match="KV v2"):
            c.read_metadata("a/b")
        c.delete("a/b")
        assert c.read("a/b") is None
    finally:
        c.close()
        root.sys.disable_secrets_engine(mount)


def test_missing_mount_is_an_error_not_a_missing_secret(vault_server: VaultServer) -> None:
    c = VaultClient(VaultSettings(addr=vault_server.addr, token="root", mount="no-such-mount"))
    try:
        with pytest.raises(SecretBackendError, match="no-such-mount/x"):
            c.read("x")
    finally:
        c.close()


# --- authentication ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AppRole:
    mount: str
    role_id: str
    secret_id: str


@pytest.fixture
def approle(vault_server: VaultServer, vault_path: str) -> Iterator[AppRole]:
    """An AppRole (on a private auth mount) allowed to read and list under `vault_path`."""
    root = vault_server.client()
    mount = f"approle-{uuid.uuid4().hex[:8]}"
    policy = f"pol-{mount}"
    root.sys.enable_auth_method("approle", path=mount)
    root.sys.create_or_update_policy(
        policy,
        f'path "secret/data/{vault_path}/*" {{ capabilities = ["read"] }}\n'
        f'path "secret/metadata/{vault_path}/*" {{ capabilities = ["read", "list"] }}\n',
    )
    root.auth.approle.create_or_update_approle(
        "gateway", token_policies=[policy], token_ttl="1h", mount_point=mount
    )
    role_id = root.auth.approle.read_role_id("gateway", mount_point=mount)["data"]["role_id"]
    secret = root.auth.approle.generate_secret_id("gateway", mount_point=mount)
    yield AppRole(mount, role_id, secret["data"]["secret_id"])
    root.sys.disable_auth_method(mount)
    root.sys.delete_policy(policy)


def test_approle_login_and_relogin_after_revoke(
    vault_server: VaultServer, vault_path: str, approle: AppRole
) -> None:
    root = vault_server.client()
    root.secrets.kv.v2.create_or_update_secret(
        path=f"{vault_path}/db", secret={"password": "pw"}, mount_point="secret"
    )
    settings = VaultSettings(
        addr=vault_server.addr,
        token=None,
        role_id=approle.role_id,
        secret_id=approle.secret_id,
        approle_mount=approle.mount,
    )
    c = VaultClient(settings)
    try:
        assert c.read(f"{vault_path}/db") == {"password": "pw"}
        assert c.logins == 1
        # The policy is enforced: this token is not root.
        with pytest.raises(SecretBackendError, match="permission denied"):
            c.write(f"{vault_path}/db", {"password": "x"})
        assert c.logins == 2  # a 403 logs in again once, then gives up

        # Revoke every token this AppRole mount ever issued, ours included.
        root.sys.revoke_prefix(f"auth/{approle.mount}/")
        assert c.read(f"{vault_path}/db") == {"password": "pw"}
        assert c.logins == 3
    finally:
        c.close()


def test_bad_approle_credentials(vault_server: VaultServer, approle: AppRole) -> None:
    settings = VaultSettings(
        addr=vault_server.addr,
        role_id=approle.role_id,
        secret_id="not-the-secret-id",
        approle_mount=approle.mount,
    )
    c = VaultClient(settings)
    try:
        with pytest.raises(SecretBackendError, match="AppRole login") as info:
            c.read("anything")
        assert "not-the-secret-id" not in str(info.value)
    finally:
        c.close()


def test_revoked_plain_token_raises(vault_server: VaultServer, vault_path: str) -> None:
    root = vault_server.client()
    token = root.auth.token.create(policies=["default"], ttl="1h")["auth"]["client_token"]
    root.auth.token.revoke(token)
    c = VaultClient(VaultSettings(addr=vault_server.addr, token=token))
    try:
        with pytest.raises(SecretBackendError, match="permission denied") as info:
            c.read(f"{vault_path}/x")
        assert token not in str(info.value)
    finally:
        c.close()


# --- failures ------------------------------------------------------------------------------------


def test_unreachable_server_fails_fast() -> None:
    c = VaultClient(VaultSettings(addr=f"http://{LOOPBACK}:{free_port()}", token="t"))
    try:
        t0 = time.perf_counter()
        with pytest.raises(VaultRequestError, match="connection refused") as info:
            c.read("acme/github")
        assert time.perf_counter() - t0 < 1.0
        assert info.value.unreachable
        assert "acme/github" in str(info.value) and "read" in str(info.value)
        assert c.health() is False
    finally:
        c.close()


def test_silent_server_times_out() -> None:
    # Accepts connections (the kernel backlog does) but never answers.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        sock.listen(16)
        port = sock.getsockname()[1]
        c = VaultClient(VaultSettings(addr=f"http://{LOOPBACK}:{port}", token="t", timeout_s=0.3))
        try:
            t0 = time.perf_counter()
            with pytest.raises(VaultRequestError, match=r"timed out after 0\.3s") as info:
                c.read("acme/github")
            assert time.perf_counter() - t0 < 2.0
            assert info.value.unreachable
        finally:
            c.close()


async def test_closed_client_refuses_calls(client: VaultClient) -> None:
    client.close()
    with pytest.raises(SecretBackendError, match="closed"):
        await client.call(client.read, "x")


def test_health(client: VaultClient) -> None:
    assert client.health() is True


# --- bulk ----------------------------------------------------------------------------------------


async def test_read_many_2000_paths(client: VaultClient, vault_path: str) -> None:
    paths = [f"{vault_path}/many/s{i:04d}" for i in range(2000)]
    await client.call_many(lambda p: client.write(p, {"v": p[-4:]}), paths[:1500], 32)
    paths.append(paths[0])  # a duplicate is read once

    t0 = time.perf_counter()
    result = await client.read_many(paths, concurrency=16)
    elapsed = time.perf_counter() - t0
    log.info("read_many of 2000 paths: %.2fs", elapsed)

    assert len(result) == 2000
    assert result[paths[0]] == {"v": "0000"}
    assert result[paths[1499]] == {"v": "1499"}
    assert all(result[p] is None for p in paths[1500:2000])
    assert elapsed < 15, f"read_many of 2000 paths took {elapsed:.1f}s"


async def test_read_many_reports_errors_per_path() -> None:
    c = VaultClient(VaultSettings(addr=f"http://{LOOPBACK}:{free_port()}", token="t"))
    try:
        result = await c.read_many(["a", "b"])
        assert set(result) == {"a", "b"}
        assert all(isinstance(r, SecretBackendError) for r in result.values())
    finally:
        c.close()


def test_threads_share_one_client_safely(client: VaultClient, vault_path: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    client.write(f"{vault_path}/shared", {"k": "v"})
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: client.read(f"{vault_path}/shared"), range(200)))
    assert results == [{"k": "v"}] * 200


# --- settings ------------------------------------------------------------------------------------


def test_settings_repr_masks_secrets() -> None:
    s = VaultSettings(addr="http://v:8200", token="hvs.TOPSECRET", role_id="r", secret_id="SID")
    text = repr(s)
    assert "TOPSECRET" not in text and "SID" not in text and str(s) == text
    assert "token='***'" in text and "secret_id='***'" in text and "role_id='r'" in text


def test_from_env() -> None:
    assert VaultSettings.from_env({}) is None
    s = VaultSettings.from_env(
        {
            "VAULT_ADDR": "https://vault:8200/",
            "VAULT_ROLE_ID": "r",
            "VAULT_SECRET_ID": "s",
            "VAULT_NAMESPACE": "team",
            "VAULT_CACERT": "/etc/ca.pem",
            "WH_VAULT_MOUNT": "/kv/",
            "WH_VAULT_KV_VERSION": "1",
            "WH_VAULT_TIMEOUT": "2.5",
        }
    )
    assert s == VaultSettings(
        addr="https://vault:8200",
        role_id="r",
        secret_id="s",
        namespace="team",
        mount="kv",
        kv_version=1,
        timeout_s=2.5,
        verify="/etc/ca.pem",
    )
    d = VaultSettings.from_env({"VAULT_ADDR": "http://v", "VAULT_TOKEN": "t"})
    assert d is not None
    assert (d.mount, d.kv_version, d.timeout_s, d.verify) == ("secret", 2, 5.0, True)


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"VAULT_ADDR": "http://v"}, "VAULT_TOKEN"),
        ({"VAULT_ADDR": "http://v", "VAULT_TOKEN": ""}, "VAULT_TOKEN"),
        ({"VAULT_ADDR": "http://v", "VAULT_ROLE_ID": "r"}, "VAULT_SECRET_ID"),
        ({"VAULT_ADDR": "http://v", "VAULT_SECRET_ID": "s"}, "VAULT_ROLE_ID"),
        ({"VAULT_ADDR": "vault:8200", "VAULT_TOKEN": "t"}, "VAULT_ADDR"),
        ({"VAULT_ADDR": "http://v", "VAULT_TOKEN": "t", "WH_VAULT_KV_VERSION": "3"}, "KV_VERSION"),
        ({"VAULT_ADDR": "http://v", "VAULT_TOKEN": "t", "WH_VAULT_TIMEOUT": "soon"}, "TIMEOUT"),
        ({"VAULT_ADDR": "http://v", "VAULT_TOKEN": "t", "WH_VAULT_TIMEOUT": "-1"}, "TIMEOUT"),
        ({"VAULT_ADDR": "http://v", "VAULT_TOKEN": "t", "WH_VAULT_TIMEOUT": "inf"}, "TIMEOUT"),
        ({"VAULT_ADDR": "http://v", "VAULT_TOKEN": "t", "WH_VAULT_MOUNT": "/"}, "WH_VAULT_MOUNT"),
    ],
)
def test_from_env_errors_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ValueError, match=names):
        VaultSettings.from_env(env)


def test_settings_need_credentials() -> None:
    with pytest.raises(ValueError, match="token"):
        VaultSettings(addr="http://v")

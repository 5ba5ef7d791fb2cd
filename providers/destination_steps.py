"""`spec.chain.steps[]` of the destination modules (DESIGN section 9): one model per module.

Each step is `{module: NAME, connection: CONN, config: {...}}`; the Connection's `spec.type`
names the system. `providers/step_spec.py` adds these to the `Step` union.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from providers.model import Name, Seconds, model, shared

# Identifiers interpolated into SQL (quoted there too): letters, digits, '_', '-' and one
# optional schema or database qualifier.
_SQL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,62}(\.[A-Za-z_][A-Za-z0-9_-]{0,62})?")
# NATS subjects: dot-separated tokens of printable characters, no wildcards or whitespace.
_SUBJECT = re.compile(r"[^\s.*>]+(\.[^\s.*>]+)*")


def _sql_name(value: str) -> str:
    if not _SQL_NAME.fullmatch(value):
        raise ValueError("must be a table name: letters, digits, '_' and '-' (at most 63), "
                         "optionally qualified as SCHEMA.TABLE")
    return value


def _subject(value: str) -> str:
    if not _SUBJECT.fullmatch(value):
        raise ValueError("must be a NATS subject: dot-separated tokens without spaces or "
                         "wildcards ('*', '>')")
    return value


SqlName = Annotated[str, AfterValidator(_sql_name)]
Subject = Annotated[str, Field(max_length=255), AfterValidator(_subject)]
Topic = Annotated[str, Field(min_length=1, max_length=249)]


# --- rabbitmq, postgres, mysql, nats -------------------------------------------------------


@model
class RabbitmqConfig:
    exchange: str = Field(default="", max_length=255,
                          description='the exchange to publish to; "" is the default exchange')
    routing_key: str = Field(max_length=255, description="with the default exchange: the queue")
    persistent: bool = Field(default=True, description="delivery mode 2: survives a restart")
    mandatory: bool = Field(
        default=True, description="an unroutable message is a failure, not silently dropped")


@model
class RabbitmqStep:
    module: Literal["rabbitmq"]
    connection: Name
    config: RabbitmqConfig
    timeout_s: Seconds | None = None


@model
class TableConfig:
    table: SqlName = Field(description="created if missing; one row per delivery, by its id")


@model
class PostgresStep:
    module: Literal["postgres"]
    connection: Name
    config: TableConfig
    timeout_s: Seconds | None = None


@model
class MysqlStep:
    module: Literal["mysql"]
    connection: Name
    config: TableConfig
    timeout_s: Seconds | None = None


@model
class NatsConfig:
    subject: Subject
    jetstream: bool = Field(
        default=False, description="publish to a JetStream stream and wait for its ack")


@model
class NatsStep:
    module: Literal["nats"]
    connection: Name
    config: NatsConfig
    timeout_s: Seconds | None = None


# --- kafka, clickhouse, s3, sqs, mqtt, stomp, zeromq, websocket, redis_rq --------------------


@model
class KafkaConfig:
    topic: Topic
    key: str | None = Field(default=None, max_length=1024,
                            description="message key template: {id}, {namespace}, {webhook}")


@model
class KafkaStep:
    module: Literal["kafka"]
    connection: Name
    config: KafkaConfig
    timeout_s: Seconds | None = None


@model
class ClickhouseConfig:
    table: SqlName


@model
class ClickhouseStep:
    module: Literal["clickhouse"]
    connection: Name
    config: ClickhouseConfig
    timeout_s: Seconds | None = None


@model
class NoConfig:
    """Modules whose destination the Connection names entirely."""


@model
class S3Step:
    module: Literal["s3"]
    connection: Name
    config: NoConfig = shared(NoConfig())
    timeout_s: Seconds | None = None


@model
class SqsStep:
    module: Literal["sqs"]
    connection: Name
    config: NoConfig = shared(NoConfig())
    timeout_s: Seconds | None = None


@model
class MqttConfig:
    topic: Topic
    qos: Literal[0, 1, 2] = 1


@model
class MqttStep:
    module: Literal["mqtt"]
    connection: Name
    config: MqttConfig
    timeout_s: Seconds | None = None


@model
class StompConfig:
    destination: str = Field(min_length=1, max_length=255,
                             description="e.g. /queue/NAME or /topic/NAME")


@model
class StompStep:
    module: Literal["stomp"]
    connection: Name
    config: StompConfig
    timeout_s: Seconds | None = None


@model
class ZeromqConfig:
    socket: Literal["push", "pub"] = "push"


@model
class ZeromqStep:
    module: Literal["zeromq"]
    connection: Name
    config: ZeromqConfig = shared(ZeromqConfig())
    timeout_s: Seconds | None = None


@model
class WebsocketStep:
    module: Literal["websocket"]
    connection: Name
    config: NoConfig = shared(NoConfig())
    timeout_s: Seconds | None = None


@model
class RedisRqConfig:
    queue: str = Field(min_length=1, max_length=255)
    function: str = Field(min_length=1, max_length=255,
                          description="dotted path of the job function the RQ workers import")


@model
class RedisRqStep:
    module: Literal["redis_rq"]
    connection: Name
    config: RedisRqConfig
    timeout_s: Seconds | None = None


DestinationStep = (
    RabbitmqStep | KafkaStep | PostgresStep | MysqlStep | ClickhouseStep | S3Step | SqsStep
    | MqttStep | NatsStep | StompStep | ZeromqStep | WebsocketStep | RedisRqStep
)  # fmt: skip

DESTINATION_MODULES = ("rabbitmq", "kafka", "postgres", "mysql", "clickhouse", "s3", "sqs",
                       "mqtt", "nats", "stomp", "zeromq", "websocket", "redis_rq")

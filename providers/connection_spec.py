"""Connection specs of the destination systems (DESIGN section 9), beside `http` and `redis`.

Every one has the same shape: `type` names the system, `url` says where it is (a reference
allowed, the scheme checked), credentials are separate fields that must be references,
`timeout_s` bounds every call, `allow_private` lifts the SSRF guard (admin only) and `circuit`
sets the breaker that stops hammering the destination while it keeps failing.

A URL may carry a password in its user part (`amqp://user:PASS@host/`); then the URL is a
secret too and must be a reference (or hold one), like any credential.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field

from providers.model import Referable, Seconds, model, shared

# `scheme://user:password@`: a URL that embeds a password is itself a secret.
_PASSWORD_IN_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@?#]*:[^/@?#]*@")
_REFERENCE = r"|\{\$|<\$vault:"
SECRET_HEADER = re.compile(r"authorization|token|secret|key|cookie|password", re.IGNORECASE)


def _url(schemes: str, what: str) -> Referable:
    """A `url` field accepting `schemes` (regex alternatives, e.g. "amqps?") or a reference."""
    return Field(  # type: ignore[no-any-return]
        pattern=rf"^(({schemes})://{_REFERENCE})",
        description=f"{what} (or a reference resolving to one); a password in it makes the "
        "whole URL a secret, so it must then be a reference",
    )


@model
class Circuit:
    failures: int = Field(
        default=5, ge=1, le=10_000,
        description="consecutive retryable failures that open the circuit (per gateway process)",
    )  # fmt: skip
    cooldown_s: Seconds = Field(
        default=30, description="how long an open circuit refuses deliveries before one probe"
    )


DEFAULT_CIRCUIT = Circuit()
CircuitField = Annotated[Circuit, Field(description="the destination's circuit breaker")]


def credentials(url: str, **secrets: str | None) -> dict[str, str]:
    """The secret fields of a spec: the given ones that are set, and `url` if it holds a
    password."""
    out = {k: v for k, v in secrets.items() if v is not None}
    if _PASSWORD_IN_URL.match(url):
        out["url"] = url
    return out


def secret_headers(headers: dict[str, str]) -> dict[str, str]:
    """Header values that carry credentials, by their names (`headers.NAME`)."""
    return {f"headers.{k}": v for k, v in headers.items() if SECRET_HEADER.search(k)}


_ALLOW_PRIVATE = Field(
    default=False,
    description="allow loopback, private, link-local and metadata addresses (SSRF guard); "
    "only the admin may set it",
)


@model
class AmqpConnectionSpec:
    type: Literal["amqp"]
    url: Referable = _url("amqps?", "amqp:// or amqps:// URL, vhost as its path")
    username: Referable | None = None
    password: Referable | None = None
    timeout_s: Seconds = 10
    allow_private: bool = _ALLOW_PRIVATE
    circuit: CircuitField = shared(DEFAULT_CIRCUIT)

    def secret_fields(self) -> dict[str, str]:
        return credentials(self.url, password=self.password)


@model
class KafkaConnectionSpec:
    type: Literal["kafka"]
    url: Referable = _url("kafka", "kafka://HOST:PORT[,HOST:PORT...] bootstrap servers")
    username: Referable | None = Field(default=None, description="SASL user")
    password: Referable | None = Field(default=None, description="SASL password")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    tls: bool = False
    timeout_s: Seconds = 10
    allow_private: bool = _ALLOW_PRIVATE
    circuit: CircuitField = shared(DEFAULT_CIRCUIT)

    def secret_fields(self) -> dict[str, str]:
        return credentials(self.url, password=self.password)


@model
class PostgresConnectionSpec:
    type: Literal["postgres"]
    url: Referable = _url("postgres(ql)?", "postgresql://HOST[:PORT]/DATABASE URL")
    username: Referable | None = None
    password: Referable | None = None
    timeout_s: Seconds = 10
    max_connections: int = Field(default=10, ge=1, le=1000, description="pooled connections")
    allow_private: bool = _ALLOW_PRIVATE
    circuit: CircuitField = shared(DEFAULT_CIRCUIT)

    def secret_fields(self) -> dict[str, str]:
        return credentials(self.url, password=self.password)


@model
class MysqlConnectionSpec:
    type: Literal["mysql"]
    url: Referable = _url("mysql|mariadb", "mysql://HOST[:PORT]/DATABASE URL")
    username: Referable | None = None
    password: Referable | None = None
    timeout_s: Seconds = 10
    max_connections: int = Field(default=10, ge=1, le=1000, description="pooled connections")
    allow_private: bool = _ALLOW_PRIVATE
    circuit: CircuitField = shared(DEFAULT_CIRCUIT)

    def secret_fields(self) -> dict[str, str]:
        return credentials(self.url, password=self.password)


@model
class ClickhouseConnectionSpec:
    type: Literal["clickhouse"]
    url: Referable = _url("https?", "http(s)://HOST:8123/?database=DB (the HTTP interface)")
    username: Referable | None = None
    password: Referable | None = None
    timeout_s: Seconds = 10
    allow_private: bool = _ALLOW_PRIVATE
    circuit: CircuitField = shared(DEFAULT_CIRCUIT)

    def secret_fields(self) -> dict[str, str]:
        return credentials(self.url, password=self.password)


@model
class S3ConnectionSpec:
    type: Literal["s3"]
    url: Referable = _url("s3", "s3://BUCKET[/PREFIX]?endpoint=URL&region=R")
    access_key_id: Referable | None = None
    secret_access_key: Referable | None = None
    timeout_s: Seconds = 10
    allow_private: bool = _ALLOW_PRIVATE
    circuit: CircuitField = shared(DEFAULT_CIRCUIT)

    def secret_fields(self) -> dict[str, str]:
        return credentials(self.url, access_key_id=self.access_key_id,
                           secret_access_key=self.secret_access_key)


@model
class SqsConnectionSpec:
    type: Literal["sqs"]
    url: Referable = _url("https?", "the queue URL")
    region: str = "us-east-1"
    access_key_id: Referable | None = None
    secret_access_key: Referable | None = None
    timeout_s: Seconds = 10
    allow_private: bool = _ALLOW_PRIVATE
    circuit: CircuitField = shared(DEFAULT_CIRCUIT)

    def secret_fields(self) -> dict[str, str]:
        return credentials(self.url, access_key_id=self.access_key_id,
                           secret_access_key=self.secret_access_key)


@model
class MqttConnectionSpec:
    type: Literal["mqtt"]
    url: Referable = _url("mqtts?", "mqtt:// or mqtts:// URL")
    username: Referable | None = None
    password: Referable | None = None
    timeout_s: Seconds = 10
    allow_private: bool = _ALLOW_PRIVATE
    circuit: CircuitField = shared(DEFAULT_CIRCUIT)

    def secret_fields(self) -> dict[str, str]:
        return credentials(self.url, password=self.password)


@model
class NatsConnectionSpec:
    type: Literal["nats"]
    url: Referable = _url("nats|tls", "nats://HOST[:PORT][,HOST[:PORT]...] (tls:// for TLS)")
    username: Referable | None = None
    password: Referable | None = None
    token: Referable | None = Field(default=None, description="auth token instead of a user")
    timeout_s: Seconds = 10
    allow_private: bool = _ALLOW_PRIVATE
    circuit: CircuitField = shared(DEFAULT_CIRCUIT)

    def secret_fields(self) -> dict[str, str]:
        return credentials(self.url, password=self.password, token=self.token)


@model
class StompConnectionSpec:
    type: Literal["stomp"]
    url: Referable = _url("stomp|stomp\\+ssl", "stomp://HOST:PORT (ActiveMQ, RabbitMQ STOMP)")
    username: Referable | None = None
    password: Referable | None = None
    timeout_s: Seconds = 10
    allow_private: bool = _ALLOW_PRIVATE
    circuit: CircuitField = shared(DEFAULT_CIRCUIT)

    def secret_fields(self) -> dict[str, str]:
        return credentials(self.url, password=self.password)


@model
class ZeromqConnectionSpec:
    type: Literal["zeromq"]
    url: Referable = _url("tcp", "tcp://HOST:PORT the peer binds")
    timeout_s: Seconds = 10
    allow_private: bool = _ALLOW_PRIVATE
    circuit: CircuitField = shared(DEFAULT_CIRCUIT)

    def secret_fields(self) -> dict[str, str]:
        return credentials(self.url)


@model
class WebsocketConnectionSpec:
    type: Literal["websocket"]
    url: Referable = _url("wss?", "ws:// or wss:// URL")
    headers: dict[str, Referable] = Field(
        default_factory=dict, description="sent with the opening handshake")
    timeout_s: Seconds = 10
    verify_tls: bool = True
    allow_private: bool = _ALLOW_PRIVATE
    circuit: CircuitField = shared(DEFAULT_CIRCUIT)

    def secret_fields(self) -> dict[str, str]:
        return {**credentials(self.url), **secret_headers(self.headers)}


DestinationConnectionSpec = (
    AmqpConnectionSpec | KafkaConnectionSpec | PostgresConnectionSpec | MysqlConnectionSpec
    | ClickhouseConnectionSpec | S3ConnectionSpec | SqsConnectionSpec | MqttConnectionSpec
    | NatsConnectionSpec | StompConnectionSpec | ZeromqConnectionSpec | WebsocketConnectionSpec
)  # fmt: skip
"""The Connection specs of this module; `providers.resources.ConnectionSpec` adds http and
redis and discriminates them all by `type`."""

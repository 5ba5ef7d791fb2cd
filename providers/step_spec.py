"""`spec.chain.steps[]` of a Webhook: one model per delivery module, discriminated by `module`."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from providers.destination_steps import DESTINATION_MODULES, DestinationStep
from providers.model import Name, Referable, Seconds, model, shared


@model
class LogConfig:
    level: Literal["debug", "info", "warning"] = "info"
    include_body: bool = False


@model
class LogStep:
    module: Literal["log"]
    config: LogConfig = shared(LogConfig())


# RFC 3986 path characters; the query (after '?') may also hold '/' and '?'.
_PATH_CHARS = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@%/-]*")
_QUERY_CHARS = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*")
_ENCODED_DOT_OR_SEPARATOR = re.compile(r"%(2e|2f|5c)", re.IGNORECASE)
# Keys of the gateways' own Redis data (queue, dead letters, limits): see data_plane/redis_keys.py.
INTERNAL_KEY_PREFIX = "whplane:"


def _url_path(value: str) -> str:
    """A path below the connection's URL: it can never change the host, port or credentials."""
    if not value:
        return value
    path, _, query = value.partition("?")
    if not path.startswith("/"):
        raise ValueError("must start with '/' (it is appended to the connection's URL)")
    if not _PATH_CHARS.fullmatch(path) or not _QUERY_CHARS.fullmatch(query):
        raise ValueError("may hold only URL path characters (no spaces, '\\', '#' or controls)")
    if "//" in path:
        raise ValueError("must not hold empty segments ('//')")
    if any(seg in (".", "..") for seg in path.split("/")):
        raise ValueError("must not hold '.' or '..' segments")
    if _ENCODED_DOT_OR_SEPARATOR.search(path):
        raise ValueError("must not hold encoded dots or separators (%2e, %2f, %5c)")
    return value


def _own_key(value: str) -> str:
    if value.lower().startswith(INTERNAL_KEY_PREFIX):
        raise ValueError(f"names starting with {INTERNAL_KEY_PREFIX!r} are the gateways' own")
    return value


UrlPath = Annotated[str, AfterValidator(_url_path)]
RedisName = Annotated[str, Field(min_length=1, max_length=512), AfterValidator(_own_key)]


@model
class HttpConfig:
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    path: UrlPath = Field(default="", description="appended to the connection's URL path")
    headers: dict[str, Referable] = Field(default_factory=dict)
    forward_headers: tuple[str, ...] = Field(
        default=("content-type",), description="request headers passed on to the destination"
    )


@model
class HttpStep:
    module: Literal["http"]
    connection: Name
    config: HttpConfig = shared(HttpConfig())
    timeout_s: Seconds | None = None


@model
class RedisStreamConfig:
    stream: RedisName
    maxlen: int | None = Field(default=None, gt=0, description="approximate stream cap")


@model
class RedisStreamStep:
    module: Literal["redis_stream"]
    connection: Name
    config: RedisStreamConfig


@model
class RedisPublishConfig:
    channel: RedisName


@model
class RedisPublishStep:
    module: Literal["redis_publish"]
    connection: Name
    config: RedisPublishConfig


@model
class FileConfig:
    path: Referable = Field(min_length=1, description="JSON lines file, one webhook a line")


@model
class FileStep:
    module: Literal["file"]
    config: FileConfig


@model
class RelayConfig:
    channel: Name = Field(description="what connectors pull from: /connect/NS/CHANNEL/...")
    token: Referable = Field(
        min_length=1, description="the bearer token of the channel's connectors: a reference")
    max_messages: int = Field(default=10_000, gt=0, le=1_000_000,
                              description="messages buffered, not yet acknowledged; then 503")
    max_attempts: int = Field(default=5, ge=1, le=100,
                              description="local delivery failures before the dead-letter list")
    visibility_timeout_s: Seconds = Field(
        default=30, description="an unacknowledged message goes to another connection after it")
    max_in_flight: int = Field(default=100, ge=1, le=1000,
                               description="the largest in-flight window a connector may ask for")


@model
class RelayStep:
    module: Literal["relay"]
    config: RelayConfig

    def secret_fields(self) -> dict[str, str]:
        """Path below the step -> value of each field holding a secret (must be a reference)."""
        return {"config.token": self.config.token}


Step = Annotated[
    LogStep | HttpStep | RedisStreamStep | RedisPublishStep | FileStep | RelayStep
    | DestinationStep,
    Field(discriminator="module"),
]

MODULES = ("log", "http", "redis_stream", "redis_publish", "file", "relay",
           *DESTINATION_MODULES)

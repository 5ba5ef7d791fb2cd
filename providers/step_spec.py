"""`spec.chain.steps[]` of a Webhook: one model per delivery module, discriminated by `module`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from providers.model import Name, Seconds, model, shared


@model
class LogConfig:
    level: Literal["debug", "info", "warning"] = "info"
    include_body: bool = False


@model
class LogStep:
    module: Literal["log"]
    config: LogConfig = shared(LogConfig())


@model
class HttpConfig:
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    path: str = Field(default="", description="appended to the connection's URL")
    headers: dict[str, str] = Field(default_factory=dict)
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
    stream: str = Field(min_length=1)
    maxlen: int | None = Field(default=None, gt=0, description="approximate stream cap")


@model
class RedisStreamStep:
    module: Literal["redis_stream"]
    connection: Name
    config: RedisStreamConfig


@model
class RedisPublishConfig:
    channel: str = Field(min_length=1)


@model
class RedisPublishStep:
    module: Literal["redis_publish"]
    connection: Name
    config: RedisPublishConfig


@model
class FileConfig:
    path: str = Field(min_length=1, description="JSON lines file, one webhook a line")


@model
class FileStep:
    module: Literal["file"]
    config: FileConfig


Step = Annotated[
    LogStep | HttpStep | RedisStreamStep | RedisPublishStep | FileStep,
    Field(discriminator="module"),
]

MODULES = ("log", "http", "redis_stream", "redis_publish", "file")

"""Process settings of a gateway: command-line flag > environment (`WH_*`) > default.

Precedence is decided by presence: the CLI passes only the flags the user actually gave as
init arguments, which pydantic-settings ranks above the environment.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from providers.last_good import default_state_dir
from providers.rollout import parse_selector


def _default_gateway_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class GatewaySettings(BaseSettings):
    # populate_by_name: `labels` is given by that name on the command line, and read from
    # WH_GATEWAY_LABELS (its alias) in the environment.
    model_config = SettingsConfigDict(env_prefix="WH_", extra="ignore", frozen=True,
                                      populate_by_name=True)

    config: str = Field(description="file:PATH | etcd://HOST:PORT[,...]/PREFIX | vault://MOUNT/PATH")
    redis_url: str | None = Field(
        default=None, description="Redis for async delivery and limits: redis://, rediss://, "
        "redis+sentinel://HOST:PORT[,...]/SERVICE or redis+cluster://HOST:PORT[,...]")
    # A 202 waits for this many replicas to hold the delivery (Redis WAIT). Unset: 1 on
    # Sentinel and Cluster, whose failover would otherwise drop the newest accepted writes,
    # and 0 on a single server, which has no replica to wait for.
    redis_wait_replicas: int | None = Field(default=None, ge=0, le=16)
    redis_wait_timeout_ms: int = Field(
        default=1000, ge=1, le=4000,
        description="how long a 202 waits for the replicas; then 503 (the sender retries)")
    gateway_id: str = Field(default_factory=_default_gateway_id)
    # NoDecode: the environment gives `k=v,k2=v2`, not JSON.
    labels: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, validation_alias="wh_gateway_labels",
        description="k=v,k2=v2: reported in the fleet; canary selectors match them")
    state_dir: Path = Field(default_factory=default_state_dir)
    secret_ttl: float = Field(default=60.0, gt=0, description="seconds between secret re-reads")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    log_json: bool = False
    log_level: str = "info"
    delivery_worker: bool = Field(default=True, description="deliver async webhooks in-process")
    worker_concurrency: int = Field(default=32, ge=1, le=10_000)
    claim_idle_s: float = Field(default=30.0, gt=0)
    max_backlog: int = Field(default=100_000, ge=1)
    heartbeat_s: float = Field(default=5.0, gt=0)
    max_concurrent_requests: int = Field(
        default=1000, ge=1,
        description="webhook requests past their body read and being handled at once; reading "
                    "a body does not count, so slow senders cannot use the budget up")
    # The edge (data_plane/edge.py): what a connection may cost before it has proved anything.
    max_connections: int = Field(default=4096, ge=1, description="open connections per process")
    max_connections_per_ip: int = Field(
        default=1024, ge=0,
        description="open connections per peer address (IPv6: per /64); 0 for no cap, as "
                    "behind a proxy every connection comes from the proxy")
    max_header_bytes: int = Field(default=65536, ge=1024, description="request line + headers")
    header_timeout_s: float = Field(default=10.0, gt=0,
                                    description="first byte of a request to the end of its head")
    body_timeout_s: float = Field(default=30.0, gt=0,
                                  description="end of the head to the end of the body")
    keepalive_timeout_s: float = Field(default=5.0, gt=0,
                                       description="idle connection, fresh or between requests")

    @field_validator("labels", mode="before")
    @classmethod
    def _parse_labels(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_selector(value) if value.strip() else {}
        return value

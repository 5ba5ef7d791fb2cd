"""The gateway's Redis client, built in one place from one URL.

    redis://[:PASSWORD@]HOST:PORT[/DB]              one server (rediss:// for TLS)
    redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]
                                                    the master Sentinel names SERVICE, found
                                                    again after a failover (rediss+sentinel://)
    redis+cluster://[:PASSWORD@]HOST:PORT[,HOST:PORT...]
                                                    Redis Cluster from any of its nodes
                                                    (rediss+cluster://)

The password is the data servers'; Sentinels are assumed to need none (their own ACL can be
given with the `sentinel_password` query parameter).

Every client retries a command twice on a dead connection (a restarted server, a failover in
progress) before the caller sees an error, with a short exponential backoff: no 503 for a
pooled socket that went stale, while a Redis that stays down still fails within the callers'
timeouts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

RedisClient = aioredis.Redis | aioredis.RedisCluster

SOCKET_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 2.0
_SENTINEL_TIMEOUT_S = 1.0


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed Redis URL: `mode` is "single", "sentinel" or "cluster"."""

    mode: str
    tls: bool
    hosts: tuple[tuple[str, int], ...]
    service: str | None
    db: int
    username: str | None
    password: str | None
    sentinel_password: str | None

    @property
    def replicated(self) -> bool:
        """Sentinel and Cluster exist to fail over to a replica: their writes have one."""
        return self.mode != "single"


def _hosts(netloc: str) -> tuple[tuple[str, int], ...]:
    hosts = []
    for part in netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"expected HOST:PORT, got {part!r}")
        hosts.append((host.strip("[]"), int(port)))
    return tuple(hosts)


def parse_redis_url(url: str) -> RedisTarget:
    parts = urlsplit(url)
    scheme, _, mode = parts.scheme.partition("+")
    if scheme not in ("redis", "rediss") or mode not in ("", "sentinel", "cluster"):
        raise ValueError(
            f"unsupported Redis URL scheme {parts.scheme!r}: use redis://, rediss://, "
            "redis+sentinel:// or redis+cluster://"
        )
    userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    user, _, password = userinfo.partition(":")
    path = [p for p in parts.path.split("/") if p]
    service = None
    if mode == "sentinel":
        if not path:
            raise ValueError("redis+sentinel:// needs the service name: .../SERVICE[/DB]")
        service = unquote(path.pop(0))
    if mode == "cluster" and path and path != ["0"]:
        raise ValueError("Redis Cluster has only database 0")
    db = int(path[0]) if path else 0
    query = parse_qs(parts.query)
    return RedisTarget(
        mode=mode or "single",
        tls=scheme == "rediss",
        hosts=_hosts(parts.netloc),
        service=service,
        db=db,
        username=unquote(user) or None,
        password=unquote(password) or None,
        sentinel_password=query.get("sentinel_password", [None])[0],
    )


def connect(url: str) -> RedisClient:
    """A lazily connecting client for `url` (see the module docstring for the forms)."""
    target = parse_redis_url(url)
    common: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "username": target.username,
        "password": target.password,
    }
    if target.mode == "cluster":
        return aioredis.RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in target.hosts], ssl=target.tls,
            **common,
        )  # fmt: skip
    if target.mode == "sentinel":
        assert target.service is not None
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(target.hosts),
            sentinel_kwargs={"socket_timeout": _SENTINEL_TIMEOUT_S,
                             "socket_connect_timeout": _SENTINEL_TIMEOUT_S,
                             "password": target.sentinel_password},
            ssl=target.tls, db=target.db, health_check_interval=15, **common,
        )  # fmt: skip
        master: aioredis.Redis = sentinel.master_for(target.service)
        return master
    return aioredis.from_url(url, health_check_interval=15, **common)


def socket_timeout(client: RedisClient) -> float | None:
    """The client's per-read socket timeout (a blocking read must end inside it)."""
    value = client.get_connection_kwargs().get("socket_timeout")
    return float(value) if value else None

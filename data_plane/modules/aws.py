"""What the `s3` and `sqs` modules share: one aiobotocore client per Connection that dials
only the SSRF-checked address, and the mapping of botocore errors onto `DeliveryError`.

botocore's own retries are off (one attempt per call): retrying is the worker's job, with its
backoff and dead letters. A namespaced Connection must name its access keys: without them
botocore would use the gateway's own AWS identity (instance role, environment), which is the
operator's, not the tenant's.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from typing import Any

from data_plane.clients import Conn, Target
from data_plane.errors import DeliveryError

# Throttling and server-side codes worth retrying; any other client error is an answer.
_RETRYABLE_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "SlowDown", "RequestTimeout", "RequestTimeoutException",
    "ServiceUnavailable", "InternalError", "InternalFailure", "ProvisionedThroughputExceeded",
    "KMSThrottlingException",
})  # fmt: skip


@dataclass
class AwsClient:
    client: Any
    stack: contextlib.AsyncExitStack


async def open_client(service: str, conn: Conn, target: Target, endpoint: str | None,
                      region: str) -> AwsClient:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    spec = conn.spec
    if (spec.access_key_id is None) != (spec.secret_access_key is None):
        raise DeliveryError("access_key_id and secret_access_key go together",
                            destination=conn.destination, retryable=False)
    if spec.access_key_id is None and "/" in conn.key:
        raise DeliveryError(f"a namespaced {service} connection must name its access keys",
                            destination=conn.destination, retryable=False)
    config = AioConfig(
        connect_timeout=float(spec.timeout_s),
        read_timeout=float(spec.timeout_s),
        retries={"max_attempts": 1, "mode": "standard"},
        s3={"addressing_style": "path"},
        connector_args={"resolver": pinned_resolver(target)},
        max_pool_connections=64,
    )
    stack = contextlib.AsyncExitStack()
    client = await stack.enter_async_context(get_session().create_client(
        service, region_name=region, endpoint_url=endpoint,
        aws_access_key_id=spec.access_key_id, aws_secret_access_key=spec.secret_access_key,
        config=config,
    ))  # fmt: skip
    return AwsClient(client, stack)


async def close_client(aws: AwsClient) -> None:
    await aws.stack.aclose()


def failure(exc: Exception, destination: str) -> DeliveryError:
    """The DeliveryError for a botocore failure: the error code and status, never the
    message (it can quote a key or a URL)."""
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "unknown"))[:80]
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        retryable = code in _RETRYABLE_CODES or status >= 500 or status in (408, 429)
        return DeliveryError(f"{code} (HTTP {status})", destination=destination,
                             retryable=retryable)
    return DeliveryError(type(exc).__name__, destination=destination)


def errors() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError, OSError)


def pinned_resolver(target: Target) -> Any:
    """An aiohttp resolver that answers the checked address for the checked name and nothing
    else, so botocore dials what the SSRF guard approved while TLS checks the name."""
    from aiohttp.abc import AbstractResolver

    class PinnedResolver(AbstractResolver):
        async def resolve(self, host: str, port: int = 0,
                          family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
            if host != target.name:
                raise OSError(f"{host!r} is not the connection's checked host")
            address_family = socket.AF_INET6 if ":" in target.host else socket.AF_INET
            return [{"hostname": host, "host": target.host, "port": port,
                     "family": address_family, "proto": 0, "flags": socket.AI_NUMERICHOST}]

        async def close(self) -> None:
            return None

    return PinnedResolver()

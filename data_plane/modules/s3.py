"""`s3` step: write the webhook as one object per delivery.

Connection `url: s3://BUCKET[/PREFIX]?endpoint=URL&region=R` (`endpoint` for MinIO, Ceph or
any S3-compatible store; without it AWS's regional endpoint). The object key is
`PREFIX/NAMESPACE/WEBHOOK/YYYY/MM/DD/ID.json` (the date the gateway received it, UTC) and its
content the `redis_publish` envelope, `application/json`. The key is the delivery id: a retry
or a replay writes the same object again, never a second one. The step succeeds once S3
answered the PUT.

aiobotocore is imported on first use.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic.dataclasses import dataclass as settings_dataclass

from data_plane.clients import Clients, Conn, Target, connection
from data_plane.delivery import Delivery
from data_plane.errors import DeliveryError
from data_plane.modules import aws
from data_plane.modules.redis_publish import envelope_json
from providers.connection_spec import S3ConnectionSpec
from providers.destination_steps import S3Step
from providers.snapshot import Endpoint
from providers.url_settings import SETTINGS_CONFIG, query_options, validate

_KIND = "s3"


@settings_dataclass(frozen=True, config=SETTINGS_CONFIG)
class S3Location:
    """Where an s3 Connection's URL says to write."""

    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    prefix: str = ""
    endpoint: str | None = None
    region: str = Field(default="us-east-1", pattern=r"^[a-z0-9-]{1,32}$")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @classmethod
    def from_url(cls, url: str) -> S3Location:
        parts = urlsplit(url)
        options = query_options(parts.query, ("endpoint", "region"), "s3 URL")
        return validate(cls, {"bucket": parts.netloc, "prefix": parts.path.strip("/"), **options},
                        {"bucket": "s3 URL bucket", "prefix": "s3 URL path",
                         "endpoint": "?endpoint", "region": "?region"})

    @property
    def endpoint_url(self) -> str:
        return self.endpoint or f"https://s3.{self.region}.amazonaws.com"


def object_key(prefix: str, delivery: Delivery) -> str:
    day = datetime.fromtimestamp(delivery.received_at, UTC)
    key = f"{delivery.namespace}/{delivery.webhook}/{day:%Y/%m/%d}/{delivery.id}.json"
    return f"{prefix}/{key}" if prefix else key


async def run(step: S3Step, endpoint: Endpoint, delivery: Delivery, clients: Clients) -> None:
    conn = connection(step, endpoint, S3ConnectionSpec)
    timeout_s = step.timeout_s or conn.spec.timeout_s
    try:
        where = S3Location.from_url(conn.spec.url)
    except ValueError as exc:
        raise DeliveryError(str(exc), destination=conn.destination, retryable=False) from None
    tls = where.endpoint_url.startswith("https:")
    try:
        async with asyncio.timeout(timeout_s):
            client = await clients.pooled(
                _KIND, conn, lambda targets: _open(conn, targets, where), aws.close_client,
                default_port=443 if tls else 80, url=where.endpoint_url,
            )  # fmt: skip
            await client.client.put_object(
                Bucket=where.bucket, Key=object_key(where.prefix, delivery),
                Body=envelope_json(delivery), ContentType="application/json",
            )  # fmt: skip
    except TimeoutError:
        raise DeliveryError(f"timed out after {timeout_s:g}s",
                            destination=conn.destination) from None
    except aws.errors() as exc:
        raise aws.failure(exc, conn.destination) from None


async def _open(conn: Conn, targets: tuple[Target, ...], where: S3Location) -> aws.AwsClient:
    return await aws.open_client("s3", conn, targets[0], where.endpoint_url, where.region)

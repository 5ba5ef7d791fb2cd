"""`sqs` step: send the webhook to an SQS queue (the Connection's `url` is the queue URL).

The message body is the `redis_publish` envelope (JSON text), with message attributes
`whplane-id`, `whplane-namespace` and `whplane-webhook`. On a FIFO queue (`.fifo`) the
message group is `NAMESPACE/WEBHOOK` and the deduplication id the delivery id, so SQS drops a
retry or a replay sent within its five-minute deduplication window. The step succeeds once SQS
answered SendMessage (the message is stored).

aiobotocore is imported on first use.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from data_plane.clients import Clients, Conn, Target, connection
from data_plane.delivery import Delivery
from data_plane.errors import DeliveryError
from data_plane.modules import aws
from data_plane.modules.redis_publish import envelope_json
from providers.connection_spec import SqsConnectionSpec
from providers.destination_steps import SqsStep
from providers.snapshot import Endpoint

_KIND = "sqs"


async def run(step: SqsStep, endpoint: Endpoint, delivery: Delivery, clients: Clients) -> None:
    conn = connection(step, endpoint, SqsConnectionSpec)
    timeout_s = step.timeout_s or conn.spec.timeout_s
    queue_url: str = conn.spec.url
    parts = urlsplit(queue_url)
    endpoint_url = f"{parts.scheme}://{parts.netloc}"
    attributes = {
        name: {"DataType": "String", "StringValue": value}
        for name, value in (("whplane-id", delivery.id), ("whplane-namespace", delivery.namespace),
                            ("whplane-webhook", delivery.webhook))
    }
    fifo = {}
    if parts.path.endswith(".fifo"):
        fifo = {"MessageGroupId": f"{delivery.namespace}/{delivery.webhook}",
                "MessageDeduplicationId": delivery.id}
    try:
        async with asyncio.timeout(timeout_s):
            client = await clients.pooled(
                _KIND, conn, lambda targets: _open(conn, targets, endpoint_url), aws.close_client,
                default_port=443 if parts.scheme == "https" else 80, url=endpoint_url,
            )  # fmt: skip
            await client.client.send_message(
                QueueUrl=queue_url, MessageBody=envelope_json(delivery).decode("ascii"),
                MessageAttributes=attributes, **fifo,
            )  # fmt: skip
    except TimeoutError:
        raise DeliveryError(f"timed out after {timeout_s:g}s",
                            destination=conn.destination) from None
    except aws.errors() as exc:
        raise aws.failure(exc, conn.destination) from None


async def _open(conn: Conn, targets: tuple[Target, ...], endpoint_url: str) -> aws.AwsClient:
    return await aws.open_client("sqs", conn, targets[0], endpoint_url, conn.spec.region)

"""`rabbitmq` step: publish the webhook to an AMQP 0-9-1 exchange and wait for the broker's
publisher confirm.

The message body is the webhook's body as received; `message_id` is the delivery id (consumers
deduplicate on it: a retry after a lost confirm publishes again), `content_type` the request's,
`timestamp` when the gateway accepted it, and the headers `x-whplane-namespace`,
`x-whplane-webhook` and `x-whplane-attempt` say where it came from. `persistent: true` (the
default) marks it delivery mode 2, so a durable queue keeps it across a broker restart.

`mandatory` (default true): a message no queue takes (no binding matches, or the default
exchange and no queue of that name) comes back and the step fails, not retried: an operator
must create the queue or binding, then replay the dead letter. A missing exchange is the same.

The client is one connection and one confirming channel per Connection (aio-pika), dialling
the SSRF-checked address (`amqps://` dials the host name, checked when the connection opened,
and verifies the broker's certificate against it).
A channel or connection the broker closed is dropped and opened again by the next delivery.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import unquote, urlsplit

from data_plane.clients import Clients, Conn, Target, connection
from data_plane.delivery import Delivery
from data_plane.errors import DeliveryError
from providers.connection_spec import AmqpConnectionSpec
from providers.destination_steps import RabbitmqStep
from providers.snapshot import Endpoint

DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}
# aiormq's errors for the AMQP replies that retrying cannot fix: access refused (403), not
# found (404, a missing exchange), precondition failed (406), not allowed (530, a vhost the
# user may not use), and credentials refused at connect.
_PERMANENT = ("ChannelAccessRefused", "ChannelNotFoundEntity", "ChannelPreconditionFailed",
              "ConnectionNotAllowed", "ProbableAuthenticationError", "AuthenticationError")


class _Publisher:
    __slots__ = ("channel", "connection", "exchanges")

    def __init__(self, connection: Any, channel: Any) -> None:
        self.connection = connection
        self.channel = channel
        self.exchanges: dict[str, Any] = {}


async def run(
    step: RabbitmqStep, endpoint: Endpoint, delivery: Delivery, clients: Clients
) -> None:
    import aio_pika  # here: a gateway that never delivers to RabbitMQ never imports it
    import aiormq

    conn = connection(step, endpoint, AmqpConnectionSpec)
    timeout_s = step.timeout_s or conn.spec.timeout_s
    cfg = step.config
    message = aio_pika.Message(
        delivery.body,
        message_id=delivery.id,
        content_type=delivery.headers.get("content-type"),
        timestamp=delivery.received_at,
        delivery_mode=(aio_pika.DeliveryMode.PERSISTENT if cfg.persistent
                       else aio_pika.DeliveryMode.NOT_PERSISTENT),
        headers={
            "x-whplane-namespace": delivery.namespace,
            "x-whplane-webhook": delivery.webhook,
            "x-whplane-attempt": delivery.attempt + 1,
        },
    )
    publisher: _Publisher | None = None
    try:
        async with asyncio.timeout(timeout_s):
            publisher = await clients.pooled(
                "rabbitmq", conn, lambda targets: _connect(conn.spec, targets), _close,
                default_port=DEFAULT_PORTS[_scheme(conn.spec.url)],
            )  # fmt: skip
            exchange = publisher.exchanges.get(cfg.exchange)
            if exchange is None:
                exchange = (publisher.channel.default_exchange if not cfg.exchange else
                            await publisher.channel.get_exchange(cfg.exchange, ensure=False))
                publisher.exchanges[cfg.exchange] = exchange
            await exchange.publish(message, cfg.routing_key, mandatory=cfg.mandatory)
    except TimeoutError:
        raise DeliveryError(f"timed out after {timeout_s:g}s", destination=conn.destination
                            ) from None
    except aio_pika.exceptions.PublishError:
        raise DeliveryError("unroutable: no queue is bound for this routing key (returned)",
                            destination=conn.destination, retryable=False) from None
    except aiormq.exceptions.DeliveryError:  # a nack
        raise DeliveryError("the broker refused the message (nack)",
                            destination=conn.destination) from None
    except (aiormq.exceptions.AMQPError, OSError, aiormq.exceptions.ChannelInvalidStateError
            ) as exc:
        if publisher is not None:  # a closed channel or connection: the next delivery reopens
            clients.discard("rabbitmq", conn)
        raise _failure(exc, conn) from None



def _scheme(url: str) -> str:
    return "amqps" if url.startswith("amqps:") else "amqp"


async def _connect(spec: AmqpConnectionSpec, targets: tuple[Target, ...]) -> _Publisher:
    import aio_pika

    url = urlsplit(spec.url)
    target = targets[0]
    tls = _scheme(spec.url) == "amqps"
    connection = await aio_pika.connect(
        # TLS dials the name, which the certificate must match (checked when the pool opened).
        host=target.name if tls else target.host,
        port=target.port,
        login=spec.username or unquote(url.username or "") or "guest",
        password=spec.password or unquote(url.password or "") or "guest",
        virtualhost=unquote(url.path[1:]) if len(url.path) > 1 else "/",
        ssl=tls,
        timeout=spec.timeout_s,
        client_properties={"connection_name": "whplane"},
    )
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    except BaseException:
        await connection.close()
        raise
    return _Publisher(connection, channel)


async def _close(publisher: _Publisher) -> None:
    await publisher.connection.close()


def _failure(exc: BaseException, conn: Conn) -> DeliveryError:
    """The error's kind; never its text, which can quote names and users."""
    kind = type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        kind = f"{kind} ({exc.strerror})"
    return DeliveryError(f"AMQP {kind}", destination=conn.destination,
                         retryable=type(exc).__name__ not in _PERMANENT)

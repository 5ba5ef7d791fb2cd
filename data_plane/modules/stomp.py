"""`stomp` step: send the webhook body to a STOMP destination (ActiveMQ, Artemis, RabbitMQ's
STOMP plugin, ...), asking for a receipt.

Connection `url: stomp://HOST:PORT[/VHOST]` (`stomp+ssl://` for TLS): VHOST is the `host`
header of the CONNECT frame, the virtual host (RabbitMQ: its vhost; default: the URL's host
name). The frame's body is the raw webhook body, with `content-type` and the headers
`whplane-id`, `whplane-namespace` and `whplane-webhook`, and `persistent: true`. The step
succeeds once the broker's RECEIPT for the frame arrived. One connection per Connection; the
socket goes to the SSRF-checked address.

stompman (STOMP 1.2, asyncio) is imported on first use.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Self
from urllib.parse import unquote, urlsplit

from data_plane.clients import Clients, Conn, Target, connection
from data_plane.delivery import Delivery
from data_plane.errors import DeliveryError
from providers.connection_spec import StompConnectionSpec
from providers.destination_steps import StompStep
from providers.snapshot import Endpoint

_KIND = "stomp"


async def run(step: StompStep, endpoint: Endpoint, delivery: Delivery, clients: Clients) -> None:
    import stompman

    conn = connection(step, endpoint, StompConnectionSpec)
    timeout_s = step.timeout_s or conn.spec.timeout_s
    headers = {"whplane-id": delivery.id, "whplane-namespace": delivery.namespace,
               "whplane-webhook": delivery.webhook, "persistent": "true"}
    tls = conn.spec.url.startswith("stomp+ssl:")
    try:
        async with asyncio.timeout(timeout_s):
            client = await clients.pooled(
                _KIND, conn, lambda targets: _connect(conn, targets[0], tls), _close,
                default_port=61614 if tls else 61613,
            )  # fmt: skip
            await client.send(delivery.body, step.config.destination,
                              content_type=delivery.headers.get("content-type"),
                              headers=headers, receipt_timeout=timeout_s)
    except TimeoutError:
        clients.discard(_KIND, conn)
        raise DeliveryError(f"timed out after {timeout_s:g}s",
                            destination=conn.destination) from None
    except stompman.SendReceiptError as exc:
        if exc.reason != "rejected":  # no receipt in time, or the connection went
            clients.discard(_KIND, conn)
            raise DeliveryError(f"no receipt ({exc.reason})",
                                destination=conn.destination) from None
        # The broker answered the frame with an ERROR (no such destination, not allowed).
        message = str(getattr(exc.frame, "headers", {}).get("message", "ERROR frame"))[:120]
        raise DeliveryError(f"broker refused: {message}", destination=conn.destination,
                            retryable=False) from None
    except (stompman.FailedAllConnectAttemptsError, stompman.ConnectionLostError,
            stompman.FailedAllWriteAttemptsError, OSError) as exc:
        clients.discard(_KIND, conn)
        raise DeliveryError(f"STOMP {type(exc).__name__}", destination=conn.destination) from None


async def _connect(conn: Conn, target: Target, tls: bool) -> Any:
    import stompman
    from stompman.connection import Connection

    spec: StompConnectionSpec = conn.spec
    parts = urlsplit(spec.url)
    vhost = unquote(parts.path.lstrip("/")) or target.name

    class PinnedConnection(Connection):
        """Dials the checked address whatever host name stompman passes: stompman uses one
        value for the socket and for the CONNECT frame's `host` (the virtual host)."""

        @classmethod
        async def connect(cls, *, host: str, port: int, timeout: int, read_max_chunk_size: int,
                          ssl: Any, ws_uri_path: str | None = None) -> Self | None:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(target.host, target.port, ssl=ssl,
                                            server_hostname=target.name if ssl else None),
                    timeout=timeout)
            except (TimeoutError, OSError):
                return None
            return cls(reader=reader, writer=writer, read_max_chunk_size=read_max_chunk_size,
                       ssl=ssl)

    timeout = max(1, round(float(spec.timeout_s)))
    client = stompman.Client(
        [stompman.ConnectionParameters(host=vhost, port=target.port, login=spec.username or "",
                                       passcode=spec.password or "")],
        ssl=ssl.create_default_context() if tls else None,
        connect_retry_attempts=1,
        connect_timeout=timeout,
        connection_confirmation_timeout=timeout,
        disconnect_confirmation_timeout=2,
        connection_class=PinnedConnection,
        # stompman drops a connection that is silent for 3 of the server's announced heartbeat
        # intervals; some brokers (coilmq) announce heartbeats they never send. Each frame's
        # receipt timeout finds a dead connection anyway.
        check_server_alive_interval_factor=100,
    )
    await client.__aenter__()
    return client


async def _close(client: Any) -> None:
    await client.__aexit__(None, None, None)

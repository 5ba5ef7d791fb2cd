"""`websocket` step: send the webhook as one text message over a WebSocket.

The message is the `redis_publish` envelope (JSON text). WebSocket has no acknowledgement of
its own, so after the message the module sends a ping and waits for its pong: the peer's
WebSocket layer has then read everything before it. One pooled connection per Connection,
messages on it one at a time; a connection that fails is dropped and the next delivery opens a
new one. The handshake carries the Connection's `headers` and goes to the SSRF-checked address
(TLS still checks the name).

websockets is imported on first use.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from data_plane.clients import Clients, Conn, Target, connection
from data_plane.delivery import Delivery
from data_plane.errors import DeliveryError
from data_plane.modules.redis_publish import envelope_json
from providers.connection_spec import WebsocketConnectionSpec
from providers.destination_steps import WebsocketStep
from providers.snapshot import Endpoint

_KIND = "websocket"
_MAX_MESSAGE = 16 * 1024 * 1024


@dataclass
class _Socket:
    ws: Any
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


async def run(
    step: WebsocketStep, endpoint: Endpoint, delivery: Delivery, clients: Clients
) -> None:
    from websockets.exceptions import InvalidHandshake, InvalidStatus, WebSocketException

    conn = connection(step, endpoint, WebsocketConnectionSpec)
    timeout_s = step.timeout_s or conn.spec.timeout_s
    message = envelope_json(delivery).decode("ascii")
    tls = conn.spec.url.startswith("wss:")
    try:
        async with asyncio.timeout(timeout_s):
            sock = await clients.pooled(
                _KIND, conn, lambda targets: _connect(conn, targets[0]), _close,
                default_port=443 if tls else 80,
            )  # fmt: skip
            async with sock.lock:
                await sock.ws.send(message)
                pong = await sock.ws.ping()
                await pong
    except TimeoutError:
        clients.discard(_KIND, conn)
        raise DeliveryError(f"timed out after {timeout_s:g}s",
                            destination=conn.destination) from None
    except InvalidStatus as exc:
        status = exc.response.status_code
        raise DeliveryError(f"handshake answered HTTP {status}", destination=conn.destination,
                            retryable=status >= 500 or status in (408, 429)) from None
    except (InvalidHandshake, WebSocketException, OSError) as exc:
        clients.discard(_KIND, conn)
        raise DeliveryError(f"WebSocket {type(exc).__name__}",
                            destination=conn.destination) from None


async def _connect(conn: Conn, target: Target) -> _Socket:
    from websockets.asyncio.client import connect

    spec: WebsocketConnectionSpec = conn.spec
    options: dict[str, Any] = {}
    if spec.url.startswith("wss:"):
        import ssl

        context = ssl.create_default_context()
        if not spec.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        options = {"ssl": context, "server_hostname": target.name}
    ws = await connect(
        spec.url,
        host=target.host,  # the checked address; the URL's name stays in Host and TLS
        port=target.port,
        additional_headers=dict(spec.headers),
        open_timeout=float(spec.timeout_s),
        close_timeout=2,
        max_size=_MAX_MESSAGE,
        proxy=None,
        user_agent_header="whplane",
        **options,
    )
    return _Socket(ws)


async def _close(sock: _Socket) -> None:
    await sock.ws.close()

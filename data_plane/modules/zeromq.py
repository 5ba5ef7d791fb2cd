"""`zeromq` step: send the webhook on a ZeroMQ PUSH or PUB socket connected to the peer.

`push`: one frame, the `redis_publish` envelope (JSON); the step succeeds once ZeroMQ took the
message for a connected peer (IMMEDIATE: nothing is queued for a peer that is not there, so a
peer that is down makes the step time out and retry). `pub`: two frames, the topic
`NAMESPACE/WEBHOOK` (subscribers filter on it) and the envelope; publishing is fire and forget,
as ZeroMQ drops messages no subscriber takes. ZeroMQ has no acknowledgement: delivery is at
most once past the socket.

pyzmq is imported on first use.
"""

from __future__ import annotations

import asyncio
from typing import Any

from data_plane.clients import Clients, Conn, Target, connection
from data_plane.delivery import Delivery
from data_plane.errors import DeliveryError
from data_plane.modules.redis_publish import envelope_json
from providers.connection_spec import ZeromqConnectionSpec
from providers.destination_steps import ZeromqStep
from providers.snapshot import Endpoint

_SEND_HWM = 1000


async def run(step: ZeromqStep, endpoint: Endpoint, delivery: Delivery, clients: Clients) -> None:
    import zmq

    conn = connection(step, endpoint, ZeromqConnectionSpec)
    timeout_s = step.timeout_s or conn.spec.timeout_s
    kind = f"zeromq-{step.config.socket}"
    body = envelope_json(delivery)
    try:
        async with asyncio.timeout(timeout_s):
            sock = await clients.pooled(
                kind, conn, lambda targets: _open(conn, targets[0], step.config.socket), _close,
                default_port=5555,
            )  # fmt: skip
            if step.config.socket == "pub":
                topic = f"{delivery.namespace}/{delivery.webhook}".encode()
                await sock.send_multipart([topic, body])
            else:
                await sock.send(body)
    except TimeoutError:
        raise DeliveryError(f"no peer took the message within {timeout_s:g}s",
                            destination=conn.destination) from None
    except zmq.ZMQError as exc:
        clients.discard(kind, conn)
        raise DeliveryError(f"ZeroMQ error {exc.errno}", destination=conn.destination) from None


async def _open(conn: Conn, target: Target, socket_type: str) -> Any:
    import zmq
    import zmq.asyncio

    # One context per socket: closing the socket then ends everything it started.
    context = zmq.asyncio.Context(io_threads=1)
    sock = context.socket(zmq.PUSH if socket_type == "push" else zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, _SEND_HWM)
    if socket_type == "push":
        sock.setsockopt(zmq.IMMEDIATE, 1)
    host = f"[{target.host}]" if ":" in target.host else target.host
    if ":" in target.host:
        sock.setsockopt(zmq.IPV6, 1)
    sock.connect(f"tcp://{host}:{target.port}")
    return sock


async def _close(sock: Any) -> None:
    context = sock.context
    sock.close(linger=0)
    context.term()

"""`stomp` step: send the webhook body to a STOMP destination (ActiveMQ, Artemis, RabbitMQ's
STOMP plugin, ...), asking for a receipt.

Connection `url: stomp://HOST:PORT[/VHOST]` (`stomp+ssl://` for TLS): VHOST is the `host`
header of the CONNECT frame, the virtual host (RabbitMQ: its vhost; default: the URL's host
name). The frame's body is the raw webhook body, with `content-type` and the headers
`whplane-id`, `whplane-namespace` and `whplane-webhook`, and `persistent: true`. The step
succeeds once the broker's RECEIPT for the frame arrived. One connection per Connection; the
socket goes to the SSRF-checked address.

A connection that drops fails the frames awaiting a receipt at once; stompman dials again once,
right away, and a broker that refuses ends the client: the next delivery opens a new one, and a
refused dial fails that attempt at once, not after the step's timeout.

stompman (STOMP 1.2, asyncio) is imported on first use.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any, Self
from urllib.parse import unquote, urlsplit

from data_plane.clients import Clients, Conn, Target, connection
from data_plane.delivery import Delivery
from data_plane.errors import DeliveryError
from providers.connection_spec import StompConnectionSpec
from providers.destination_steps import StompStep
from providers.snapshot import Endpoint

log = logging.getLogger(__name__)

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
            session = await _session(clients, conn, tls)
            if session.ended:  # its connection went and could not be dialled again
                clients.discard(_KIND, conn)
                session = await _session(clients, conn, tls)
            await session.client.send(delivery.body, step.config.destination,
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


async def _session(clients: Clients, conn: Conn, tls: bool) -> _Session:
    return await clients.pooled(
        _KIND, conn, lambda targets: _connect(conn, targets[0], tls), _close,
        default_port=61614 if tls else 61613,
    )  # fmt: skip


class _Session:
    """A stompman client and the task that holds it open.

    stompman's background tasks (reading frames, heartbeats) live in task groups of the task
    that enters the client, and when they fail (the connection went, and dialling again
    failed) that task is cancelled and the failure raised on leaving. So a task of its own
    enters the client and waits until the client is closed or has failed; that failure is
    retrieved here, never left to asyncio's "exception was never retrieved".
    """

    __slots__ = ("client", "closing", "holder")

    def __init__(self, client: Any) -> None:
        self.client = client
        self.closing = asyncio.Event()
        self.holder: asyncio.Task[None] | None = None

    @property
    def ended(self) -> bool:
        return self.holder is None or self.holder.done()

    async def open(self) -> None:
        """Enter the client in the holder task; its own error if it could not connect."""
        entered = asyncio.get_running_loop().create_future()
        self.holder = holder = asyncio.get_running_loop().create_task(
            self._hold(entered), name="stomp client")
        holder.add_done_callback(_retrieved)
        try:
            await asyncio.wait([entered, holder], return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled (the opening's timeout): no client
            if not entered.done():
                holder.cancel()
            await self.close()
            raise
        if not entered.done():  # the holder ended without entering: connecting failed
            entered.cancel()
            raise _unwrapped(None if holder.cancelled() else holder.exception())

    async def _hold(self, entered: asyncio.Future[None]) -> None:
        async with self.client:
            entered.set_result(None)
            await self.closing.wait()

    async def close(self) -> None:
        self.closing.set()
        if self.holder is not None:
            await asyncio.wait([self.holder])


def _retrieved(holder: asyncio.Task[None]) -> None:
    if not holder.cancelled() and (exc := holder.exception()) is not None:
        log.debug("STOMP client ended: %s", type(_unwrapped(exc)).__name__)


def _unwrapped(exc: BaseException | None) -> BaseException:
    """The first error inside (nested) exception groups: what stompman's task groups raise."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc if exc is not None else ConnectionError("the STOMP client ended")


async def _connect(conn: Conn, target: Target, tls: bool) -> _Session:
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
    session = _Session(stompman.Client(
        [stompman.ConnectionParameters(host=vhost, port=target.port, login=spec.username or "",
                                       passcode=spec.password or "")],
        ssl=ssl.create_default_context() if tls else None,
        # One dial, and no pause after a failed one (stompman waits connect_retry_interval
        # after every failed dial, the last included): a broker that refuses fails the
        # delivery now; retrying later is the worker's retry policy.
        connect_retry_attempts=1,
        connect_retry_interval=0,
        connect_timeout=timeout,
        connection_confirmation_timeout=timeout,
        disconnect_confirmation_timeout=2,
        connection_class=PinnedConnection,
        # stompman drops a connection that is silent for 3 of the server's announced heartbeat
        # intervals; some brokers (coilmq) announce heartbeats they never send. Each frame's
        # receipt timeout finds a dead connection anyway.
        check_server_alive_interval_factor=100,
    ))
    await session.open()
    return session


async def _close(session: _Session) -> None:
    await session.close()

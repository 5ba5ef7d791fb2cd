"""`nats` step: publish the webhook to a NATS subject, core NATS or JetStream.

The message payload is the webhook's body as received, with headers `Nats-Msg-Id` (the
delivery id), `Whplane-Namespace`, `Whplane-Webhook` and `Content-Type` (the request's).

- Core NATS (`jetstream: false`, the default): the step succeeds once the server has the
  message (a flush, one PING/PONG round trip after the publish). Core NATS keeps nothing: a
  subscriber that is not listening at that moment never sees it, and a retry after a lost
  PONG publishes again (at least once).
- JetStream (`jetstream: true`): the step succeeds once the stream that captures the subject
  acknowledged the message (stored, replicated as the stream says). `Nats-Msg-Id` makes the
  stream drop a repeat of the same delivery within its duplicate window (2 minutes by default),
  so retries and replays inside it store the message once. No stream for the subject is a
  config problem, not retried.

The client is one connection per Connection (nats-py), dialling the SSRF-checked addresses of
the URL's servers. Servers the cluster announces are never dialled: the connection does not
reconnect by itself; when it is lost, the next delivery opens a new one (checked again).
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import unquote, urlsplit

from data_plane.clients import Clients, Conn, Target, connection
from data_plane.delivery import Delivery
from data_plane.errors import DeliveryError
from providers.connection_spec import NatsConnectionSpec
from providers.destination_steps import NatsStep
from providers.snapshot import Endpoint

DEFAULT_PORT = 4222
# nats-py's errors that retrying cannot fix.
_PERMANENT = ("AuthorizationError", "BadSubjectError", "BadHeaderError", "MaxPayloadError",
              "SecureConnRequiredError", "SecureConnWantedError", "NoStreamResponseError",
              "BadRequestError", "NotFoundError")


async def run(step: NatsStep, endpoint: Endpoint, delivery: Delivery, clients: Clients) -> None:
    import nats.errors  # here: a gateway that never delivers to NATS never imports it

    conn = connection(step, endpoint, NatsConnectionSpec)
    timeout_s = step.timeout_s or conn.spec.timeout_s
    headers = {
        "Nats-Msg-Id": delivery.id,
        "Whplane-Namespace": delivery.namespace,
        "Whplane-Webhook": delivery.webhook,
    }
    content_type = delivery.headers.get("content-type")
    if content_type:
        headers["Content-Type"] = content_type
    client: Any = None
    try:
        async with asyncio.timeout(timeout_s):
            client = await clients.pooled(
                "nats", conn, lambda targets: _connect(conn.spec, targets), _close,
                default_port=DEFAULT_PORT,
            )  # fmt: skip
            if client.is_closed:
                clients.discard("nats", conn)
                client = await clients.pooled(
                    "nats", conn, lambda targets: _connect(conn.spec, targets), _close,
                    default_port=DEFAULT_PORT,
                )  # fmt: skip
            if step.config.jetstream:
                await client.jetstream().publish(
                    step.config.subject, delivery.body, timeout=timeout_s, headers=headers
                )
            else:
                await client.publish(step.config.subject, delivery.body, headers=headers)
                await client.flush(timeout=max(1, int(timeout_s)))
    except (TimeoutError, nats.errors.TimeoutError):
        raise DeliveryError(f"timed out after {timeout_s:g}s", destination=conn.destination
                            ) from None
    except (nats.errors.Error, OSError) as exc:
        if client is not None and client.is_closed:
            clients.discard("nats", conn)
        raise _failure(exc, conn) from None


async def _connect(spec: NatsConnectionSpec, targets: tuple[Target, ...]) -> Any:
    import nats

    url = urlsplit(spec.url.split(",")[0])
    tls = url.scheme == "tls"
    # TLS dials the names, which the certificates must match (checked when this opened).
    servers = [f"{url.scheme}://{t.name if tls else _bracketed(t.host)}:{t.port}"
               for t in targets]
    options: dict[str, Any] = {}
    user = spec.username or unquote(url.username or "")
    password = spec.password or unquote(url.password or "")
    if user:
        options.update(user=user, password=password)
    if spec.token:
        options["token"] = spec.token
    return await nats.connect(
        servers=servers,
        name="whplane",
        connect_timeout=max(1, int(spec.timeout_s)),
        allow_reconnect=False,  # see the module doc: only checked addresses are dialled
        # While connecting, nats-py's 0 means "never give up on a server": a server that
        # refuses would be dialled again every reconnect_time_wait until the step timed out.
        # 1 with no wait: each server is tried twice, at once, then NoServersError.
        max_reconnect_attempts=1,
        reconnect_time_wait=0,
        dont_randomize=True,
        error_cb=_ignore,
        **options,
    )


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def _ignore(exc: Exception) -> None:
    # nats-py reports connection errors here as well as raising them; the step reports them.
    return None


async def _close(client: Any) -> None:
    if not client.is_closed:
        await client.close()


def _failure(exc: BaseException, conn: Conn) -> DeliveryError:
    """The error's kind (and a JetStream API error's code); never its text."""
    kind = type(exc).__name__
    code = getattr(exc, "err_code", None)
    if code:
        kind = f"{kind} (JetStream error {code})"
    elif isinstance(exc, OSError) and exc.strerror:
        kind = f"{kind} ({exc.strerror})"
    return DeliveryError(f"NATS {kind}", destination=conn.destination,
                         retryable=type(exc).__name__ not in _PERMANENT)

"""`http` step: send the webhook body to an HTTP Connection.

`METHOD connection.url + config.path`: the path can only go below the connection's URL (the
model refuses anything else, and `target` checks the result again: a tenant's step must never
send a connection's credentials to another host). Headers from lowest to highest
precedence: the forwarded request headers (`config.forward_headers`), the connection's headers,
the step's headers, then `X-Whplane-Delivery: <id>` and `X-Whplane-Attempt: <n>` (1 for the
first try), which neither a sender nor a config can spoof. Any 2xx is success; redirects are
not followed (the SSRF guard only vouches for the address it checked).

Unless the connection has `allow_private: true`, the request goes through the SSRF-guarded
client: the address dialled is the address checked (see data_plane/ssrf.py).
"""

from __future__ import annotations

import asyncio

import httpx

from data_plane.clients import Clients, connection_spec
from data_plane.delivery import Delivery
from data_plane.errors import DeliveryError, SsrfBlocked
from providers.resources import HttpConnectionSpec
from providers.snapshot import Endpoint
from providers.step_spec import HttpStep

# Never forwarded: they describe the inbound hop, and a wrong one breaks the outbound request.
_HOP_BY_HOP = frozenset(
    {
        "host", "content-length", "connection", "keep-alive", "transfer-encoding", "te",
        "trailer", "upgrade", "expect", "proxy-authorization", "proxy-connection",
    }
)  # fmt: skip
# Reading a small reply to its end lets the connection go back to the pool; a larger one is
# dropped with its connection rather than read into memory.
_DRAIN_BYTES = 64 * 1024


async def run(step: HttpStep, endpoint: Endpoint, delivery: Delivery, clients: Clients) -> None:
    spec, destination = connection_spec(step, endpoint, HttpConnectionSpec)
    timeout_s = step.timeout_s or spec.timeout_s
    try:
        # One deadline for everything, waiting for a free slot included: httpx's own timeouts
        # are per socket operation, so a server dripping a byte a second would never hit them.
        async with asyncio.timeout(timeout_s), clients.http_slot(
            destination, spec.max_connections, verify_tls=spec.verify_tls,
            allow_private=spec.allow_private,
        ) as client:
            async with client.stream(
                step.config.method,
                target(spec.url, step.config.path, destination),
                content=delivery.body,
                headers=_headers(step, spec, delivery),
                timeout=timeout_s,
            ) as response:
                status = response.status_code
                await _drain(response)
    except SsrfBlocked as exc:
        raise SsrfBlocked(exc.reason, destination=destination) from None
    except DeliveryError as exc:  # name resolution by the SSRF guard
        raise DeliveryError(exc.reason, destination=destination, retryable=exc.retryable) from None
    except TimeoutError:
        raise DeliveryError(f"timed out after {timeout_s:g}s", destination=destination) from None
    except (
        httpx.InvalidURL, httpx.UnsupportedProtocol, httpx.LocalProtocolError, UnicodeEncodeError
    ) as exc:
        # Only the kind: these messages can quote a header value. A header that is not ASCII
        # (configured, or forwarded from the sender) will not become sendable by retrying.
        raise DeliveryError(
            f"request not sendable ({type(exc).__name__})", destination=destination,
            retryable=False,
        ) from None
    except httpx.TransportError as exc:
        raise DeliveryError(_kind(exc), destination=destination) from None
    if 200 <= status < 300:
        return
    raise DeliveryError(
        f"HTTP {status}", destination=destination, retryable=status >= 500 or status in (408, 429)
    )


def target(base: str, path: str, destination: str = "") -> httpx.URL:
    """`base` with `path` appended below its path; refuses a result on another origin."""
    url = httpx.URL(base)
    if not path:
        return url
    # A base ending in '/' and a path starting with one must not make an empty segment.
    joined = httpx.URL(base.rstrip("/") + path) if not url.query else url.copy_with(
        path=url.path.rstrip("/") + path.partition("?")[0])
    if (joined.scheme, joined.host, joined.port, joined.userinfo) != (
        url.scheme, url.host, url.port, url.userinfo
    ):
        raise DeliveryError("config.path would leave the connection's host",
                            destination=destination, retryable=False)
    return joined


def _headers(step: HttpStep, spec: HttpConnectionSpec, delivery: Delivery) -> httpx.Headers:
    headers = httpx.Headers()
    for name in step.config.forward_headers:
        name = name.lower()
        value = delivery.headers.get(name)
        if value is not None and name not in _HOP_BY_HOP:
            headers[name] = value
    # Assignment replaces a header of the same name whatever its case.
    for name, value in spec.headers.items():
        headers[name] = value
    for name, value in step.config.headers.items():
        headers[name] = value
    headers["X-Whplane-Delivery"] = delivery.id
    headers["X-Whplane-Attempt"] = str(delivery.attempt + 1)
    return headers


async def _drain(response: httpx.Response) -> None:
    read = 0
    async for chunk in response.aiter_raw():
        read += len(chunk)
        if read > _DRAIN_BYTES:
            return


def _kind(exc: BaseException) -> str:
    """The exception's kind plus, when an OS error lies beneath, its text ("Connection
    refused"): enough to act on, and free of URLs and headers."""
    kind = type(exc).__name__
    seen: BaseException | None = exc
    for _ in range(8):  # chains are short; the bound only guards against a cycle
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.strerror:
            return f"{kind} ({seen.strerror})"
        seen = seen.__cause__ or seen.__context__
    return kind

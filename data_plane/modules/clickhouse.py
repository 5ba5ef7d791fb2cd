"""`clickhouse` step: insert the webhook as one row, through ClickHouse's HTTP interface.

Connection `url: http(s)://HOST:8123/?database=DB` (default database `default`), `username`
and `password` sent as `X-ClickHouse-User` / `X-ClickHouse-Key`. The row has the columns of
the SQL modules: `id`, `namespace`, `webhook`, `received_at` (DateTime64(6, 'UTC')),
`headers` and `payload` (JSON text, as `String`). The table is created if missing, once per
gateway process and Connection, as a `ReplacingMergeTree` ordered by `id`: a retry or a replay
that inserts the same delivery again is merged away, and `insert_deduplication_token` (the
delivery id) drops it at once where the table deduplicates inserts. The step succeeds once
ClickHouse answered 200 to the INSERT.

Requests go through the SSRF-guarded HTTP client unless the Connection has `allow_private`.
"""

from __future__ import annotations

import asyncio
import json

import httpx
from pydantic import Field
from pydantic.dataclasses import dataclass as settings_dataclass

from data_plane.clients import Clients, Conn, connection
from data_plane.delivery import Delivery
from data_plane.errors import DeliveryError, SsrfBlocked
from data_plane.modules.row import quoted, row
from providers.connection_spec import ClickhouseConnectionSpec
from providers.destination_steps import ClickhouseStep
from providers.snapshot import Endpoint
from providers.url_settings import SETTINGS_CONFIG, query_options, validate

_KIND = "clickhouse"
# Inserts in flight per Connection: ClickHouse takes few large writes better than many small
# ones, and its Connection has no `max_connections` of its own.
_MAX_IN_FLIGHT = 16


@settings_dataclass(frozen=True, config=SETTINGS_CONFIG)
class ClickhouseUrl:
    base: str
    database: str = Field(default="default", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

    @classmethod
    def from_url(cls, url: str) -> ClickhouseUrl:
        parsed = httpx.URL(url)
        options = query_options(parsed.query.decode(), ("database",), "clickhouse URL")
        return validate(cls, {"base": str(parsed.copy_with(query=None)), **options},
                        {"database": "?database"})


def create_table(table: str) -> str:
    return (f"CREATE TABLE IF NOT EXISTS {quoted(table, '`')} (id String, namespace String, "
            "webhook String, received_at DateTime64(6, 'UTC'), headers String, payload String) "
            "ENGINE = ReplacingMergeTree ORDER BY id")


def insert(table: str) -> str:
    return (f"INSERT INTO {quoted(table, '`')} (id, namespace, webhook, received_at, headers, "
            "payload) FORMAT JSONEachRow")


def row_json(delivery: Delivery) -> bytes:
    r = row(delivery)
    return json.dumps({
        "id": r.id, "namespace": r.namespace, "webhook": r.webhook,
        "received_at": r.received_at.strftime("%Y-%m-%d %H:%M:%S.%f"),
        "headers": r.headers, "payload": r.payload,
    }, separators=(",", ":")).encode()  # fmt: skip


async def run(
    step: ClickhouseStep, endpoint: Endpoint, delivery: Delivery, clients: Clients
) -> None:
    conn = connection(step, endpoint, ClickhouseConnectionSpec)
    timeout_s = step.timeout_s or conn.spec.timeout_s
    try:
        where = ClickhouseUrl.from_url(conn.spec.url)
    except ValueError as exc:
        raise DeliveryError(str(exc), destination=conn.destination, retryable=False) from None
    table = step.config.table
    try:
        async with asyncio.timeout(timeout_s):
            # pooled() keeps "the table exists" per Connection and table: created once.
            await clients.pooled(f"{_KIND}-table:{table}", conn,
                                 lambda _: _query(clients, conn, where, create_table(table), b""),
                                 _nothing, default_port=8123)
            await _query(clients, conn, where, insert(table), row_json(delivery),
                         insert_deduplication_token=delivery.id)
    except TimeoutError:
        raise DeliveryError(f"timed out after {timeout_s:g}s",
                            destination=conn.destination) from None


async def _query(clients: Clients, conn: Conn, where: ClickhouseUrl, query: str, body: bytes,
                 **settings: str) -> bool:
    spec: ClickhouseConnectionSpec = conn.spec
    headers = {"Content-Type": "application/json"}
    if spec.username is not None:
        headers["X-ClickHouse-User"] = spec.username
    if spec.password is not None:
        headers["X-ClickHouse-Key"] = spec.password
    params = {"database": where.database, "query": query, **settings}
    try:
        # The caller's deadline covers the wait for a slot.
        async with clients.http_slot(conn.destination, _MAX_IN_FLIGHT, verify_tls=True,
                                     allow_private=spec.allow_private) as client:
            response = await client.post(where.base, params=params, content=body,
                                         headers=headers, timeout=float(spec.timeout_s))
    except SsrfBlocked as exc:
        raise SsrfBlocked(exc.reason, destination=conn.destination) from None
    except DeliveryError as exc:
        raise DeliveryError(exc.reason, destination=conn.destination,
                            retryable=exc.retryable) from None
    except httpx.TransportError as exc:
        raise DeliveryError(f"ClickHouse {type(exc).__name__}",
                            destination=conn.destination) from None
    if response.status_code != 200:
        # ClickHouse puts its error code first ("Code: 60. DB::Exception: ..."); the rest can
        # quote the query, so only the code is kept.
        code = response.text.split(".", 1)[0][:40] if response.text.startswith("Code:") else ""
        raise DeliveryError(f"HTTP {response.status_code} {code}".strip(),
                            destination=conn.destination,
                            retryable=response.status_code >= 500 or response.status_code == 429)
    return True


async def _nothing(_: bool) -> None:
    return None

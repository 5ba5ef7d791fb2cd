"""`postgres` step: one row per delivery in `config.table`, keyed by the delivery id.

The table is created if missing (see `data_plane/modules/row.py` for the columns; `headers`
and `payload` are `jsonb`, `received_at` is `timestamptz`), and the row is written with
`INSERT ... ON CONFLICT (id) DO NOTHING`: the step succeeds once PostgreSQL committed it, and a
retry or a replay of the same delivery never adds a second row. An existing table needs at
least these columns, with `id` unique.

The client is an asyncpg pool per Connection (`max_connections`), dialling the SSRF-checked
address. `?sslmode=` in the URL is passed on; with `verify-full` the pool dials the host name,
which the certificate must match (the name was checked when the pool was created).

Failures: connection problems, timeouts and the SQLSTATE classes that mean "try later"
(08 connection, 40 rollback, 53 resources, 57 operator intervention, 58 system) are retried;
refused credentials (28), a missing database (3D), permissions, invalid names or data (42, 22,
23, a `\\u0000` in a JSON string included) are not.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from data_plane.clients import Clients, Conn, Target, connection
from data_plane.delivery import Delivery
from data_plane.errors import DeliveryError
from data_plane.modules.row import quoted, row
from providers.connection_spec import PostgresConnectionSpec
from providers.destination_steps import PostgresStep
from providers.snapshot import Endpoint

DEFAULT_PORT = 5432
_RETRYABLE_CLASSES = ("08", "40", "53", "55", "57", "58", "XX")
_CREATE = """CREATE TABLE IF NOT EXISTS {table} (
    id text PRIMARY KEY,
    namespace text NOT NULL,
    webhook text NOT NULL,
    received_at timestamptz NOT NULL,
    headers jsonb NOT NULL,
    payload jsonb NOT NULL
)"""
_INSERT = """INSERT INTO {table} (id, namespace, webhook, received_at, headers, payload)
VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb) ON CONFLICT (id) DO NOTHING"""


class _Database:
    """A pool and the tables this pool already made sure of."""

    __slots__ = ("pool", "tables")

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.tables: set[str] = set()


async def run(
    step: PostgresStep, endpoint: Endpoint, delivery: Delivery, clients: Clients
) -> None:
    import asyncpg  # here: a gateway that never delivers to PostgreSQL never imports it

    conn = connection(step, endpoint, PostgresConnectionSpec)
    timeout_s = step.timeout_s or conn.spec.timeout_s
    table = step.config.table
    r = row(delivery)
    try:
        async with asyncio.timeout(timeout_s):
            db = await clients.pooled(
                "postgres", conn, lambda targets: _connect(conn.spec, targets), _close,
                default_port=DEFAULT_PORT,
            )  # fmt: skip
            name = quoted(table, '"')
            if table not in db.tables:
                await _create(db.pool, name)
                db.tables.add(table)
            await db.pool.execute(
                _INSERT.format(table=name),
                r.id, r.namespace, r.webhook, r.received_at, r.headers, r.payload,
            )  # fmt: skip
    except TimeoutError:
        raise DeliveryError(f"timed out after {timeout_s:g}s", destination=conn.destination
                            ) from None
    except asyncpg.PostgresError as exc:
        raise _failure(exc, conn) from None
    except (OSError, asyncpg.InterfaceError) as exc:
        raise DeliveryError(_kind(exc), destination=conn.destination) from None


async def _connect(spec: PostgresConnectionSpec, targets: tuple[Target, ...]) -> _Database:
    import asyncpg

    url = urlsplit(spec.url)
    target = targets[0]
    sslmode = next(iter(parse_qs(url.query).get("sslmode", ())), None)
    pool = await asyncpg.create_pool(
        host=target.name if sslmode == "verify-full" else target.host,
        port=target.port,
        user=spec.username or (unquote(url.username) if url.username else None),
        password=spec.password or (unquote(url.password) if url.password else None),
        database=unquote(url.path.lstrip("/")) or None,
        ssl=sslmode,
        min_size=1,
        max_size=spec.max_connections,
        timeout=spec.timeout_s,  # connecting
        command_timeout=spec.timeout_s,
        server_settings={"application_name": "whplane"},
    )
    return _Database(pool)


async def _close(db: _Database) -> None:
    try:
        await db.pool.close()  # waits for connections in use
    except BaseException:
        db.pool.terminate()
        raise


async def _create(pool: Any, name: str) -> None:
    import asyncpg

    try:
        await pool.execute(_CREATE.format(table=name))
    except (asyncpg.UniqueViolationError, asyncpg.DuplicateTableError):
        pass  # another gateway created it between our check and our CREATE: fine


def _failure(exc: Any, conn: Conn) -> DeliveryError:
    """SQLSTATE and the error's kind; never its message, which can quote row values."""
    code = str(getattr(exc, "sqlstate", "") or "")
    return DeliveryError(
        f"PostgreSQL {type(exc).__name__} (SQLSTATE {code or '?'})",
        destination=conn.destination,
        retryable=code[:2] in _RETRYABLE_CLASSES,
    )


def _kind(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__} ({exc.strerror})"
    return type(exc).__name__

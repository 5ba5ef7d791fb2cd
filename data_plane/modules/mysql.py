"""`mysql` step (MySQL and MariaDB): one row per delivery in `config.table`, keyed by the
delivery id.

The table is created if missing (columns in `data_plane/modules/row.py`: `id` VARCHAR(191)
primary key, `received_at` DATETIME(6) in UTC, `headers` and `payload` JSON) and the row is
written with `INSERT ... ON DUPLICATE KEY UPDATE id = id` in autocommit: the step succeeds once
the server committed it, and a retry or a replay of the same delivery never adds a second row
(unlike `INSERT IGNORE`, other errors still fail the step).

The client is an asyncmy pool per Connection (`max_connections`), dialling the SSRF-checked
address. Failures: connection problems, timeouts, lock waits, deadlocks and "too many
connections" are retried; refused credentials, missing permissions or databases, invalid
names or data are not. Messages carry the error's kind and MySQL error number, never its
text (it can quote row values).
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import unquote, urlsplit

from data_plane.clients import Clients, Conn, Target, connection
from data_plane.delivery import Delivery
from data_plane.errors import DeliveryError
from data_plane.modules.row import quoted, row
from providers.connection_spec import MysqlConnectionSpec
from providers.destination_steps import MysqlStep
from providers.snapshot import Endpoint

DEFAULT_PORT = 3306
# Server and client error numbers worth retrying: too many connections (1040), lock wait
# timeout (1205), deadlock (1213), read-only while failing over (1290, 1836), query
# interrupted (1317), and the client's connection errors (2002-2013, 2055).
_RETRYABLE = frozenset({1040, 1053, 1205, 1213, 1290, 1317, 1836, 2002, 2003, 2005, 2006, 2013,
                        2055})
_CREATE = """CREATE TABLE IF NOT EXISTS {table} (
    id VARCHAR(191) NOT NULL PRIMARY KEY,
    namespace VARCHAR(63) NOT NULL,
    webhook VARCHAR(63) NOT NULL,
    received_at DATETIME(6) NOT NULL,
    headers JSON NOT NULL,
    payload JSON NOT NULL
) CHARACTER SET utf8mb4"""
_INSERT = """INSERT INTO {table} (id, namespace, webhook, received_at, headers, payload)
VALUES (%s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE id = id"""


class _Database:
    """A pool and the tables this pool already made sure of."""

    __slots__ = ("pool", "tables")

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.tables: set[str] = set()


async def run(step: MysqlStep, endpoint: Endpoint, delivery: Delivery, clients: Clients) -> None:
    import asyncmy.errors  # here: a gateway that never delivers to MySQL never imports it

    conn = connection(step, endpoint, MysqlConnectionSpec)
    timeout_s = step.timeout_s or conn.spec.timeout_s
    table = step.config.table
    r = row(delivery)
    values = (r.id, r.namespace, r.webhook, r.received_at.replace(tzinfo=None), r.headers,
              r.payload)
    try:
        async with asyncio.timeout(timeout_s):
            db = await clients.pooled(
                "mysql", conn, lambda targets: _connect(conn.spec, targets), _close,
                default_port=DEFAULT_PORT,
            )  # fmt: skip
            name = quoted(table, "`")
            async with db.pool.acquire() as c, c.cursor() as cursor:
                if table not in db.tables:
                    await cursor.execute(_CREATE.format(table=name))
                    db.tables.add(table)
                await cursor.execute(_INSERT.format(table=name), values)
    except TimeoutError:
        raise DeliveryError(f"timed out after {timeout_s:g}s", destination=conn.destination
                            ) from None
    except asyncmy.errors.MySQLError as exc:
        raise _failure(exc, conn) from None
    except OSError as exc:
        raise DeliveryError(f"{type(exc).__name__} ({exc.strerror})",
                            destination=conn.destination) from None


async def _connect(spec: MysqlConnectionSpec, targets: tuple[Target, ...]) -> _Database:
    import asyncmy

    url = urlsplit(spec.url)
    target = targets[0]
    pool = await asyncmy.create_pool(
        minsize=1,
        maxsize=spec.max_connections,
        pool_recycle=300,  # a connection the server dropped while idle is not handed out
        host=target.host,
        port=target.port,
        user=spec.username or unquote(url.username or "") or "root",
        password=spec.password or unquote(url.password or ""),
        database=unquote(url.path.lstrip("/")) or None,
        connect_timeout=spec.timeout_s,
        read_timeout=spec.timeout_s,
        autocommit=True,
        charset="utf8mb4",
        program_name="whplane",
    )
    return _Database(pool)


async def _close(db: _Database) -> None:
    db.pool.close()
    try:
        await db.pool.wait_closed()
    except BaseException:
        db.pool.terminate()
        raise


def _failure(exc: BaseException, conn: Conn) -> DeliveryError:
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    return DeliveryError(
        f"MySQL {type(exc).__name__} ({code if code is not None else '?'})",
        destination=conn.destination,
        retryable=code in _RETRYABLE or (code is None and type(exc).__name__ in (
            "InterfaceError", "OperationalError")),
    )

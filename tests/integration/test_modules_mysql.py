"""`mysql` against a real MariaDB/MySQL (127.0.0.1:3306 root, database test, or MYSQL_URL),
read back with PyMySQL: one row per delivery in a created table, retries that never add a row,
failures classified. Through a real gateway process: test_modules_gateway.py."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC
from typing import Any
from urllib.parse import unquote, urlsplit

import pymysql
import pytest

from cli.servers import free_port
from data_plane.clients import Clients
from data_plane.errors import DeliveryError, SsrfBlocked
from tests.module_kit import delivery, endpoint, run_step


def connect(url: str) -> Any:
    parts = urlsplit(url)
    return pymysql.connect(host=parts.hostname, port=parts.port or 3306,
                           user=unquote(parts.username or "root"),
                           password=unquote(parts.password or ""),
                           database=parts.path.lstrip("/") or None, autocommit=True)


@pytest.fixture
def table(mysql_url: str) -> Iterator[str]:
    name = f"wh_{uuid.uuid4().hex[:10]}"
    yield name
    with connect(mysql_url) as db, db.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS `{name}`")


def rows(mysql_url: str, table: str) -> list[tuple[Any, ...]]:
    with connect(mysql_url) as db, db.cursor() as cur:
        cur.execute(f"SELECT id, namespace, webhook, received_at, headers, payload FROM `{table}`")
        return list(cur.fetchall())


def step(table: str) -> dict[str, Any]:
    return {"module": "mysql", "connection": "dest", "config": {"table": table}}


async def test_one_row_per_delivery_in_a_created_table(mysql_url: str, table: str) -> None:
    ep = endpoint(step(table), {"type": "mysql", "url": mysql_url, "allow_private": True})
    d = delivery(b'{"event": "push", "emoji": "\\u00e9"}')
    other = delivery(b"plain text")
    async with Clients() as clients:
        await run_step(ep, d, clients)
        await run_step(ep, d.next_attempt(), clients)  # a retry: no second row
        await run_step(ep, other, clients)
    got = {r[0]: r for r in rows(mysql_url, table)}
    assert set(got) == {d.id, other.id}
    _, namespace, webhook, received_at, headers, payload = got[d.id]
    assert (namespace, webhook) == ("acme", "hook")
    assert abs(received_at.replace(tzinfo=UTC).timestamp()
               - d.received_at) < 1e-3
    assert json.loads(headers) == {"content-type": "application/json"}
    assert json.loads(payload) == {"event": "push", "emoji": "é"}
    assert json.loads(got[other.id][5]) == {"body": "plain text", "body_encoding": "utf-8"}


async def test_down_is_retryable_bad_login_is_not(mysql_url: str) -> None:
    down = endpoint(step("events"), {"type": "mysql", "url": f"mysql://root@127.0.0.1:{free_port()}/test",
                                     "password": "s3cret-pw", "allow_private": True,
                                     "timeout_s": 2})
    parts = urlsplit(mysql_url)
    refused = endpoint(step("events"), {
        "type": "mysql", "url": f"mysql://no_such_user_wh@{parts.hostname}:{parts.port or 3306}/test",
        "password": "s3cret-pw", "allow_private": True, "timeout_s": 5})
    async with Clients() as clients:
        with pytest.raises(DeliveryError) as unreachable:
            await run_step(down, delivery(), clients)
        with pytest.raises(DeliveryError) as login:
            await run_step(refused, delivery(), clients)
    assert unreachable.value.retryable, unreachable.value
    assert not login.value.retryable, login.value
    assert "(1045)" in str(login.value) or "(1698)" in str(login.value)  # access denied
    for error in (unreachable.value, login.value):
        assert str(error).startswith("mysql:acme/dest: ") and "s3cret-pw" not in str(error)


async def test_loopback_refused_without_allow_private(mysql_url: str) -> None:
    ep = endpoint(step("events"), {"type": "mysql", "url": mysql_url})
    async with Clients() as clients:
        with pytest.raises(SsrfBlocked):
            await run_step(ep, delivery(), clients)

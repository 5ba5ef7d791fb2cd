"""`postgres` against a real PostgreSQL (127.0.0.1:5432 or POSTGRES_URL), read back with
psycopg: one row per delivery, created table, retries and replays that never add a row,
failures classified. Through a real gateway process: test_modules_gateway.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from cli.servers import free_port
from data_plane.clients import Clients
from data_plane.errors import DeliveryError, SsrfBlocked
from tests.module_kit import delivery, endpoint, run_step


@pytest.fixture
def table(postgres_url: str) -> Iterator[str]:
    name = f"wh_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(postgres_url) as db:
        db.execute(f'DROP TABLE IF EXISTS "{name}"')


def rows(postgres_url: str, table: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(postgres_url) as db:
        return db.execute(
            f'SELECT id, namespace, webhook, received_at, headers, payload FROM "{table}" '
            "ORDER BY received_at").fetchall()


def step(table: str) -> dict[str, Any]:
    return {"module": "postgres", "connection": "dest", "config": {"table": table}}


async def test_one_row_per_delivery_in_a_created_table(postgres_url: str, table: str) -> None:
    ep = endpoint(step(table), {"type": "postgres", "url": postgres_url, "allow_private": True})
    json_body = delivery(b'{"event": "push", "n": [1, 2]}')
    text_body = delivery(b"a=1&b=2", headers={"content-type": "application/x-www-form-urlencoded"})
    binary_body = delivery(b"\xff\x00\x01")
    async with Clients() as clients:
        await run_step(ep, json_body, clients)
        await run_step(ep, json_body.next_attempt(), clients)  # a retry: no second row
        await run_step(ep, text_body, clients)
        await run_step(ep, binary_body, clients)
    got = {r[0]: r for r in rows(postgres_url, table)}
    assert set(got) == {json_body.id, text_body.id, binary_body.id}
    _, namespace, webhook, received_at, headers, payload = got[json_body.id]
    assert (namespace, webhook) == ("acme", "hook")
    assert abs(received_at.timestamp() - json_body.received_at) < 1e-3
    assert headers == {"content-type": "application/json"}
    assert payload == {"event": "push", "n": [1, 2]}
    assert got[text_body.id][5] == {"body": "a=1&b=2", "body_encoding": "utf-8"}
    assert got[binary_body.id][5] == {"body": "/wAB", "body_encoding": "base64"}


async def test_an_existing_table_is_used(postgres_url: str, table: str) -> None:
    with psycopg.connect(postgres_url) as db:
        db.execute(f'CREATE TABLE "{table}" (id text PRIMARY KEY, namespace text, webhook text, '
                   "received_at timestamptz, headers jsonb, payload jsonb, "
                   "note text DEFAULT 'mine')")
    ep = endpoint(step(table), {"type": "postgres", "url": postgres_url, "allow_private": True})
    d = delivery()
    async with Clients() as clients:
        await run_step(ep, d, clients)
    with psycopg.connect(postgres_url) as db:
        assert db.execute(f'SELECT id, note FROM "{table}"').fetchall() == [(d.id, "mine")]


async def test_down_is_retryable_and_names_the_connection_never_the_password() -> None:
    ep = endpoint(step("events"), {
        "type": "postgres", "url": f"postgresql://whplane@127.0.0.1:{free_port()}/test",
        "password": "s3cret-pw", "allow_private": True, "timeout_s": 2})
    async with Clients() as clients:
        with pytest.raises(DeliveryError) as caught:
            await run_step(ep, delivery(), clients)
    assert caught.value.retryable
    assert str(caught.value).startswith("postgres:acme/dest: ")
    assert "s3cret-pw" not in str(caught.value)


async def test_refused_credentials_are_not_retried(postgres_url: str) -> None:
    host, port = _address(postgres_url)
    ep = endpoint(step("events"), {
        "type": "postgres", "url": f"postgresql://no_such_role_wh@{host}:{port}/test",
        "allow_private": True, "timeout_s": 5})
    async with Clients() as clients:
        with pytest.raises(DeliveryError) as caught:
            await run_step(ep, delivery(), clients)
    assert not caught.value.retryable, caught.value
    assert "SQLSTATE 28" in str(caught.value)


async def test_loopback_refused_without_allow_private(postgres_url: str) -> None:
    ep = endpoint(step("events"), {"type": "postgres", "url": postgres_url})
    async with Clients() as clients:
        with pytest.raises(SsrfBlocked) as caught:
            await run_step(ep, delivery(), clients)
    assert caught.value.destination == "postgres:acme/dest"
    assert not caught.value.retryable


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 5432

"""`postgres` against a real PostgreSQL (127.0.0.1:5432 or POSTGRES_URL), read back with
psycopg: one row per delivery, created table, retries and replays that never add a row, and
the real gateway process (sync 200/502, async retries -> dead letter -> `whplane dlq replay`
delivers exactly once once the database is back)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest

from cli.servers import RedisServer, free_port
from data_plane.clients import Clients
from data_plane.errors import DeliveryError, SsrfBlocked
from tests.module_kit import Gateway, connection_doc, delivery, endpoint, run_step, webhook_doc
from tests.tcp_proxy import TcpProxy

ROOT = Path(__file__).resolve().parents[2]


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


def via(url: str, address: str) -> str:
    """`url` with its host and port replaced by `address` (a proxy in front of the server)."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}{address}"))


def step(table: str, connection: str = "dest") -> dict[str, Any]:
    return {"module": "postgres", "connection": connection, "config": {"table": table}}


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


# --- through a real gateway process ---------------------------------------------------------


def dlq(*args: str, redis_url: str) -> str:
    return subprocess.run([sys.executable, "-m", "cli.whplane", "dlq", *args, "--redis-url",
                           redis_url], cwd=ROOT, capture_output=True, text=True, check=True,
                          timeout=60).stdout


def wait_until(probe: Any, timeout: float = 20, what: str = "it") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(0.1)


def test_gateway_sync_200_and_502_while_down(tmp_path: Path, postgres_url: str,
                                             table: str) -> None:
    with TcpProxy(*_address(postgres_url)) as proxy:
        docs = [
            connection_doc("db", {"type": "postgres", "url": via(postgres_url, proxy.address),
                                  "allow_private": True, "timeout_s": 2,
                                  "circuit": {"failures": 2, "cooldown_s": 60}}),
            webhook_doc("to-pg", [step(table, "db")]),
        ]
        with Gateway(tmp_path, docs) as gw:
            answer = gw.post("to-pg", {"order": 1})
            assert answer.status_code == 200, answer.text
            [(row_id, *_, payload)] = rows(postgres_url, table)
            assert (row_id, payload) == (answer.json()["id"], {"order": 1})

            proxy.down()
            assert [gw.post("to-pg", {"order": n}).status_code for n in (2, 3, 4)] == [502] * 3
            metrics = httpx.get(f"{gw.process.url}/metrics", timeout=5).text
            # Two failures opened the circuit: the third webhook was refused without trying.
            assert 'whplane_circuit_state{connection="acme/db"} 2.0' in metrics
            assert 'whplane_module_deliveries_total{module="postgres",result="ok"} 1.0' in metrics
            assert ('whplane_module_deliveries_total{module="postgres",result="circuit_open"} 1.0'
                    in metrics)
        assert len(rows(postgres_url, table)) == 1


def test_gateway_async_retries_dead_letters_then_replay_delivers_exactly_once(
    tmp_path: Path, postgres_url: str, table: str, redis_own: RedisServer
) -> None:
    with TcpProxy(*_address(postgres_url)) as proxy:
        proxy.down()
        docs = [
            connection_doc("db", {"type": "postgres", "url": via(postgres_url, proxy.address),
                                  "allow_private": True, "timeout_s": 2,
                                  "circuit": {"failures": 100, "cooldown_s": 1}}),
            webhook_doc("to-pg", [step(table, "db")], mode="async",
                        retry={"attempts": 3, "initial_delay_s": 0.05, "max_delay_s": 0.2}),
        ]
        with Gateway(tmp_path, docs, WH_REDIS_URL=redis_own.url) as gw:
            answer = gw.post("to-pg", {"order": 7})
            assert answer.status_code == 202, answer.text
            delivery_id = answer.json()["id"]
            [dead] = wait_until(lambda: json.loads(dlq("list", "-o", "json",
                                                       redis_url=redis_own.url)),
                                what="the dead letter")
            assert (dead["delivery"], dead["attempts"]) == (delivery_id, 3)
            assert dead["last_error"].count("postgres:acme/db") == 1
            proxy.up()
            dlq("replay", dead["id"], redis_url=redis_own.url)
            wait_until(lambda: rows(postgres_url, table), what="the replayed row")
            time.sleep(0.5)  # anything more would have arrived by now
            assert [(r[0], r[5]) for r in rows(postgres_url, table)] == [
                (delivery_id, {"order": 7})]


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 5432

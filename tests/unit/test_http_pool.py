"""The HTTP pool's bookkeeping: slots, idle clients, caps and expiry (no request is sent; what
a slot's client does on the wire is tested through the http module)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from data_plane.http_pool import HttpPool


def slot(pool: HttpPool, destination: str, max_connections: int = 10) -> Any:
    return pool.slot(destination, max_connections, verify_tls=True, allow_private=True)


async def settle() -> None:
    for _ in range(5):  # clients are closed by tasks of their own
        await asyncio.sleep(0)


async def test_a_destination_reuses_its_idle_client() -> None:
    pool = HttpPool()
    async with slot(pool, "a") as first:
        pass
    async with slot(pool, "a") as again:
        assert again is first
    async with slot(pool, "b") as other:
        assert other is not first
    assert pool.stats() == {"busy": 0, "idle": 2, "destinations": 2}
    await pool.aclose()
    assert first.is_closed and other.is_closed


async def test_requests_in_flight_each_have_a_client_and_wait_at_the_cap() -> None:
    pool = HttpPool()
    async with slot(pool, "a", 2) as one, slot(pool, "a", 2) as two:
        assert one is not two
        assert pool.stats()["busy"] == 2
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                async with slot(pool, "a", 2):
                    pass
    async with slot(pool, "a", 2):  # the cap is released with the slots
        pass
    await pool.aclose()


async def test_the_cap_in_all_holds_across_destinations() -> None:
    pool = HttpPool(max_connections=2)
    async with slot(pool, "a"), slot(pool, "b"):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                async with slot(pool, "c"):
                    pass
    await pool.aclose()


async def test_idle_clients_beyond_the_cap_are_closed_oldest_first() -> None:
    pool = HttpPool(max_idle=2)
    clients: list[httpx.AsyncClient] = []
    for name in ("a", "b", "c"):
        async with slot(pool, name) as client:
            clients.append(client)
    await settle()
    assert [c.is_closed for c in clients] == [True, False, False]
    assert pool.stats()["idle"] == 2
    await pool.aclose()


async def test_sockets_held_idle_make_way_for_a_new_destination() -> None:
    pool = HttpPool(max_connections=2, max_idle=10)
    async with slot(pool, "a") as a:
        pass
    async with slot(pool, "b") as b:
        async with slot(pool, "c"):  # two lent and one idle would be three sockets
            await settle()
            assert a.is_closed and not b.is_closed
    await pool.aclose()


async def test_idle_clients_expire() -> None:
    pool = HttpPool(idle_expiry_s=0.05)
    async with slot(pool, "a") as old:
        pass
    await asyncio.sleep(0.1)
    async with slot(pool, "a") as fresh:
        assert fresh is not old
    await settle()
    assert old.is_closed
    await pool.aclose()


async def test_a_dropped_destination_closes_its_clients_even_lent_ones() -> None:
    pool = HttpPool(max_destinations=1)
    async with slot(pool, "a") as idle:
        pass
    async with slot(pool, "a") as lent:
        assert lent is idle
        async with slot(pool, "b"):  # "a" leaves the pool while its client is out
            pass
        assert not lent.is_closed
    await settle()
    assert lent.is_closed
    assert pool.stats()["destinations"] == 1
    await pool.aclose()


async def test_a_closed_pool_lends_nothing() -> None:
    pool = HttpPool()
    async with slot(pool, "a") as lent:
        await pool.aclose()
    await settle()
    assert lent.is_closed
    with pytest.raises(RuntimeError, match="closed"):
        async with slot(pool, "a"):
            pass

"""A deleted Connection's pooled client is closed with the next snapshot, not kept until
evicted; the clients of Connections still present stay open."""

from __future__ import annotations

import asyncio
from typing import Any

from data_plane.clients import Clients, Conn, Target


class _Spec:
    url = "fake://db.example:1"
    timeout_s = 0.1
    allow_private = True


async def test_retain_closes_only_the_clients_of_gone_connections() -> None:
    closed: list[str] = []

    async def close(client: str) -> None:
        closed.append(client)

    async with Clients() as clients:
        for key in ("acme/db", "acme/gone", "shared"):
            conn = Conn(key, _Spec(), f"postgres:{key}")

            async def factory(targets: tuple[Target, ...], key: str = key) -> Any:
                return f"client of {key}"

            assert await clients.pooled("postgres", conn, factory, close,
                                        default_port=1) == f"client of {key}"
        clients.retain(lambda key: key != "acme/gone")
        for _ in range(100):  # closed after a grace period of 3 x timeout_s
            if closed:
                break
            await asyncio.sleep(0.05)
        assert closed == ["client of acme/gone"]
    assert sorted(closed) == ["client of acme/db", "client of acme/gone", "client of shared"]

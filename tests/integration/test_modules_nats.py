"""`nats` against a real NATS server with JetStream (127.0.0.1:4222, or NATS_URL), read back
with a few lines of the NATS text protocol over a plain socket (an independent client, not
nats-py): core publishes with headers, JetStream publishes acknowledged and deduplicated by
delivery id, failures classified. Through a real gateway process: test_modules_gateway.py."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from cli.servers import free_port
from data_plane.clients import Clients
from data_plane.errors import DeliveryError, SsrfBlocked
from tests.module_kit import RawNats, delivery, endpoint, run_step


@pytest.fixture
def raw(nats_url: str) -> Iterator[RawNats]:
    client = RawNats(nats_url)
    yield client
    client.close()


@pytest.fixture
def subject() -> str:
    return f"wh.test.{uuid.uuid4().hex[:8]}"


@pytest.fixture
def stream(raw: RawNats, subject: str) -> Iterator[str]:
    name = f"WH_TEST_{uuid.uuid4().hex[:8].upper()}"
    created = raw.request(f"$JS.API.STREAM.CREATE.{name}", {
        "name": name, "subjects": [subject], "storage": "memory", "duplicate_window": 60_000_000_000})
    assert "error" not in created, created
    yield name
    raw.request(f"$JS.API.STREAM.DELETE.{name}", {})


def step(subject: str, jetstream: bool = False) -> dict[str, Any]:
    return {"module": "nats", "connection": "dest",
            "config": {"subject": subject, "jetstream": jetstream}}


async def test_core_publish_with_headers(nats_url: str, raw: RawNats, subject: str) -> None:
    raw.subscribe(subject)
    ep = endpoint(step(subject), {"type": "nats", "url": nats_url, "allow_private": True})
    d = delivery(b'{"event":"push"}')
    async with Clients() as clients:
        await run_step(ep, d, clients)
        await run_step(ep, delivery(b"second", headers={}), clients)  # the pooled client
    got_subject, headers, body = raw.next_message()
    assert (got_subject, body) == (subject, b'{"event":"push"}')
    assert headers == {"Nats-Msg-Id": d.id, "Whplane-Namespace": "acme",
                       "Whplane-Webhook": "hook", "Content-Type": "application/json"}
    assert raw.next_message()[2] == b"second"


async def test_jetstream_acknowledged_once_per_delivery(nats_url: str, raw: RawNats,
                                                        subject: str, stream: str) -> None:
    ep = endpoint(step(subject, jetstream=True),
                  {"type": "nats", "url": nats_url, "allow_private": True})
    d = delivery(b'{"n":1}')
    async with Clients() as clients:
        await run_step(ep, d, clients)
        await run_step(ep, d.next_attempt(), clients)  # a retry: the stream drops the repeat
        await run_step(ep, delivery(b'{"n":2}'), clients)
    info = raw.request(f"$JS.API.STREAM.INFO.{stream}", {})
    assert info["state"]["messages"] == 2
    first = raw.request(f"$JS.API.STREAM.MSG.GET.{stream}", {"seq": 1})["message"]
    assert base64.b64decode(first["data"]) == b'{"n":1}'
    assert f"Nats-Msg-Id: {d.id}" in base64.b64decode(first["hdrs"]).decode()


async def test_jetstream_without_a_stream_is_not_retried(nats_url: str) -> None:
    ep = endpoint(step(f"wh.nostream.{uuid.uuid4().hex[:8]}", jetstream=True),
                  {"type": "nats", "url": nats_url, "allow_private": True, "timeout_s": 3})
    async with Clients() as clients:
        with pytest.raises(DeliveryError) as caught:
            await run_step(ep, delivery(), clients)
    assert not caught.value.retryable, caught.value


async def test_down_is_retryable_and_never_shows_the_token() -> None:
    ep = endpoint(step("a.b"), {"type": "nats", "url": f"nats://127.0.0.1:{free_port()}",
                                "token": "s3cret-token", "allow_private": True, "timeout_s": 2})
    async with Clients() as clients:
        with pytest.raises(DeliveryError) as caught:
            await run_step(ep, delivery(), clients)
    assert caught.value.retryable, caught.value
    assert str(caught.value).startswith("nats:acme/dest: ")
    assert "s3cret-token" not in str(caught.value)
    # A server that refuses is given up on, not dialled again until the step times out.
    assert "NoServersError" in str(caught.value), caught.value


async def test_loopback_refused_without_allow_private(nats_url: str) -> None:
    ep = endpoint(step("a.b"), {"type": "nats", "url": nats_url})
    async with Clients() as clients:
        with pytest.raises(SsrfBlocked):
            await run_step(ep, delivery(), clients)

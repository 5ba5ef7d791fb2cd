"""`mqtt` against a real broker (Mosquitto on 1883, or MQTT_URL), read back with paho-mqtt.
Through a real gateway process: test_modules_gateway.py."""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from cli.servers import free_port
from data_plane.clients import Clients
from data_plane.errors import DeliveryError, SsrfBlocked
from tests.module_kit import delivery, endpoint, run_step


class Subscriber:
    """paho-mqtt subscribed to one topic at QoS 1 in its own thread."""

    def __init__(self, url: str, topic: str) -> None:
        from paho.mqtt import client as mqtt

        parts = urlsplit(url)
        self.messages: queue.Queue[Any] = queue.Queue()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
        self.client.loop_start()
        assert subscribed.wait(5), "paho did not subscribe"

    def get(self, timeout: float = 5) -> Any:
        return self.messages.get(timeout=timeout)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def topic() -> str:
    return f"whplane/test/{uuid.uuid4().hex[:8]}"


@pytest.fixture
def subscriber(mqtt_url: str, topic: str) -> Iterator[Subscriber]:
    sub = Subscriber(mqtt_url, topic)
    yield sub
    sub.close()


async def test_publishes_qos1_with_properties(mqtt_url: str, topic: str,
                                              subscriber: Subscriber) -> None:
    ep = endpoint({"module": "mqtt", "connection": "dest", "config": {"topic": topic}},
                  {"type": "mqtt", "url": mqtt_url, "allow_private": True})
    d = delivery(b'{"event":"push"}')
    async with Clients() as clients:
        await run_step(ep, d, clients)
        await run_step(ep, delivery(b"second"), clients)  # the pooled client, again
    first, second = subscriber.get(), subscriber.get()
    assert (first.payload, first.qos) == (b'{"event":"push"}', 1)
    props = dict(first.properties.UserProperty)
    assert props == {"whplane-id": d.id, "whplane-namespace": "acme", "whplane-webhook": "hook"}
    assert first.properties.ContentType == "application/json"
    assert second.payload == b"second"


async def test_loopback_refused_without_allow_private(mqtt_url: str, topic: str) -> None:
    ep = endpoint({"module": "mqtt", "connection": "dest", "config": {"topic": topic}},
                  {"type": "mqtt", "url": mqtt_url})
    async with Clients() as clients:
        with pytest.raises(SsrfBlocked) as caught:
            await run_step(ep, delivery(), clients)
    assert caught.value.destination == "mqtt:acme/dest"


async def test_broker_down_is_retryable_and_names_the_connection() -> None:
    ep = endpoint({"module": "mqtt", "connection": "dest", "config": {"topic": "t"}},
                  {"type": "mqtt", "url": f"mqtt://127.0.0.1:{free_port()}",
                   "password": "{$MQTT_PASSWORD}", "username": "u", "allow_private": True,
                   "timeout_s": 2})
    async with Clients() as clients:
        with pytest.raises(DeliveryError) as caught:
            await run_step(ep, delivery(), clients)
    assert caught.value.retryable
    assert str(caught.value).startswith("mqtt:acme/dest: ")


def test_only_the_brokers_refusals_are_final() -> None:
    from aiomqtt import MqttCodeError
    from aiomqtt.exceptions import MqttConnectError
    from paho.mqtt.enums import MQTTErrorCode
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    from data_plane.modules.mqtt import _refused

    # paho's 4 is MQTT_ERR_NO_CONN (a publish on a connection the broker dropped), not
    # CONNACK's 4 (bad user name or password).
    assert not _refused(MqttCodeError(MQTTErrorCode.MQTT_ERR_NO_CONN, "Could not publish"))
    assert not _refused(MqttCodeError(MQTTErrorCode.MQTT_ERR_CONN_LOST, "Could not publish"))
    assert _refused(MqttCodeError(MQTTErrorCode.MQTT_ERR_AUTH, "Could not publish"))
    assert _refused(MqttConnectError(4)) and _refused(MqttConnectError(5))
    assert not _refused(MqttConnectError(3))  # server unavailable
    assert _refused(MqttConnectError(ReasonCode(PacketTypes.CONNACK, identifier=0x86)))
    assert not _refused(MqttConnectError(ReasonCode(PacketTypes.CONNACK, identifier=0x88)))

"""An MQTT 5 broker on loopback: the asyncio broker of the moat-lib-mqtt wheel, in memory.

amqtt, the better known pure-Python broker, speaks MQTT 3.1.1 only and refuses the MQTT 5
CONNECT that the ``mqtt`` delivery module sends (it publishes with MQTT 5 properties).
moat-lib-mqtt's broker speaks MQTT 5 with QoS 0-2, but is meant for light use: no
persistence, no retained-message expiry, no authentication here.
"""

from __future__ import annotations

import importlib.util
import socket
import sys

from cli.servers.errors import BinaryNotFoundError
from cli.servers.ports import LOOPBACK
from cli.servers.process import PortServer

# MQTT 5 (section 3.3.2.3) has a broker pass a PUBLISH's payload format, expiry, content type,
# response topic and correlation data on to subscribers; moat's broker keeps only the user
# properties. Its copies for subscribers are made while it handles one incoming PUBLISH, so
# they take those properties from that one.
_RUN = """
import logging, sys
import anyio
from moat.lib.mqtt import PropertyType
from moat.lib.mqtt._types import MQTTPublishPacket
from moat.lib.mqtt.async_broker import AsyncMQTTBroker
from moat.lib.mqtt.broker_state_machine import MQTTBrokerStateMachine

FORWARDED = (PropertyType.PAYLOAD_FORMAT_INDICATOR, PropertyType.MESSAGE_EXPIRY_INTERVAL,
             PropertyType.CONTENT_TYPE, PropertyType.RESPONSE_TOPIC, PropertyType.CORRELATION_DATA)
incoming = []
_publish = MQTTBrokerStateMachine.publish
_post_init = MQTTPublishPacket.__attrs_post_init__

def publish(self, source_client_id, packet):
    incoming.append(packet)
    try:
        return _publish(self, source_client_id, packet)
    finally:
        incoming.pop()

def post_init(self):
    _post_init(self)
    if incoming and incoming[-1] is not self:
        for key in FORWARDED:
            if key in incoming[-1].properties:
                self.properties[key] = incoming[-1].properties[key]

MQTTBrokerStateMachine.publish = publish
MQTTPublishPacket.__attrs_post_init__ = post_init
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
anyio.run(AsyncMQTTBroker(bind_address=(sys.argv[1], int(sys.argv[2]))).serve)
"""

_PROBE_ID = b"whplane-probe"
# CONNECT: protocol "MQTT" level 5, clean start, no keep-alive, no properties.
_CONNECT_BODY = (b"\x00\x04MQTT\x05\x02\x00\x00\x00"
                 + len(_PROBE_ID).to_bytes(2, "big") + _PROBE_ID)
_CONNECT = b"\x10" + bytes([len(_CONNECT_BODY)]) + _CONNECT_BODY
_DISCONNECT = b"\xe0\x00"


def connack_ok(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether an MQTT 5 CONNECT at ``host:port`` is accepted (CONNACK, reason code 0)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(_CONNECT)
            # CONNACK: type, remaining length (< 128 here), flags, reason code.
            head = sock.recv(4)
            accepted = len(head) == 4 and head[0] == 0x20 and head[3] == 0
            if accepted:
                sock.sendall(_DISCONNECT)
            return accepted
    except OSError:
        return False


class MqttBroker(PortServer):
    """moat-lib-mqtt's broker (MQTT 5 only), anonymous, topics and sessions in memory."""

    kind = "mqtt"
    binary = "moat-lib-mqtt"

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"

    def _argv(self) -> list[str]:
        if importlib.util.find_spec("moat.lib.mqtt") is None:
            raise BinaryNotFoundError(
                "no MQTT 5 broker: install the moat-lib-mqtt wheel (pip install -e '.[servers]')"
            )
        return [sys.executable, "-c", _RUN, LOOPBACK, str(self.port), *self.extra_args]

    def _healthy(self) -> bool:
        return connack_ok(LOOPBACK, self.port)

    def _describe(self) -> str:
        return f"mqtt@{LOOPBACK}:{self.port}"

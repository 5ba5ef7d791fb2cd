"""`mqtt` step: publish the webhook body to an MQTT broker (QoS 1 by default).

The message is the raw body, on `config.topic`, with MQTT 5 user properties `whplane-id`,
`whplane-namespace` and `whplane-webhook` and the content type of the request. QoS 1 and 2
succeed once the broker acknowledged the message (PUBACK / PUBCOMP); QoS 0 once it is written.
A lost connection drops the pooled client: the next delivery connects again.

aiomqtt (over paho-mqtt) is imported on first use.
"""

from __future__ import annotations

import asyncio
import ssl
import uuid
from typing import Any

from data_plane.clients import Clients, Conn, Target, connection
from data_plane.delivery import Delivery
from data_plane.errors import DeliveryError
from providers.connection_spec import MqttConnectionSpec
from providers.destination_steps import MqttStep
from providers.snapshot import Endpoint

_KIND = "mqtt"


async def run(step: MqttStep, endpoint: Endpoint, delivery: Delivery, clients: Clients) -> None:
    import aiomqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    conn = connection(step, endpoint, MqttConnectionSpec)
    timeout_s = step.timeout_s or conn.spec.timeout_s
    tls = conn.spec.url.startswith("mqtts:")
    properties: Any = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.UserProperty = [
        ("whplane-id", delivery.id),
        ("whplane-namespace", delivery.namespace),
        ("whplane-webhook", delivery.webhook),
    ]
    content_type = delivery.headers.get("content-type")
    if content_type:
        properties.ContentType = content_type
    try:
        async with asyncio.timeout(timeout_s):
            client = await clients.pooled(
                _KIND, conn, lambda targets: _connect(conn, targets[0], tls), _close,
                default_port=8883 if tls else 1883,
            )  # fmt: skip
            await client.publish(step.config.topic, delivery.body, qos=step.config.qos,
                                 properties=properties)
    except TimeoutError:
        clients.discard(_KIND, conn)  # a publish may be stuck behind a dead socket
        raise DeliveryError(f"timed out after {timeout_s:g}s",
                            destination=conn.destination) from None
    except aiomqtt.MqttCodeError as exc:
        clients.discard(_KIND, conn)
        # Refused credentials or authorization will not pass by retrying; a lost connection will.
        refused = _refused(exc)
        raise DeliveryError(f"MQTT {'broker refused' if refused else 'error'}: {_code(exc.rc)}",
                            destination=conn.destination, retryable=not refused) from None
    except (aiomqtt.MqttError, OSError) as exc:
        clients.discard(_KIND, conn)
        raise DeliveryError(f"MQTT {type(exc).__name__}", destination=conn.destination) from None


async def _connect(conn: Conn, target: Target, tls: bool) -> Any:
    import aiomqtt

    spec: MqttConnectionSpec = conn.spec
    client = aiomqtt.Client(
        # With TLS the name is what the certificate is checked against; the socket still goes
        # to the checked address (see _dial_checked_address).
        hostname=target.name if tls else target.host,
        port=target.port,
        username=spec.username,
        password=spec.password,
        identifier=f"whplane-{uuid.uuid4().hex[:12]}",
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=float(spec.timeout_s),
        tls_context=ssl.create_default_context() if tls else None,
        max_queued_outgoing_messages=1000,
    )
    if tls:
        _dial_checked_address(client, target)
    await client.__aenter__()
    return client


def _dial_checked_address(client: Any, target: Target) -> None:
    """Make paho open its socket to the SSRF-checked address while TLS checks the name.

    paho dials and names the server with one attribute; it offers no hook for this, so its
    socket factory is replaced. Fails at connect time, never silently unguarded, if a paho
    version has no such method.
    """
    import socket

    paho = client._client
    if not hasattr(paho, "_create_socket_connection"):
        raise RuntimeError("unsupported paho-mqtt version: cannot pin the checked address")

    def dial() -> socket.socket:
        return socket.create_connection((target.host, target.port), timeout=paho._connect_timeout)

    paho._create_socket_connection = dial


async def _close(client: Any) -> None:
    try:
        await client.__aexit__(None, None, None)
    except Exception:  # a broker already gone: nothing left to close
        pass


def _refused(exc: Any) -> bool:
    """Whether the broker refused us for good. Its answers are a refused CONNACK (MQTT 3.1.1
    codes 4 and 5) or an MQTT 5 reason code: 0x86 (bad credentials), 0x87 (not authorized),
    0x8C (bad authentication method), 0x90 (topic name invalid). Anything else carries one of
    paho's own error numbers, whose 4 is MQTT_ERR_NO_CONN (a publish on a lost connection, the
    broker down), not CONNACK's 4: of those only an authorization failure is final."""
    from aiomqtt.exceptions import MqttConnectError
    from paho.mqtt.enums import MQTTErrorCode
    from paho.mqtt.reasoncodes import ReasonCode

    rc = exc.rc
    if isinstance(rc, ReasonCode) or (isinstance(exc, MqttConnectError)
                                      and not isinstance(rc, MQTTErrorCode)):
        return getattr(rc, "value", rc) in (4, 5, 0x86, 0x87, 0x8C, 0x90)
    return rc in (MQTTErrorCode.MQTT_ERR_AUTH, MQTTErrorCode.MQTT_ERR_ACL_DENIED)


def _code(rc: Any) -> str:
    """A reason code's name, or paho's error name and number (its str() is the bare number)."""
    if hasattr(rc, "getName"):
        return str(rc.getName())
    name = getattr(rc, "name", None)
    return f"{name} ({int(rc)})" if name else str(rc)

"""The wheel-started servers for delivery-module tests speak their protocol to a standard client."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from typing import Any

import pytest

from cli.servers import (
    LOOPBACK,
    CoilmqServer,
    MotoServer,
    MqttBroker,
    NatsServer,
    PostgresServer,
    TansuBroker,
)


def test_moto_s3_and_sqs() -> None:
    import boto3

    with MotoServer() as moto:
        kwargs = {"endpoint_url": moto.url, "region_name": "us-east-1",
                  "aws_access_key_id": "test", "aws_secret_access_key": "test"}
        s3 = boto3.client("s3", **kwargs)
        s3.create_bucket(Bucket="launcher-test")
        s3.put_object(Bucket="launcher-test", Key="a/b.json", Body=b"{}")
        assert s3.get_object(Bucket="launcher-test", Key="a/b.json")["Body"].read() == b"{}"
        sqs = boto3.client("sqs", **kwargs)
        queue = sqs.create_queue(QueueName="launcher-test")["QueueUrl"]
        sqs.send_message(QueueUrl=queue, MessageBody="hello")
        got = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1)["Messages"]
        assert [m["Body"] for m in got] == ["hello"]
        moto.reset()
        assert s3.list_buckets()["Buckets"] == []


def test_coilmq_stomp_send_and_subscribe() -> None:
    import stomp

    with CoilmqServer() as broker:
        got: list[str] = []
        arrived = threading.Event()

        class Listener(stomp.ConnectionListener):  # type: ignore[misc]
            def on_message(self, frame: stomp.utils.Frame) -> None:
                got.append(frame.body)
                arrived.set()

        conn = stomp.Connection11([(LOOPBACK, broker.port)])
        conn.set_listener("", Listener())
        conn.connect(wait=True)
        try:
            conn.subscribe("/queue/launcher", id="1", ack="auto")
            conn.send("/queue/launcher", "hello")
            assert arrived.wait(5)
        finally:
            conn.disconnect()
        assert got == ["hello"]


def test_tansu_kafka_produce_acks_all_and_consume() -> None:
    kafka = pytest.importorskip("kafka")

    with TansuBroker() as broker:
        topic = f"t{uuid.uuid4().hex[:8]}"
        admin = kafka.KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        admin.create_topics([kafka.admin.NewTopic(topic, num_partitions=1, replication_factor=1)])
        admin.close()
        producer = kafka.KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        producer.send(topic, b"hello").get(timeout=10)
        producer.close()
        consumer = kafka.KafkaConsumer(topic, bootstrap_servers=broker.bootstrap,
                                       auto_offset_reset="earliest", consumer_timeout_ms=10_000)
        try:
            deadline = time.monotonic() + 10
            values: list[bytes] = []
            while not values and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=500).values():
                    values.extend(r.value for r in records)
        finally:
            consumer.close()
        assert values == [b"hello"]


def test_postgres_server_trust_login_to_database_test() -> None:
    import psycopg

    with PostgresServer() as server:
        assert server.port != 5432
        table = f"t_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(server.url, autocommit=True) as conn:
            assert conn.execute("SELECT current_user, current_database()").fetchone() == (
                "postgres", "test")
            conn.execute(f"CREATE TABLE {table} (id text PRIMARY KEY, doc jsonb)")
            conn.execute(f"INSERT INTO {table} VALUES ('a', '{{\"n\": 1}}')")
            assert conn.execute(f"SELECT doc FROM {table}").fetchall() == [({"n": 1},)]
            # Loopback TCP only: no Unix socket for another local user to reach.
            assert conn.execute("SHOW unix_socket_directories").fetchone() == ("",)
            assert conn.execute("SHOW listen_addresses").fetchone() == (LOOPBACK,)


async def test_nats_server_core_and_jetstream() -> None:
    import nats

    with NatsServer() as server:
        assert server.port != 4222
        nc = await nats.connect(server.url, connect_timeout=5, max_reconnect_attempts=0)
        try:
            sub = await nc.subscribe("launcher.core")
            await nc.publish("launcher.core", b"hello", headers={"k": "v"})
            msg = await sub.next_msg(timeout=5)
            assert (msg.data, msg.headers) == (b"hello", {"k": "v"})
            js = nc.jetstream()
            await js.add_stream(name="LAUNCHER", subjects=["launcher.js"])
            ack = await js.publish("launcher.js", b"kept", headers={"Nats-Msg-Id": "one"})
            again = await js.publish("launcher.js", b"kept", headers={"Nats-Msg-Id": "one"})
            assert (ack.seq, again.duplicate) == (1, True)
            assert (await js.get_msg("LAUNCHER", 1)).data == b"kept"
        finally:
            await nc.close()


def test_mqtt_broker_v5_qos1_keeps_publish_properties() -> None:
    from paho.mqtt import client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    with MqttBroker() as broker:
        assert broker.port != 1883
        got: queue.Queue[Any] = queue.Queue()
        subscribed = threading.Event()
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        sub.on_message = lambda _c, _u, message: got.put(message)
        sub.on_subscribe = lambda *_: subscribed.set()
        sub.on_connect = lambda c, *_: c.subscribe("launcher/t", qos=1)
        sub.connect(LOOPBACK, broker.port)
        sub.loop_start()
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        try:
            assert subscribed.wait(5)
            pub.connect(LOOPBACK, broker.port)
            pub.loop_start()
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.UserProperty = [("whplane-id", "d1")]
            props.ContentType = "application/json"
            info = pub.publish("launcher/t", b'{"n":1}', qos=1, properties=props)
            info.wait_for_publish(5)  # returns once the broker's PUBACK arrived
            assert info.is_published()
            message = got.get(timeout=5)
        finally:
            # disconnect() first: loop_stop() on a connected client waits out paho's 1 s select.
            pub.disconnect()
            pub.loop_stop()
            sub.disconnect()
            sub.loop_stop()
        assert (message.payload, message.qos) == (b'{"n":1}', 1)
        assert message.properties.UserProperty == [("whplane-id", "d1")]
        assert message.properties.ContentType == "application/json"

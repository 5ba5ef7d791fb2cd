"""The wheel-started servers for delivery-module tests speak their protocol to a standard client."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from cli.servers import LOOPBACK, CoilmqServer, MotoServer, TansuBroker


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

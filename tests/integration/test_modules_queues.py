"""`kafka`, `stomp`, `sqs` and `redis_rq` against real systems (tansu, coilmq, moto, Redis,
or the ones the environment names), each read back with an independent client. Through a real
gateway process: test_modules_gateway.py."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import uuid
from typing import Any

import pytest

from cli.servers import LOOPBACK, RedisServer, free_port
from data_plane.clients import Clients
from data_plane.errors import DeliveryError, SsrfBlocked
from tests.module_kit import delivery, endpoint, run_step, wait_for


def boto(service: str, endpoint_url: str) -> Any:
    import boto3

    return boto3.client(service, endpoint_url=endpoint_url, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


# --- kafka -------------------------------------------------------------------------------


def kafka_records(bootstrap: str, topic: str, count: int) -> list[Any]:
    import kafka

    consumer = kafka.KafkaConsumer(topic, bootstrap_servers=bootstrap,
                                   auto_offset_reset="earliest", consumer_timeout_ms=10_000)
    records: list[Any] = []
    try:
        for _ in range(40):
            for batch in consumer.poll(timeout_ms=250).values():
                records.extend(batch)
            if len(records) >= count:
                break
    finally:
        consumer.close()
    return records


def new_topic(bootstrap: str) -> str:
    import kafka

    topic = f"t{uuid.uuid4().hex[:10]}"
    admin = kafka.KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([kafka.admin.NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()
    return topic


async def test_kafka_produces_acks_all_with_key_and_headers(kafka_bootstrap: str) -> None:
    topic = new_topic(kafka_bootstrap)
    ep = endpoint({"module": "kafka", "connection": "dest",
                   "config": {"topic": topic, "key": "{namespace}/{webhook}/{id}"}},
                  {"type": "kafka", "url": f"kafka://{kafka_bootstrap}", "allow_private": True})
    d = delivery(b'{"event":"push"}')
    async with Clients() as clients:
        await run_step(ep, d, clients)
        await run_step(ep, delivery(b"two"), clients)
    first, second = kafka_records(kafka_bootstrap, topic, 2)
    assert first.value == b'{"event":"push"}' and second.value == b"two"
    assert first.key == f"acme/hook/{d.id}".encode()
    assert dict(first.headers) == {"whplane-id": d.id.encode(), "whplane-namespace": b"acme",
                                   "whplane-webhook": b"hook",
                                   "content-type": b"application/json"}


async def test_kafka_down_is_retryable() -> None:
    ep = endpoint({"module": "kafka", "connection": "dest", "config": {"topic": "t"}},
                  {"type": "kafka", "url": f"kafka://127.0.0.1:{free_port()}",
                   "allow_private": True, "timeout_s": 2})
    async with Clients() as clients:
        with pytest.raises(DeliveryError) as caught:
            await run_step(ep, delivery(), clients)
    assert caught.value.retryable and str(caught.value).startswith("kafka:acme/dest: ")


# --- stomp -------------------------------------------------------------------------------


class StompReader:
    """stomp.py subscribed to one destination."""

    def __init__(self, endpoint: str, destination: str) -> None:
        import stomp

        host, _, port = endpoint.rpartition(":")
        self.frames: list[Any] = []
        self.arrived = threading.Event()
        reader = self

        class Listener(stomp.ConnectionListener):  # type: ignore[misc]
            def on_message(self, frame: Any) -> None:
                reader.frames.append(frame)
                reader.arrived.set()

        self.conn = stomp.Connection11([(host, int(port))])
        self.conn.set_listener("", Listener())
        self.conn.connect(wait=True)
        self.conn.subscribe(destination, id="1", ack="auto")

    def close(self) -> None:
        self.conn.disconnect()


def stomp_url(endpoint: str) -> str:
    # coilmq takes a STOMP 1.2 CONNECT only for its own host name as the virtual host.
    return f"stomp://{endpoint}/{socket.getfqdn()}"


async def test_stomp_sends_with_receipt(stomp_endpoint: str) -> None:
    destination = f"/queue/whplane-{uuid.uuid4().hex[:8]}"
    reader = StompReader(stomp_endpoint, destination)
    try:
        ep = endpoint({"module": "stomp", "connection": "dest",
                       "config": {"destination": destination}},
                      {"type": "stomp", "url": stomp_url(stomp_endpoint), "allow_private": True})
        d = delivery(b'{"event":"push"}')
        async with Clients() as clients:
            await run_step(ep, d, clients)
            await run_step(ep, delivery(b"two"), clients)
        await asyncio.to_thread(wait_for, lambda: reader.frames[1:] or None, 5, "two frames")
    finally:
        reader.close()
    first, second = reader.frames
    assert first.body == '{"event":"push"}' and second.body == "two"
    assert first.headers["whplane-id"] == d.id
    assert first.headers["whplane-namespace"] == "acme"


async def test_stomp_down_is_retryable() -> None:
    ep = endpoint({"module": "stomp", "connection": "dest", "config": {"destination": "/q/x"}},
                  {"type": "stomp", "url": f"stomp://127.0.0.1:{free_port()}",
                   "allow_private": True, "timeout_s": 2})
    async with Clients() as clients:
        with pytest.raises(DeliveryError) as caught:
            await run_step(ep, delivery(), clients)
    assert caught.value.retryable and str(caught.value).startswith("stomp:acme/dest: ")


# --- sqs ---------------------------------------------------------------------------------


async def test_sqs_sends_the_envelope(aws_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sqs = boto("sqs", aws_endpoint)
    queue_url = sqs.create_queue(QueueName=f"q{uuid.uuid4().hex[:8]}")["QueueUrl"]
    ep = endpoint({"module": "sqs", "connection": "dest"},
                  {"type": "sqs", "url": queue_url, "allow_private": True,
                   "access_key_id": "test", "secret_access_key": "test"})
    d = delivery(b'{"event":"push"}')
    async with Clients() as clients:
        await run_step(ep, d, clients)
    [message] = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=2,
                                    MessageAttributeNames=["All"])["Messages"]
    doc = json.loads(message["Body"])
    assert (doc["id"], doc["namespace"], doc["webhook"], doc["body"]) == (
        d.id, "acme", "hook", '{"event":"push"}')
    assert message["MessageAttributes"]["whplane-id"]["StringValue"] == d.id


async def test_sqs_fifo_deduplicates_a_retry(aws_endpoint: str) -> None:
    sqs = boto("sqs", aws_endpoint)
    queue_url = sqs.create_queue(QueueName=f"q{uuid.uuid4().hex[:8]}.fifo",
                                 Attributes={"FifoQueue": "true"})["QueueUrl"]
    ep = endpoint({"module": "sqs", "connection": "dest"},
                  {"type": "sqs", "url": queue_url, "allow_private": True,
                   "access_key_id": "test", "secret_access_key": "test"})
    d = delivery()
    async with Clients() as clients:
        await run_step(ep, d, clients)
        await run_step(ep, d.next_attempt(), clients)
    got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
    assert len(got["Messages"]) == 1


async def test_sqs_namespaced_connection_needs_keys(aws_endpoint: str) -> None:
    ep = endpoint({"module": "sqs", "connection": "dest"},
                  {"type": "sqs", "url": f"{aws_endpoint}/123456789012/q", "allow_private": True})
    async with Clients() as clients:
        with pytest.raises(DeliveryError, match="must name its access keys") as caught:
            await run_step(ep, delivery(), clients)
    assert not caught.value.retryable


async def test_sqs_loopback_refused_without_allow_private(aws_endpoint: str) -> None:
    ep = endpoint({"module": "sqs", "connection": "dest"},
                  {"type": "sqs", "url": f"{aws_endpoint}/123456789012/q",
                   "access_key_id": "test", "secret_access_key": "test"})
    async with Clients() as clients:
        with pytest.raises(SsrfBlocked):
            await run_step(ep, delivery(), clients)


# --- redis_rq ----------------------------------------------------------------------------


async def test_redis_rq_enqueues_a_job_once(redis_server: RedisServer) -> None:
    from rq import Queue

    queue = f"q{uuid.uuid4().hex[:8]}"
    ep = endpoint({"module": "redis_rq", "connection": "dest",
                   "config": {"queue": queue, "function": "json.dumps"}},
                  {"type": "redis", "url": redis_server.url})
    d = delivery(b'{"event":"push"}')
    async with Clients() as clients:
        await run_step(ep, d, clients)
        await run_step(ep, d.next_attempt(), clients)  # a retry: not a second job
    client = redis_server.client()
    try:
        q = Queue(queue, connection=client)
        assert q.job_ids == [d.id]
        job = q.fetch_job(d.id)
        assert job is not None and job.func_name == "json.dumps"
        [doc] = job.args
        assert (doc["id"], doc["webhook"], doc["body"]) == (d.id, "hook", '{"event":"push"}')
    finally:
        client.close()


async def test_redis_rq_down_is_retryable() -> None:
    ep = endpoint({"module": "redis_rq", "connection": "dest",
                   "config": {"queue": "q", "function": "json.dumps"}},
                  {"type": "redis", "url": f"redis://{LOOPBACK}:{free_port()}/0", "timeout_s": 2})
    async with Clients() as clients:
        with pytest.raises(DeliveryError) as caught:
            await run_step(ep, delivery(), clients)
    assert caught.value.retryable and str(caught.value).startswith("redis_rq:acme/dest: ")

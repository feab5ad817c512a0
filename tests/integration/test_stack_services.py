"""Each service of the test stack is really reached: Kafka, Redis, S3 (boto3 and pyarrow)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer, Producer

pytestmark = pytest.mark.integration


def _consume(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list[Any]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    messages: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            messages.append(message)
    finally:
        consumer.close()
    return messages


def test_kafka_messages_produced_are_consumed_with_keys_and_partitions(
    kafka_settings: Any, unique_topic: Any
) -> None:
    topic = unique_topic(partitions=3)
    producer = Producer({**kafka_settings.client_config(), "enable.idempotence": True})
    sent = {f"session-{i}": f"value-{i}".encode() for i in range(30)}
    for key, value in sent.items():
        producer.produce(topic, key=key.encode(), value=value)
    assert producer.flush(30) == 0

    received = _consume(kafka_settings.bootstrap_servers, topic, expected=len(sent))

    assert {m.key().decode(): m.value() for m in received} == sent
    assert {m.partition() for m in received} == {0, 1, 2}  # keys spread over every partition
    # One key always lands on one partition (per-session order depends on it).
    partition_of: dict[bytes, int] = {}
    for message in received:
        assert partition_of.setdefault(message.key(), message.partition()) == message.partition()


def test_kafka_transactions_hide_aborted_messages_from_read_committed(
    kafka_settings: Any, unique_topic: Any
) -> None:
    # The feature job's flagged-session sink is transactional; the broker must support it
    # on one node (transaction state log with replication factor 1).
    topic = unique_topic()
    producer = Producer(
        {**kafka_settings.client_config(), "transactional.id": f"test-{uuid.uuid4().hex}"}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"s", value=b"aborted")
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"s", value=b"committed")
    producer.commit_transaction(30)

    received = _consume(kafka_settings.bootstrap_servers, topic, expected=1)
    time.sleep(1.0)  # an aborted message, if wrongly visible, would come with it

    assert [m.value() for m in received] == [b"committed"]


def test_kafka_refuses_to_auto_create_topics(kafka_settings: Any) -> None:
    from confluent_kafka.admin import AdminClient

    missing = f"test.not-created.{uuid.uuid4().hex[:10]}"
    producer = Producer({**kafka_settings.client_config(), "message.timeout.ms": 3000})
    errors: list[Any] = []
    producer.produce(missing, value=b"x", on_delivery=lambda err, msg: errors.append(err))
    producer.flush(10)

    assert errors and errors[0] is not None
    topics = AdminClient(kafka_settings.client_config()).list_topics(timeout=10).topics
    assert missing not in topics


def test_redis_set_get_and_hash_with_ttl(redis_settings: Any, redis_prefix: str) -> None:
    client = redis_settings.client()
    key = f"{redis_prefix}session:s1"
    client.set(f"{redis_prefix}plain", "value")
    client.hset(key, mapping={"event_count": "3", "flagged": "1"})
    client.expire(key, 60)

    assert client.get(f"{redis_prefix}plain") == "value"
    assert client.hgetall(key) == {"event_count": "3", "flagged": "1"}
    assert 0 < client.ttl(key) <= 60


def test_s3_object_put_and_read_back_with_boto3(s3_settings: Any, s3_bucket: str) -> None:
    client = s3_settings.boto3_client()
    body = "héllo flywheel\n".encode()
    client.put_object(Bucket=s3_bucket, Key="dir/object.txt", Body=body)

    assert client.get_object(Bucket=s3_bucket, Key="dir/object.txt")["Body"].read() == body
    listed = client.list_objects_v2(Bucket=s3_bucket, Prefix="dir/")["Contents"]
    # S3Proxy's filesystem backend also lists the folder "dir/" holds as a marker.
    assert [item["Key"] for item in listed if not item["Key"].endswith("/")] == ["dir/object.txt"]


def test_s3_parquet_through_pyarrow_filesystem(s3_settings: Any, s3_bucket: str) -> None:
    filesystem = s3_settings.pyarrow_filesystem()
    table = pa.table({"session_id": ["a", "b"], "event_count": pa.array([3, 5], pa.int64())})
    path = f"{s3_bucket}/session_features/dt=2026-01-01/part-0.parquet"

    pq.write_table(table, path, filesystem=filesystem)

    assert pq.read_table(path, filesystem=filesystem).equals(table)
    # The same object is visible to boto3: both clients talk to one server.
    head = s3_settings.boto3_client().head_object(
        Bucket=s3_bucket, Key="session_features/dt=2026-01-01/part-0.parquet"
    )
    assert head["ContentLength"] > 0


def test_pipeline_bucket_exists(s3_settings: Any) -> None:
    client = s3_settings.boto3_client()
    names = {bucket["Name"] for bucket in client.list_buckets()["Buckets"]}
    assert s3_settings.bucket in names

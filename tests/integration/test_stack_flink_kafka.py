"""The Flink Kafka connector jars (deploy.jars) work against the stack's Kafka 4 broker.

Reads a topic with a bounded Kafka source and writes it with the exactly-once
(transactional) Kafka sink, as the feature job's flagged-session sink does.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from deploy.jars import configure_pyflink

pytestmark = [pytest.mark.integration, pytest.mark.flink]


def _read_committed(bootstrap: str, topic: str, expected: int, timeout_s: float = 60) -> list[Any]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    messages: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                messages.append(message)
    finally:
        consumer.close()
    return messages


def test_exactly_once_kafka_sink_copies_a_topic(
    kafka_settings: Any, s3_settings: Any, unique_topic: Any
) -> None:
    from pyflink.table import EnvironmentSettings, TableEnvironment

    source, sink = unique_topic(partitions=2), unique_topic(partitions=2)
    producer = Producer(kafka_settings.client_config())
    sent = [{"session_id": f"s{i % 5}", "n": i} for i in range(20)]
    for record in sent:
        producer.produce(source, key=record["session_id"], value=json.dumps(record))
    assert producer.flush(30) == 0

    options = configure_pyflink(s3_settings)
    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    config = env.get_config()
    for key, value in options.items():
        config.set(key, value)
    config.set("parallelism.default", "1")
    # Transactions commit on checkpoints (and on the final one at end of input).
    config.set("execution.checkpointing.interval", "1 s")
    bootstrap = kafka_settings.bootstrap_servers
    env.execute_sql(
        f"""CREATE TABLE src (session_id STRING, n BIGINT) WITH (
          'connector' = 'kafka', 'topic' = '{source}',
          'properties.bootstrap.servers' = '{bootstrap}',
          'properties.group.id' = 'test-{uuid.uuid4().hex[:8]}',
          'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset',
          'format' = 'json')"""
    )
    env.execute_sql(
        f"""CREATE TABLE dst (session_id STRING, n BIGINT) WITH (
          'connector' = 'kafka', 'topic' = '{sink}',
          'properties.bootstrap.servers' = '{bootstrap}',
          'properties.transaction.timeout.ms' = '900000',
          'sink.delivery-guarantee' = 'exactly-once',
          'sink.transactional-id-prefix' = 'test-{uuid.uuid4().hex[:8]}',
          'key.format' = 'raw', 'key.fields' = 'session_id',
          'value.format' = 'json')"""
    )
    env.execute_sql("INSERT INTO dst SELECT session_id, n FROM src").wait()

    copied = _read_committed(bootstrap, sink, expected=len(sent))
    assert sorted((m.key().decode(), json.loads(m.value())["n"]) for m in copied) == sorted(
        (r["session_id"], r["n"]) for r in sent
    )

"""EventProducer against the real broker: every event read back once, in session order."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from connectors.producer import (
    Delivery,
    DeliveryFailed,
    EventProducer,
    InvalidEventError,
    ProducerSettings,
)
from connectors.settings import KafkaSettings

pytestmark = pytest.mark.integration

TS = 1_717_400_000_000
PARTITIONS = 6


def make_events(count: int, sessions: int, tag: str) -> list[dict[str, Any]]:
    """Events of many sessions, interleaved; each session's ts_ms grows with send order."""
    events = []
    for n in range(count):
        session = f"{tag}-s{n % sessions}"
        base = {
            "event_id": f"{tag}-e{n}",
            "schema_version": 1,
            "session_id": session,
            "user_id": f"{tag}-u{n % sessions}",
            "ts_ms": TS + n,
        }
        kind = n % 4
        if kind == 0:
            base |= {"event_type": "user_message", "text": f"question {n} 包邮吗?",
                     "intent_confidence": 0.5}  # fmt: skip
        elif kind == 1:
            base |= {"event_type": "assistant_message", "text": f"answer {n}",
                     "response_time_ms": n}  # fmt: skip
        elif kind == 2:
            base |= {"event_type": "cta_sent", "cta_id": f"cta-{n}"}
        else:
            base |= {"event_type": "feedback", "kind": "thumbs_up", "request_id": f"r-{n}"}
        events.append(base)
    return events


def read_back(
    bootstrap: str, topic: str, expected: int, *, timeout_s: float = 120.0, settle_s: float = 3.0
) -> list[Any]:
    """Every committed record of ``topic`` (read_committed), in per-partition order.

    Keeps reading ``settle_s`` after ``expected`` records arrived, so duplicates show up.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"readback-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        settle_until: float | None = None
        while time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                assert msg.error() is None, msg.error()
                records.append(msg)
            if len(records) >= expected:
                if settle_until is None:
                    settle_until = time.monotonic() + settle_s
                elif time.monotonic() >= settle_until:
                    break
        return records
    finally:
        consumer.close()


def assert_exactly_once_in_order(records: list[Any], sent: list[dict[str, Any]]) -> None:
    """Each sent event_id once; per session, the order it was sent; one partition per session."""
    ids = [json.loads(r.value())["event_id"] for r in records]
    counts: dict[str, int] = defaultdict(int)
    for event_id in ids:
        counts[event_id] += 1
    duplicates = {k: v for k, v in counts.items() if v > 1}
    assert not duplicates, f"{len(duplicates)} duplicated, e.g. {list(duplicates.items())[:3]}"
    missing = {e["event_id"] for e in sent} - counts.keys()
    assert not missing, f"{len(missing)} lost, e.g. {sorted(missing)[:3]}"
    assert len(ids) == len(sent)

    sent_order: dict[str, list[str]] = defaultdict(list)
    for event in sent:
        sent_order[event["session_id"]].append(event["event_id"])
    read_order: dict[str, list[str]] = defaultdict(list)
    partition_of: dict[str, set[int]] = defaultdict(set)
    by_partition: dict[int, list[Any]] = defaultdict(list)
    for record in records:
        by_partition[record.partition()].append(record)
    for partition, items in by_partition.items():
        offsets = [r.offset() for r in items]
        assert offsets == sorted(offsets)
        for record in items:
            value = json.loads(record.value())
            assert record.key() == value["session_id"].encode()
            read_order[value["session_id"]].append(value["event_id"])
            partition_of[value["session_id"]].add(partition)
    assert all(len(p) == 1 for p in partition_of.values()), "a session spans partitions"
    out_of_order = [s for s in sent_order if read_order[s] != sent_order[s]]
    assert not out_of_order, f"{len(out_of_order)} sessions out of order, e.g. {out_of_order[:3]}"


@pytest.fixture
def topic(unique_topic: Any) -> str:
    return str(unique_topic(partitions=PARTITIONS))


@pytest.fixture
def settings(kafka_bootstrap: str, topic: str) -> ProducerSettings:
    return ProducerSettings.load(
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap), topic=topic
    )


def test_10k_events_read_back_exactly_once_in_session_order(
    settings: ProducerSettings, kafka_bootstrap: str, topic: str
) -> None:
    events = make_events(10_000, sessions=250, tag=uuid.uuid4().hex[:8])
    with EventProducer(settings) as producer:
        futures = [producer.send(event) for event in events]
    # Leaving the block flushed: every future is resolved, none failed.
    deliveries = [f.result(timeout=0) for f in futures]
    assert all(isinstance(d, Delivery) and d.topic == topic for d in deliveries)
    assert [d.event_id for d in deliveries] == [e["event_id"] for e in events]

    records = read_back(kafka_bootstrap, topic, expected=len(events))
    assert_exactly_once_in_order(records, events)
    # The delivery reports tell the truth about where each event is.
    stored = {(r.partition(), r.offset()): json.loads(r.value())["event_id"] for r in records}
    assert all(stored[(d.partition, d.offset)] == d.event_id for d in deliveries)
    # What is stored is the canonical form of what was sent.
    first = next(r for r in records if json.loads(r.value())["event_id"] == events[0]["event_id"])
    assert json.loads(first.value()) == events[0]


def test_asyncio_api_reads_back_exactly_once(
    settings: ProducerSettings, kafka_bootstrap: str, topic: str
) -> None:
    events = make_events(3_000, sessions=40, tag=uuid.uuid4().hex[:8])

    async def main() -> list[Delivery]:
        async with EventProducer(settings) as producer:
            single = [await producer.send_async(e) for e in events[:100]]
            batch = await producer.send_many_async(events[100:2_000])
            # Futures for the rest, awaited together.
            rest = await asyncio.gather(*(producer.send_async(e) for e in events[2_000:]))
            return [*single, *batch, *rest]

    deliveries = asyncio.run(main())
    assert [d.event_id for d in deliveries] == [e["event_id"] for e in events]
    assert_exactly_once_in_order(read_back(kafka_bootstrap, topic, len(events)), events)


def test_missing_event_id_is_generated_and_returned(
    settings: ProducerSettings, kafka_bootstrap: str, topic: str
) -> None:
    event = make_events(1, sessions=1, tag=uuid.uuid4().hex[:8])[0]
    del event["event_id"]
    with EventProducer(settings) as producer:
        delivery = producer.send(event).result(timeout=30)
    assert uuid.UUID(delivery.event_id).version == 7
    (record,) = read_back(kafka_bootstrap, topic, expected=1, settle_s=1)
    assert json.loads(record.value())["event_id"] == delivery.event_id


def test_invalid_events_never_reach_the_topic(
    settings: ProducerSettings, kafka_bootstrap: str, topic: str
) -> None:
    good = make_events(2, sessions=1, tag=uuid.uuid4().hex[:8])
    with EventProducer(settings) as producer:
        producer.send(good[0])
        with pytest.raises(InvalidEventError, match="ts_ms"):
            producer.send({**good[1], "event_id": "bad", "ts_ms": -5})
        producer.send(good[1])
    records = read_back(kafka_bootstrap, topic, expected=2, settle_s=1)
    assert [json.loads(r.value())["event_id"] for r in records] == [e["event_id"] for e in good]


def test_delivery_to_a_missing_topic_fails_visibly(kafka_bootstrap: str) -> None:
    settings = ProducerSettings.load(
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap),
        topic=f"missing.{uuid.uuid4().hex}",
        librdkafka={"topic.metadata.propagation.max.ms": 1000},
    )
    producer = EventProducer(settings)
    future = producer.send(make_events(1, 1, "missing")[0])
    with pytest.raises(DeliveryFailed):
        future.result(timeout=60)
    producer.close()

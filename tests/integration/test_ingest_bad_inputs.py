"""Every class of bad input is refused at both edges (SDK and HTTP) with its field named.

One table drives both edges; afterwards the topic holds only the good sentinel events,
so nothing bad was written by either path.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from connectors.ingest import IngestSettings, running_server
from connectors.producer import EventProducer, InvalidEventError, ProducerSettings
from connectors.settings import KafkaSettings
from connectors.topics import TopicSpec, ensure_topics

pytestmark = pytest.mark.integration

TS = 1_717_400_000_000


def good(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": "bad-input-" + uuid.uuid4().hex,
        "event_type": "user_message",
        "schema_version": 1,
        "session_id": "s-bad",
        "user_id": "u-bad",
        "ts_ms": TS,
        "text": "how much is shipping?",
    }
    event.update(overrides)
    return event


def without(field: str, **overrides: Any) -> dict[str, Any]:
    event = good(**overrides)
    del event[field]
    return event


# (raw body, reason, field). Raw bytes are sent as they are; dicts as JSON.
BAD_INPUTS = [
    pytest.param(b'{"event_id": "x", "event_type": "user_', "invalid_json", None,
                 id="malformed_json"),
    pytest.param(good(event_type="mind_reading"), "unknown_event_type", "event_type",
                 id="unknown_type"),
    pytest.param(good(user_id=42), "wrong_type", "user_id", id="wrong_field_type"),
    pytest.param(good(text="长" * 11_000), "too_large", "text", id="oversize_text"),
    pytest.param(good(ts_ms=4_102_444_800_000), "out_of_range", "ts_ms",
                 id="ts_ms_out_of_range"),
    pytest.param(good(schema_version=7), "unsupported_schema_version", "schema_version",
                 id="unsupported_schema_version"),
    pytest.param(without("session_id"), "missing_field", "session_id", id="missing_field"),
    pytest.param(without("text", event_type="feedback", kind="rating"), "missing_field", "rating",
                 id="rating_without_rating"),
]  # fmt: skip


@pytest.fixture(scope="module")
def topic(kafka_bootstrap: str) -> Iterator[str]:
    # Module scope: one topic for the whole table, checked once at the end.
    name = f"test.bad-inputs.{uuid.uuid4().hex[:10]}"
    ensure_topics(
        KafkaSettings(bootstrap_servers=kafka_bootstrap),
        [TopicSpec(name, 2, 1, timedelta(hours=1))],
    )
    yield name
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.delete_topics([name]).values():
        future.result()


@pytest.fixture(scope="module")
def producer(kafka_bootstrap: str, topic: str) -> Iterator[EventProducer]:
    settings = ProducerSettings.load(
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap), topic=topic
    )
    with EventProducer(settings) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def server(kafka_bootstrap: str, topic: str) -> Iterator[str]:
    settings = IngestSettings.load(
        host="127.0.0.1",
        port=0,
        producer=ProducerSettings.load(
            kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap), topic=topic
        ),
    )
    with running_server(settings) as url:
        yield url


@pytest.mark.parametrize(("raw", "reason", "field"), BAD_INPUTS)
def test_sdk_refuses_with_field(
    producer: EventProducer, raw: Any, reason: str, field: str | None
) -> None:
    with pytest.raises(ValueError) as caught:
        producer.send(raw)
    assert isinstance(caught.value, InvalidEventError)
    assert (caught.value.reason, caught.value.field) == (reason, field)


@pytest.mark.parametrize(("raw", "reason", "field"), BAD_INPUTS)
def test_http_refuses_with_422_and_field(
    server: str, raw: Any, reason: str, field: str | None
) -> None:
    body = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    for payload in (body, b"[" + body + b"]") if not isinstance(raw, bytes) else (body,):
        response = httpx.post(
            f"{server}/events",
            content=payload,
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        assert response.status_code == 422, response.text
        (error,) = response.json()["errors"]
        assert (error["reason"], error["field"]) == (reason, field)
        assert error["message"]


def test_feedback_endpoint_names_fields_too(server: str) -> None:
    cases = [
        ({"kind": "rating", "session_id": "s", "user_id": "u"}, "rating", "missing_field"),
        ({"kind": "meh", "session_id": "s", "user_id": "u"}, "kind", "out_of_range"),
        ({"kind": "thumbs_up", "user_id": "u"}, "session_id", "missing_field"),
        ({"kind": "thumbs_up", "session_id": "s", "user_id": "u", "rating": "5"}, "rating",
         "wrong_type"),
    ]  # fmt: skip
    for body, field, reason in cases:
        response = httpx.post(f"{server}/feedback", json=body, timeout=30)
        assert response.status_code == 422, body
        (error,) = response.json()["errors"]
        assert (error["field"], error["reason"]) == (field, reason), body


def test_nothing_bad_reached_the_topic(
    producer: EventProducer, server: str, kafka_bootstrap: str, topic: str
) -> None:
    # Runs after the table (file order): only these two sentinels may be in the topic.
    via_sdk = producer.send(good()).result(timeout=30).event_id
    response = httpx.post(f"{server}/events", json=good(), timeout=30)
    assert response.status_code == 202
    via_http = response.json()["event_ids"][0]

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"readback-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    seen: list[str] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=100, timeout=0.5):
            assert msg.error() is None
            seen.append(json.loads(msg.value())["event_id"])
    consumer.close()
    assert sorted(seen) == sorted([via_sdk, via_http])

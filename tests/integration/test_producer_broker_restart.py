"""A broker restart in the middle of sending loses nothing and duplicates nothing.

Runs its own stack (``deploy.stack``) in a temporary state directory with fixed Kafka
ports, so stopping its Kafka does not disturb anybody else's tests, and the restarted
broker comes back on the address the producer knows.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from connectors.producer import DeliveryFuture, EventProducer, ProducerSettings
from connectors.settings import KafkaSettings
from connectors.topics import TopicSpec, ensure_topics
from deploy import procs
from deploy.stack import Stack, ensure_up, stop_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TS = 1_717_400_000_000
EVENTS = 10_000


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[tuple[Path, dict[str, int]]]:
    state_dir = tmp_path / "stack"
    ports = {
        "kafka_port": procs.free_port("127.0.0.1"),
        "kafka_controller_port": procs.free_port("127.0.0.1"),
    }
    ensure_up(state_dir, **ports)
    try:
        yield state_dir, ports
    finally:
        stop_stack(state_dir, purge=True)


def _kafka_pid(state_dir: Path) -> int:
    state = Stack(_settings(state_dir)).read_state()
    return int(state["services"]["kafka"]["pid"])


def _settings(state_dir: Path) -> Any:
    from deploy.settings import StackSettings

    return StackSettings.load(state_dir=state_dir)


def test_broker_restart_mid_send_loses_nothing(own_stack: tuple[Path, dict[str, int]]) -> None:
    state_dir, ports = own_stack
    bootstrap = f"127.0.0.1:{ports['kafka_port']}"
    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    topic = "restart.events"
    ensure_topics(kafka, [TopicSpec(topic, 3, 1, timedelta(hours=1))])

    tag = uuid.uuid4().hex[:8]
    events = [
        {
            "event_id": f"{tag}-e{n}",
            "event_type": "cta_click",
            "schema_version": 1,
            "session_id": f"{tag}-s{n % 50}",
            "user_id": "u",
            "ts_ms": TS + n,
            "cta_id": f"c{n}",
        }
        for n in range(EVENTS)
    ]
    settings = ProducerSettings.load(
        kafka=kafka,
        topic=topic,
        delivery_timeout=timedelta(minutes=4),
        flush_timeout=timedelta(minutes=4),
        linger=timedelta(milliseconds=2),
        librdkafka={"reconnect.backoff.max.ms": 500, "log_level": 3},
    )
    restarted = threading.Event()
    restart_errors: list[BaseException] = []

    outage: dict[str, int] = {}

    def restart_kafka() -> None:
        try:
            left = procs.stop([_kafka_pid(state_dir)], timeout_s=30)
            assert not left, f"kafka did not stop: {left}"
            outage["sent_when_down"] = len(futures)
            time.sleep(2)  # producer keeps sending into its buffer meanwhile
            ensure_up(state_dir, **ports)
            outage["sent_when_up"] = len(futures)
        except BaseException as exc:  # reported by the test thread
            restart_errors.append(exc)
        finally:
            restarted.set()

    futures: list[DeliveryFuture] = []
    restarter = threading.Thread(target=restart_kafka, daemon=True)
    with EventProducer(settings) as producer:
        for n, event in enumerate(events):
            futures.append(producer.send(event))
            if n == EVENTS // 4:
                # Make sure the first quarter is really on the broker before pulling it away.
                futures[-1].result(timeout=60)
                restarter.start()
            if n > EVENTS // 4 and not restarted.is_set():
                time.sleep(0.001)  # spread the middle half over the outage
        restarted.wait(timeout=300)
    # Leaving the block flushed without DeliveryError: all acknowledged.
    assert not restart_errors, restart_errors
    # The outage really fell in the middle of sending.
    assert EVENTS // 4 < outage["sent_when_down"] < outage["sent_when_up"], outage
    assert all(f.exception(timeout=0) is None for f in futures)

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"readback-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    ids: list[str] = []
    per_session: dict[str, list[str]] = defaultdict(list)
    deadline = time.monotonic() + 120
    quiet_until: float | None = None
    while time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=1000, timeout=0.5):
            assert msg.error() is None, msg.error()
            value = json.loads(msg.value())
            ids.append(value["event_id"])
            per_session[value["session_id"]].append(value["event_id"])
        if len(ids) >= EVENTS:
            quiet_until = quiet_until or time.monotonic() + 3
            if time.monotonic() >= quiet_until:
                break
    consumer.close()

    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} duplicates"
    assert set(ids) == {e["event_id"] for e in events}, f"lost {EVENTS - len(set(ids))}"
    expected: dict[str, list[str]] = defaultdict(list)
    for event in events:
        expected[event["session_id"]].append(event["event_id"])
    assert per_session == expected, "a session's events came back out of order"

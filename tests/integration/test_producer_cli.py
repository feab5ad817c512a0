"""`flywheel produce FILE.jsonl` against the real broker."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, TopicPartition

from connectors.cli import produce

pytestmark = pytest.mark.integration

TS = 1_717_400_000_000


def _event(n: int, session: str) -> dict[str, Any]:
    return {
        "event_id": f"{session}-e{n}",
        "event_type": "order" if n % 10 == 9 else "cta_sent",
        "schema_version": 1,
        "session_id": session,
        "user_id": "u",
        "ts_ms": TS + n,
        "cta_id": f"c{n}",
        "order_id": f"o{n}",
    }


def _read(bootstrap: str, topic: str, wait_s: float) -> list[dict[str, Any]]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"readback-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    values = []
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=1000, timeout=0.5):
            assert msg.error() is None
            values.append(json.loads(msg.value()))
    consumer.close()
    return values


@pytest.fixture
def env(kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)


def test_produce_sends_valid_lines_and_lists_rejects(
    env: None, kafka_bootstrap: str, unique_topic: Any, tmp_path: Path
) -> None:
    topic = str(unique_topic(partitions=3))
    session = uuid.uuid4().hex[:8]
    good = [_event(n, session) for n in range(2_000)]
    lines = [json.dumps(e) for e in good]
    # Bad lines at known positions (1-based line numbers after insertion).
    lines.insert(10, '{"event_type": "cta_sent", "schema_version": 1')  # line 11
    lines.insert(20, json.dumps({**good[0], "event_id": "x", "schema_version": 3}))  # line 21
    lines.insert(30, "")  # blank: skipped, not a reject
    lines.insert(40, json.dumps({**good[0], "event_id": "y", "ts_ms": 12}))  # line 41
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rejects = tmp_path / "rejects.jsonl"

    result = CliRunner().invoke(
        produce, [str(source), "--topic", topic, "--rejects", str(rejects), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "sent 2000, rejected 3, failed 0" in result.output
    listed = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["line"], r["field"], r["reason"]) for r in listed] == [
        (11, None, "invalid_json"),
        (21, "schema_version", "unsupported_schema_version"),
        (41, "ts_ms", "out_of_range"),
    ]
    assert listed[1]["raw"] == lines[20]

    stored = _read(kafka_bootstrap, topic, wait_s=4)
    assert [v["event_id"] for v in stored] == [e["event_id"] for e in good]  # one session: order


def test_rejects_go_to_stderr_by_default(env: None, unique_topic: Any, tmp_path: Path) -> None:
    topic = str(unique_topic(partitions=1))
    source = tmp_path / "events.jsonl"
    source.write_text(json.dumps(_event(0, "s")) + "\n" + '{"schema_version": 1}\n')
    result = CliRunner().invoke(produce, [str(source), "--topic", topic, "--no-progress"])
    assert result.exit_code == 0
    assert "line 2: event_type: missing_field" in result.output
    assert "sent 1, rejected 1, failed 0" in result.output


def test_undelivered_events_exit_non_zero(
    env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A topic that does not exist (the local broker does not auto-create): nothing delivered.
    monkeypatch.setenv(
        "FLYWHEEL_PRODUCER_LIBRDKAFKA", json.dumps({"topic.metadata.propagation.max.ms": 1000})
    )
    source = tmp_path / "events.jsonl"
    source.write_text("".join(json.dumps(_event(n, "s")) + "\n" for n in range(5)))
    result = CliRunner().invoke(
        produce, [str(source), "--topic", f"missing.{uuid.uuid4().hex}", "--no-progress"]
    )
    assert result.exit_code == 1, result.output
    assert "sent 0, rejected 0, failed 5" in result.output
    assert "not delivered" in result.output

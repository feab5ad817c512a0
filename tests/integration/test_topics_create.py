"""`ensure_topics` and `flywheel topics create` against the real broker."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from click.testing import CliRunner
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from connectors.cli import topics
from connectors.settings import KafkaSettings
from connectors.topics import TopicSettings, TopicSpec, ensure_topics

pytestmark = pytest.mark.integration


@pytest.fixture
def names(kafka_bootstrap: str) -> Iterator[dict[str, str]]:
    """Topic names private to this test (deleted afterwards)."""
    stamp = uuid.uuid4().hex[:10]
    chosen = {
        "events_topic": f"t.{stamp}.events",
        "flagged_topic": f"t.{stamp}.flagged",
        "dlq_topic": f"t.{stamp}.dlq",
    }
    yield chosen
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    existing = set(admin.list_topics(timeout=10).topics)
    doomed = [n for n in chosen.values() if n in existing]
    if doomed:
        for future in admin.delete_topics(doomed).values():
            future.result()


def _configs(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resource = ConfigResource(ResourceType.TOPIC, topic)
    entries = admin.describe_configs([resource])[resource].result()
    return {key: entry.value for key, entry in entries.items()}


def _partitions(bootstrap: str, topic: str) -> int:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    return len(admin.list_topics(timeout=10).topics[topic].partitions)


def test_creates_the_pipeline_topics_with_their_layout(
    kafka_bootstrap: str, names: dict[str, str]
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, **names)
    results = ensure_topics(kafka)
    assert [(r.name, r.status, r.partitions) for r in results] == [
        (names["events_topic"], "created", 6),
        (names["flagged_topic"], "created", 3),
        (names["dlq_topic"], "created", 3),
    ]
    events = _configs(kafka_bootstrap, names["events_topic"])
    assert events["retention.ms"] == str(7 * 24 * 3600 * 1000)
    assert events["cleanup.policy"] == "delete"
    for name in ("flagged_topic", "dlq_topic"):
        assert _configs(kafka_bootstrap, names[name])["retention.ms"] == str(30 * 86400 * 1000)

    # Second run: safe, reports what exists, changes nothing.
    again = ensure_topics(kafka)
    assert [(r.status, r.note) for r in again] == [("exists", "")] * 3


def test_layout_is_configurable_and_drift_is_reported(
    kafka_bootstrap: str, names: dict[str, str]
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, **names)
    settings = TopicSettings.load(
        kafka=kafka, events_partitions=2, events_retention=timedelta(hours=12)
    )
    ensure_topics(kafka, settings.specs())
    assert _partitions(kafka_bootstrap, names["events_topic"]) == 2
    assert _configs(kafka_bootstrap, names["events_topic"])["retention.ms"] == "43200000"

    defaults = ensure_topics(kafka)  # asks for 6 partitions and 7 days now
    events = defaults[0]
    assert events.status == "exists"
    assert "partitions 2 (wanted 6)" in events.note
    assert "retention.ms=43200000" in events.note
    assert _partitions(kafka_bootstrap, names["events_topic"]) == 2  # not altered


def test_custom_specs(kafka_bootstrap: str, names: dict[str, str]) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    spec = TopicSpec(names["events_topic"], 1, 1, timedelta(minutes=5), "compact,delete")
    (result,) = ensure_topics(kafka, [spec])
    assert result.status == "created"
    assert _configs(kafka_bootstrap, spec.name)["cleanup.policy"] == "compact,delete"


def test_cli_create_is_idempotent(
    kafka_bootstrap: str, names: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLYWHEEL_KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    for key, value in names.items():
        monkeypatch.setenv(f"FLYWHEEL_KAFKA_{key.upper()}", value)
    runner = CliRunner()
    first = runner.invoke(topics, ["create", "--events-partitions", "4", "--dlq-retention", "14d"])
    assert first.exit_code == 0, first.output
    assert f"{names['events_topic']}: created (4 partitions)" in first.output
    assert _configs(kafka_bootstrap, names["dlq_topic"])["retention.ms"] == str(14 * 86400 * 1000)

    second = runner.invoke(topics, ["create", "--events-partitions", "4", "--dlq-retention", "14d"])
    assert second.exit_code == 0, second.output
    assert second.output.count(": exists") == 3

    listed = runner.invoke(topics, ["list"])
    assert f"{names['events_topic']}\t4" in listed.output


def test_cli_reports_bad_settings_and_unreachable_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    bad = runner.invoke(topics, ["create", "--events-retention", "soon"])
    assert bad.exit_code == 2 and "duration" in bad.output

    monkeypatch.setenv("FLYWHEEL_KAFKA_BOOTSTRAP_SERVERS", "not-a-host-port")
    config = runner.invoke(topics, ["create"])
    assert config.exit_code == 1 and "bootstrap_servers" in config.output

    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("FLYWHEEL_KAFKA_BOOTSTRAP_SERVERS", dead)
    down = runner.invoke(topics, ["create", "--timeout", "2"])
    assert down.exit_code == 1 and "cannot reach Kafka" in down.output

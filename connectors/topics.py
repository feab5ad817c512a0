"""The pipeline's Kafka topics: what they look like and how to create them.

``ensure_topics()`` is idempotent: it creates the topics that are missing and
reports the ones that already exist (with a note when an existing topic's
partition count differs from the requested one; it never alters or deletes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewTopic,
    ResourceType,
)
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from connectors.settings import FlywheelSettings, KafkaSettings, to_ms

_librdkafka_logger = logging.getLogger("connectors.topics.librdkafka")


class TopicSettings(FlywheelSettings):
    """Topic layout (``FLYWHEEL_TOPICS_*``); names come from KafkaSettings."""

    model_config = SettingsConfigDict(
        env_prefix="FLYWHEEL_TOPICS_",
        extra="forbid",
        frozen=True,
        validate_default=True,
        env_nested_delimiter="__",
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    events_partitions: int = Field(default=6, ge=1)
    flagged_partitions: int = Field(default=3, ge=1)
    dlq_partitions: int = Field(default=3, ge=1)
    replication_factor: int = Field(
        default=1, ge=1, description="1 suits the local single-broker stack; use 3 in production."
    )
    min_insync_replicas: int | None = Field(
        default=None, ge=1, description="min.insync.replicas; broker default when unset."
    )
    events_retention: timedelta = timedelta(days=7)
    flagged_retention: timedelta = timedelta(days=30)
    dlq_retention: timedelta = timedelta(days=30)

    def specs(self) -> list[TopicSpec]:
        """The three pipeline topics with this layout."""
        extra = (
            {"min.insync.replicas": str(self.min_insync_replicas)}
            if self.min_insync_replicas
            else {}
        )
        k = self.kafka
        return [
            TopicSpec(k.events_topic, self.events_partitions, self.replication_factor,
                      self.events_retention, extra_config=extra),
            TopicSpec(k.flagged_topic, self.flagged_partitions, self.replication_factor,
                      self.flagged_retention, extra_config=extra),
            TopicSpec(k.dlq_topic, self.dlq_partitions, self.replication_factor,
                      self.dlq_retention, extra_config=extra),
        ]  # fmt: skip


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic to create."""

    name: str
    partitions: int
    replication_factor: int
    retention: timedelta
    cleanup_policy: Literal["delete", "compact", "compact,delete"] = "delete"
    extra_config: dict[str, str] = field(default_factory=dict)

    def config(self) -> dict[str, str]:
        conf = {
            "retention.ms": str(to_ms(self.retention)),
            "cleanup.policy": self.cleanup_policy,
        }
        conf.update(self.extra_config)
        return conf


@dataclass(frozen=True, slots=True)
class TopicResult:
    """What ensure_topics() did for one topic."""

    name: str
    status: Literal["created", "exists"]
    partitions: int
    note: str = ""

    def __str__(self) -> str:
        text = f"{self.name}: {self.status} ({self.partitions} partitions)"
        return f"{text}; {self.note}" if self.note else text


class TopicError(RuntimeError):
    """A topic could not be created."""


def default_topic_specs(settings: TopicSettings | None = None) -> list[TopicSpec]:
    """Specs of flywheel.events, flywheel.flagged and flywheel.dlq."""
    return (settings or TopicSettings.load()).specs()


def ensure_topics(
    kafka: KafkaSettings,
    specs: Iterable[TopicSpec] | None = None,
    *,
    timeout: float = 30.0,
) -> list[TopicResult]:
    """Create each topic of ``specs`` that does not exist yet; report the others.

    ``specs`` defaults to the pipeline's topics (TopicSettings with this Kafka).
    Returns once every created topic has a leader for all its partitions, so
    producers can write right away. Raises TopicError naming the topic on failure.
    """
    spec_list = list(specs) if specs is not None else TopicSettings.load(kafka=kafka).specs()
    admin = _admin(kafka)
    existing = _describe(admin, timeout)
    results: list[TopicResult] = []
    to_create = [s for s in spec_list if s.name not in existing]
    created: set[str] = set()
    if to_create:
        futures = admin.create_topics(
            [
                NewTopic(
                    s.name,
                    num_partitions=s.partitions,
                    replication_factor=s.replication_factor,
                    config=s.config(),
                )
                for s in to_create
            ],  # fmt: skip
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        for spec in to_create:
            try:
                futures[spec.name].result()
                created.add(spec.name)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                exists = KafkaError.TOPIC_ALREADY_EXISTS
                if isinstance(error, KafkaError) and error.code() == exists:
                    continue  # created concurrently by someone else: fine
                raise TopicError(f"cannot create topic {spec.name}: {exc}") from exc
        _wait_for_leaders(admin, {s.name: s.partitions for s in to_create}, timeout)
        existing_after = _describe(admin, timeout)
    else:
        existing_after = existing
    drift = _config_drift(admin, [s for s in spec_list if s.name not in created], timeout)
    for spec in spec_list:
        partitions = existing_after.get(spec.name, spec.partitions)
        differences = list(drift.get(spec.name, []))
        if partitions != spec.partitions:
            differences.insert(0, f"partitions {partitions} (wanted {spec.partitions})")
        note = ""
        if differences:
            note = "differs: " + ", ".join(differences) + "; existing topics are not altered"
        status: Literal["created", "exists"] = "created" if spec.name in created else "exists"
        results.append(TopicResult(spec.name, status, partitions, note))
    return results


def _admin(kafka: KafkaSettings) -> AdminClient:
    # librdkafka's log lines go to Python logging; failures still surface as TopicError.
    conf: dict[str, Any] = {**kafka.client_config(), "logger": _librdkafka_logger}
    return AdminClient(conf)


def _config_drift(
    admin: AdminClient, specs: list[TopicSpec], timeout: float
) -> dict[str, list[str]]:
    """Per existing topic, the spec'd settings whose current value differs."""
    if not specs:
        return {}
    resources = [ConfigResource(ResourceType.TOPIC, s.name) for s in specs]
    futures = admin.describe_configs(resources, request_timeout=timeout)
    drift: dict[str, list[str]] = {}
    for spec, resource in zip(specs, resources, strict=True):
        try:
            current = futures[resource].result()
        except KafkaException:
            continue  # describing is best effort; creation already succeeded or existed
        for key, wanted in spec.config().items():
            entry = current.get(key)
            if entry is not None and entry.value != wanted:
                drift.setdefault(spec.name, []).append(f"{key}={entry.value} (wanted {wanted})")
    return drift


def _describe(admin: AdminClient, timeout: float) -> dict[str, int]:
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise TopicError(f"cannot reach Kafka: {exc}") from exc
    return {name: len(meta.partitions) for name, meta in metadata.topics.items() if not meta.error}


def _wait_for_leaders(admin: AdminClient, wanted: dict[str, int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        metadata = admin.list_topics(timeout=timeout)
        ready = all(
            name in metadata.topics
            and not metadata.topics[name].error
            and len(metadata.topics[name].partitions) == count
            and all(p.leader >= 0 for p in metadata.topics[name].partitions.values())
            for name, count in wanted.items()
        )
        if ready:
            return
        if time.monotonic() >= deadline:
            raise TopicError(f"topics {sorted(wanted)} have no leader after {timeout:.0f}s")
        time.sleep(0.2)


def list_topics(kafka: KafkaSettings, timeout: float = 10.0) -> dict[str, int]:
    """Topic name -> partition count, internal topics left out."""
    admin = _admin(kafka)
    return {
        name: count
        for name, count in sorted(_describe(admin, timeout).items())
        if not name.startswith("__")
    }


__all__ = [
    "TopicError",
    "TopicResult",
    "TopicSettings",
    "TopicSpec",
    "default_topic_specs",
    "ensure_topics",
    "list_topics",
]

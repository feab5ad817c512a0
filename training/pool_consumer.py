"""The pool consumer: flagged sessions from Kafka -> the sample pool on S3.

It reads ``flywheel.flagged`` with ``isolation.level=read_committed`` and auto-commit
off, and commits a partition's offsets only after that batch's objects were written
(``put_object`` returned). A crash between the write and the commit replays the batch:
same objects, same rows, no loss and no duplicates after dedup. The store is
``training.pool``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from connectors.settings import KafkaSettings
from features.flagged import redact_flagged_message
from schemas.flagged import FlaggedMessage, InvalidFlaggedMessage
from training.data import (
    EditPair,
    PoolSample,
    SourcePosition,
    extract_samples,
    pool_counts,
)
from training.online import record_pool_added, write_pool_counts
from training.pool import PoolStore
from training.settings import PoolConfig

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ConsumeReport:
    """What one ``PoolConsumer.run`` did."""

    messages: int = 0
    samples_written: int = 0
    new_samples: int = 0
    edits_written: int = 0
    rejected: int = 0
    denied: int = 0  # messages of forgotten users (contract section 6), never stored
    objects: list[str] = field(default_factory=list)
    committed: dict[str, int] = field(default_factory=dict)  # "topic:partition" -> next offset
    pool: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "samples_written": self.samples_written,
            "new_samples": self.new_samples,
            "edits_written": self.edits_written,
            "rejected": self.rejected,
            "denied": self.denied,
            "objects": list(self.objects),
            "committed": dict(self.committed),
            "pool": dict(self.pool),
        }


def _now_ms() -> int:
    return int(time.time() * 1000)


class PoolConsumer:
    """Consumes flagged sessions into the pool; commits only what was written."""

    def __init__(
        self,
        *,
        kafka: KafkaSettings,
        store: PoolStore,
        config: PoolConfig,
        labels: Sequence[str],
        topic: str | None = None,
        redis: Any = None,
        redis_prefix: str = "fw:",
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self.kafka = kafka
        self.store = store
        self.config = config
        self.labels = list(labels)
        self.topic = topic or kafka.flagged_topic
        self.redis = redis
        self.redis_prefix = redis_prefix
        self.clock_ms = clock_ms
        self._buffer: dict[tuple[str, int], list[tuple[int, bytes | None]]] = defaultdict(list)
        self._known: set[tuple[str, str]] = set()
        self._consumer: Any = None
        self._report = ConsumeReport()
        from features.redaction import Redactor

        self.redactor = Redactor(config.redact_patterns)
        from features.privacy import DenyList

        self._deny_list = DenyList()

    def _read_deny_list(self) -> None:
        """Forgotten users from Redis (when there is one); kept as it was if Redis is away."""
        from features.privacy import DenyList, denied_users_key

        if self.redis is None:
            return
        try:
            members = self.redis.smembers(denied_users_key(self.redis_prefix))
        except Exception as exc:  # redis-py raises several types; keep consuming
            log.warning("deny list not read from Redis: %s", exc)
            return
        self._deny_list = DenyList(str(m) for m in members)

    def consumer_config(self) -> dict[str, Any]:
        return {
            **self.kafka.client_config(),
            "group.id": self.config.consumer_group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }

    def run(self, max_messages: int | None = None, idle_timeout_s: float = 10.0) -> ConsumeReport:
        """Consume until ``max_messages`` were read or nothing came for ``idle_timeout_s``."""
        from confluent_kafka import Consumer, KafkaError, KafkaException

        self._report = ConsumeReport()
        self._known = self.store.sample_keys()
        self._read_deny_list()
        consumer = Consumer(self.consumer_config())
        self._consumer = consumer
        consumer.subscribe([self.topic], on_revoke=self._on_revoke)
        poll_s = self.config.poll_timeout.total_seconds()
        last_message = time.monotonic()
        buffered = 0
        try:
            while max_messages is None or self._report.messages < max_messages:
                message = consumer.poll(poll_s)
                if message is None:
                    if time.monotonic() - last_message >= idle_timeout_s:
                        break
                    continue
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    if error.fatal():
                        raise KafkaException(error)
                    log.warning("kafka: %s", error)
                    continue
                last_message = time.monotonic()
                topic, partition, offset = message.topic(), message.partition(), message.offset()
                if topic is None or partition is None or offset is None:
                    continue  # only error events lack them, and those were handled above
                self._buffer[(topic, partition)].append((offset, message.value()))
                self._report.messages += 1
                buffered += 1
                if buffered >= self.config.flush_every_messages:
                    self.flush()
                    buffered = 0
            self.flush()
        except BaseException:
            # Nothing of the failed batch was committed: it is redelivered on the next run.
            self._buffer.clear()
            raise
        finally:
            consumer.close()
            self._consumer = None
        snapshot = self.store.read_samples()
        self._report.pool = pool_counts(snapshot.samples)
        write_pool_counts(self.redis, self.redis_prefix, self._report.pool)
        return self._report

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        # Write and commit what we hold before another consumer takes the partitions.
        self.flush()

    def flush(self) -> None:
        """Write every buffered partition batch, then commit its offsets."""
        from confluent_kafka import TopicPartition

        self._read_deny_list()
        for (topic, partition), batch in list(self._buffer.items()):
            if not batch:
                continue
            samples, edits, rejected = self._extract(topic, partition, batch)
            first, last = batch[0][0], batch[-1][0]
            keys = self.store.write_batch(topic, partition, first, last, samples, edits, rejected)
            # Durable now: only then move the group's offset past the batch.
            if self._consumer is not None:
                self._consumer.commit(
                    offsets=[TopicPartition(topic, partition, last + 1)], asynchronous=False
                )
            self._report.committed[f"{topic}:{partition}"] = last + 1
            new = [s for s in samples if s.key not in self._known]
            self._known.update(s.key for s in samples)
            self._report.samples_written += len(samples)
            self._report.new_samples += len({s.key for s in new})
            self._report.edits_written += len(edits)
            self._report.rejected += len(rejected)
            self._report.objects += keys
            record_pool_added(
                self.redis, self.redis_prefix, len({s.key for s in new}), self.clock_ms()
            )
            del self._buffer[(topic, partition)]

    def _extract(
        self, topic: str, partition: int, batch: Iterable[tuple[int, bytes | None]]
    ) -> tuple[list[PoolSample], list[EditPair], list[dict[str, Any]]]:
        samples: list[PoolSample] = []
        edits: list[EditPair] = []
        rejected: list[dict[str, Any]] = []
        now = self.clock_ms()
        for offset, value in batch:
            raw = value.decode("utf-8", errors="replace") if value is not None else ""
            problem: str | None = None
            message: FlaggedMessage | None = None
            try:
                message = FlaggedMessage.from_dict(json.loads(raw))
            except InvalidFlaggedMessage as exc:
                problem = str(exc)
            except ValueError as exc:
                problem = f"invalid JSON: {exc}"
            if message is None:
                rejected.append(
                    {
                        "reason": "invalid_flagged_message",
                        "message": problem,
                        "source_topic": topic,
                        "source_partition": partition,
                        "source_offset": offset,
                        "raw": self.redactor.redact(raw),
                        "rejected_at_ms": now,
                    }
                )
                continue
            if self._deny_list.denies(message.user_id):
                self._report.denied += 1
                continue
            extracted = extract_samples(
                redact_flagged_message(message, self.redactor),
                self.config,
                self.labels,
                source=SourcePosition(topic=topic, partition=partition, offset=offset),
                now_ms=now,
            )
            samples += extracted.samples
            edits += extracted.edits
        return samples, edits, rejected


__all__ = ["ConsumeReport", "PoolConsumer"]

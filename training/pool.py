"""The sample pool: flagged sessions from Kafka -> labeled samples as Parquet on S3.

Layout under ``s3://<bucket>/<pool.prefix>/``::

    samples/part-<topic>-<partition>-<first_offset>-<last_offset>.parquet   intent samples
    edits/part-<topic>-<partition>-<first_offset>-<last_offset>.parquet     edit pairs
    rejected/part-<topic>-<partition>-<first_offset>-<last_offset>.jsonl    unreadable messages
    labels/human-<sha256 prefix>.parquet                                    imported human labels

Object names are derived from the Kafka offsets they hold, so replaying the same
offsets overwrites the same objects; readers deduplicate by (session_id, request_id)
anyway, because a replay may cut batches differently.

The consumer reads ``flywheel.flagged`` with ``isolation.level=read_committed`` and
auto-commit off, and commits a partition's offsets only after that batch's objects
were written (``put_object`` returned). A crash between the write and the commit
replays the batch: same objects, same rows, no loss and no duplicates after dedup.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from connectors.settings import KafkaSettings, S3Settings
from features.flagged import redact_flagged_message
from training.data import (
    EditPair,
    PoolSample,
    SourcePosition,
    apply_human_labels,
    dedupe_edits,
    dedupe_samples,
    extract_samples,
    pool_counts,
    trust_user_labels,
    validate_flagged,
)
from training.errors import PoolError
from training.online import record_pool_added, write_pool_counts
from training.settings import PoolConfig

log = logging.getLogger(__name__)


def _schemas() -> dict[str, Any]:
    import pyarrow as pa

    source = [
        ("source_topic", pa.string()),
        ("source_partition", pa.int32()),
        ("source_offset", pa.int64()),
        ("added_ms", pa.int64()),
    ]
    samples = pa.schema(
        [
            ("session_id", pa.string()),
            ("request_id", pa.string()),
            ("text", pa.string()),
            ("predicted_intent", pa.string()),
            ("confidence", pa.float64()),
            ("reasons", pa.list_(pa.string())),
            ("model_version", pa.string()),
            ("label", pa.string()),
            ("label_source", pa.string()),
            ("quality", pa.string()),
            ("note", pa.string()),
            ("user_id", pa.string()),
            ("session_start_ms", pa.int64()),
            ("ts_ms", pa.int64()),
            *source,
        ]
    )
    edits = pa.schema(
        [
            ("session_id", pa.string()),
            ("request_id", pa.string()),
            ("prompt", pa.string()),
            ("response", pa.string()),
            ("corrected_response", pa.string()),
            ("model_version", pa.string()),
            *source,
        ]
    )
    labels = pa.schema(
        [
            ("session_id", pa.string()),
            ("request_id", pa.string()),
            ("label", pa.string()),
            ("annotator", pa.string()),
            ("added_ms", pa.int64()),
        ]
    )
    return {"samples": samples, "edits": edits, "labels": labels}


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectRef:
    """One S3 object a reader used, with the SHA-256 of the bytes it read."""

    uri: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolSnapshot:
    """The deduplicated pool and the objects it was read from."""

    samples: list[PoolSample]
    objects: list[ObjectRef]

    def sources(self) -> list[dict[str, Any]]:
        return [
            {"kind": "pool", "uri": o.uri, "size": o.size, "sha256": o.sha256} for o in self.objects
        ]


class PoolStore:
    """Reads and writes the pool's Parquet objects on S3."""

    def __init__(
        self,
        s3: S3Settings,
        prefix: str = "pool",
        *,
        client: Any = None,
        max_corrections_per_user: int | None = None,
        redact_patterns: Sequence[str] = (),
    ) -> None:
        from features.redaction import Redactor

        self.redactor = Redactor(tuple(redact_patterns))
        # With a cap, readers see end users' untrusted corrections as the review queue
        # sees them (``trust_user_labels``): the same as the next training set does.
        self.max_corrections_per_user = max_corrections_per_user
        self.s3 = s3
        self.bucket = s3.bucket
        self.prefix = prefix.strip("/")
        self.client = client or s3.boto3_client()

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def key(self, kind: str, name: str) -> str:
        return f"{self.prefix}/{kind}/{name}"

    @staticmethod
    def part_name(topic: str, partition: int, first: int, last: int, suffix: str) -> str:
        return f"part-{topic}-{partition}-{first:020d}-{last:020d}.{suffix}"

    # ------------------------------------------------------------- writing

    def _put(self, key: str, body: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body)
        except Exception as exc:  # botocore raises many types; the message names the cause
            raise PoolError(f"cannot write {self.uri(key)}: {exc}") from exc

    def _put_table(self, key: str, rows: Sequence[Mapping[str, Any]], kind: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(list(rows), schema=_schemas()[kind])
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        self._put(key, buffer.getvalue())

    def write_batch(
        self,
        topic: str,
        partition: int,
        first: int,
        last: int,
        samples: Sequence[PoolSample],
        edits: Sequence[EditPair],
        rejected: Sequence[Mapping[str, Any]],
    ) -> list[str]:
        """Write one partition's batch; returns the keys written."""
        keys = []
        if samples:
            key = self.key("samples", self.part_name(topic, partition, first, last, "parquet"))
            self._put_table(key, [s.to_row() for s in samples], "samples")
            keys.append(key)
        if edits:
            key = self.key("edits", self.part_name(topic, partition, first, last, "parquet"))
            self._put_table(key, [e.to_row() for e in edits], "edits")
            keys.append(key)
        if rejected:
            key = self.key("rejected", self.part_name(topic, partition, first, last, "jsonl"))
            body = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejected)
            self._put(key, body.encode("utf-8"))
            keys.append(key)
        return keys

    def write_human_labels(self, rows: Sequence[Mapping[str, Any]]) -> str:
        """Write imported labels (texts redacted); the object name is the hash of its content."""
        rows = [
            {**r, "text": self.redactor.redact(r["text"])}
            if isinstance(r.get("text"), str)
            else dict(r)
            for r in rows
        ]
        digest = hashlib.sha256(
            json.dumps([dict(r) for r in rows], sort_keys=True).encode("utf-8")
        ).hexdigest()[:16]
        key = self.key("labels", f"human-{digest}.parquet")
        self._put_table(key, rows, "labels")
        return key

    # ------------------------------------------------------------- reading

    def _list(self, kind: str) -> list[str]:
        keys = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}/{kind}/"):
                # A key ending in "/" is a folder marker (s3a, consoles), never a record.
                keys += [o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith("/")]
        except Exception as exc:
            raise PoolError(
                f"cannot list {self.uri(self.prefix + '/' + kind + '/')}: {exc}"
            ) from exc
        return sorted(keys)

    def _read(self, key: str) -> tuple[bytes, ObjectRef]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as exc:
            raise PoolError(f"cannot read {self.uri(key)}: {exc}") from exc
        return body, ObjectRef(
            uri=self.uri(key), size=len(body), sha256=hashlib.sha256(body).hexdigest()
        )

    def _read_rows(self, kind: str) -> tuple[list[dict[str, Any]], list[ObjectRef]]:
        import pyarrow.parquet as pq

        rows: list[dict[str, Any]] = []
        refs = []
        for key in self._list(kind):
            body, ref = self._read(key)
            try:
                rows += pq.read_table(io.BytesIO(body)).to_pylist()
            except Exception as exc:
                raise PoolError(f"{ref.uri} is not a readable Parquet file: {exc}") from exc
            refs.append(ref)
        return rows, refs

    def read_samples(self) -> PoolSnapshot:
        """All samples, deduplicated, with imported human labels applied.

        With ``max_corrections_per_user``, corrections that ``trust_user_labels`` does
        not trust come back as review samples (with a ``note``), so ``label export``
        offers them to human labelers.
        """
        rows, refs = self._read_rows("samples")
        samples = dedupe_samples(PoolSample.from_row(r) for r in rows)
        label_rows, label_refs = self._read_rows("labels")
        human: dict[tuple[str, str], tuple[str, int]] = {}
        for row in sorted(label_rows, key=lambda r: r["added_ms"] or 0):
            human[(row["session_id"], row["request_id"])] = (row["label"], row["added_ms"] or 0)
        samples = apply_human_labels(samples, human)
        if self.max_corrections_per_user is not None:
            kept, review = trust_user_labels(
                samples, max_corrections_per_user=self.max_corrections_per_user
            )
            order = {s.key: n for n, s in enumerate(samples)}
            samples = sorted(kept + review, key=lambda s: order[s.key])
        return PoolSnapshot(samples=samples, objects=refs + label_refs)

    def read_edits(self) -> tuple[list[EditPair], list[ObjectRef]]:
        rows, refs = self._read_rows("edits")
        return dedupe_edits(EditPair.from_row(r) for r in rows), refs

    def read_rejected(self) -> list[dict[str, Any]]:
        out = []
        for key in self._list("rejected"):
            body, _ = self._read(key)
            out += [json.loads(line) for line in body.decode("utf-8").splitlines() if line.strip()]
        return out

    def sample_keys(self) -> set[tuple[str, str]]:
        return {s.key for s in self.read_samples().samples}

    def counts(self) -> dict[str, int]:
        return pool_counts(self.read_samples().samples)


# ------------------------------------------------------------------ consumer


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
            problem: str | None
            try:
                message = json.loads(raw)
                problem = validate_flagged(message)
            except ValueError as exc:
                message, problem = None, f"invalid JSON: {exc}"
            if problem is not None:
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
            if self._deny_list.denies(str(message.get("user_id") or "")):
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


def ensure_bucket(s3: S3Settings, client: Any = None) -> None:
    """Create the configured bucket when it does not exist yet."""
    client = client or s3.boto3_client()
    try:
        client.head_bucket(Bucket=s3.bucket)
    except Exception:
        client.create_bucket(Bucket=s3.bucket)


__all__ = [
    "ConsumeReport",
    "ObjectRef",
    "PoolConsumer",
    "PoolSnapshot",
    "PoolStore",
    "ensure_bucket",
]

"""Drive the feature job from tests against the real services, and read what it wrote.

``job_sandbox(...)`` gives one isolated world per job scenario: its own events/flagged/DLQ
topics, Redis key prefix, S3 bucket, checkpoint folder and consumer group, and the
``FLYWHEEL_*`` environment pointing at them (what ``flywheel run`` reads). Everything is
removed afterwards. Module-scoped fixtures use it so one job run serves many tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reference.s3_buckets import delete_bucket

# Generous: a run takes 1-2 minutes on a loaded 2-core machine; a hung job fails instead.
RUN_DEADLINE_S = 420.0


@dataclass
class JobSandbox:
    """Names and clients of one isolated job scenario."""

    endpoints: Any  # deploy.stack.StackEndpoints
    events_topic: str
    flagged_topic: str
    dlq_topic: str
    redis_prefix: str
    bucket: str
    checkpoint_dir: str
    consumer_group: str
    produced: list[tuple[int, int]] = field(default_factory=list)  # (partition, offset) per record

    @property
    def output_base(self) -> str:
        return f"s3://{self.bucket}/flywheel"

    def context(self, **job_overrides: Any) -> Any:
        """``jobs.streaming.load_context`` for this sandbox (fast checkpoints, own group)."""
        from jobs.streaming import load_context

        settings = {
            "checkpoint_interval": "PT1S",
            "output_base": self.output_base,
            "checkpoint_dir": self.checkpoint_dir,
            "consumer_group": self.consumer_group,
            **job_overrides,
        }
        return load_context(**settings)

    # --- Kafka ---------------------------------------------------------------------------

    def produce(
        self, records: Iterable[tuple[bytes | None, bytes]], *, max_bytes: int | None = None
    ) -> list[tuple[int, int]]:
        """Send (key, value) records in order to the events topic; their (partition, offset)."""
        from confluent_kafka import Producer

        conf = self.endpoints.kafka_settings().client_config()
        conf.update({"enable.idempotence": True, "linger.ms": 20})
        if max_bytes:
            conf["message.max.bytes"] = max_bytes
        producer = Producer(conf)
        positions: list[tuple[int, int] | None] = []

        def delivered(index: int) -> Callable[[Any, Any], None]:
            def report(err: Any, msg: Any) -> None:
                if err is not None:
                    raise RuntimeError(f"produce failed: {err}")
                positions[index] = (msg.partition(), msg.offset())

            return report

        for key, value in records:
            positions.append(None)
            while True:
                try:
                    producer.produce(
                        self.events_topic, value, key=key, on_delivery=delivered(len(positions) - 1)
                    )
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
        assert producer.flush(60) == 0, "records still queued after 60 s"
        assert all(p is not None for p in positions)
        done = [p for p in positions if p is not None]
        self.produced.extend(done)
        return done

    def read_topic(
        self, topic: str, *, read_committed: bool = True, timeout_s: float = 60.0
    ) -> list[dict[str, Any]]:
        """Every record of ``topic`` (as a consumer with ``isolation.level=read_committed``)."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

        conf = self.endpoints.kafka_settings().client_config()
        conf.update(
            {
                "group.id": f"test-reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed" if read_committed else "read_uncommitted",
                "fetch.max.bytes": 64 * 2**20,
                "max.partition.fetch.bytes": 16 * 2**20,
            }
        )
        consumer = Consumer(conf)
        try:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
            at_end: set[int] = set()
            records: list[dict[str, Any]] = []
            deadline = time.monotonic() + timeout_s
            while len(at_end) < len(partitions):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{topic}: not at the end after {timeout_s} s")
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        at_end.add(msg.partition())
                        continue
                    raise RuntimeError(msg.error())
                at_end.discard(msg.partition())
                records.append(
                    {
                        "key": msg.key(),
                        "value": msg.value(),
                        "partition": msg.partition(),
                        "offset": msg.offset(),
                    }
                )
            return records
        finally:
            consumer.close()

    def read_json_topic(self, topic: str) -> list[tuple[str | None, dict[str, Any]]]:
        return [
            (r["key"].decode() if r["key"] is not None else None, json.loads(r["value"]))
            for r in self.read_topic(topic)
        ]

    # --- S3 ------------------------------------------------------------------------------

    def object_keys(self, prefix: str) -> list[str]:
        client = self.endpoints.s3_settings().boto3_client()
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            # Folder markers ("dir/", written by s3a) are not objects of the job's.
            keys += [i["Key"] for i in page.get("Contents", []) if not i["Key"].endswith("/")]
        return keys

    def put_object(self, key: str, body: bytes) -> None:
        self.endpoints.s3_settings().boto3_client().put_object(
            Bucket=self.bucket, Key=key, Body=body
        )

    def get_object(self, key: str) -> bytes:
        client = self.endpoints.s3_settings().boto3_client()
        return client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def parquet_rows(self, path: str) -> list[dict[str, Any]]:
        """Rows of the hive-partitioned Parquet dataset at ``<bucket>/<path>`` (dt included)."""
        table = self.parquet_table(path)
        if table is None:
            return []
        rows = table.to_pylist()
        for row in rows:
            row["dt"] = str(row["dt"])
        return rows

    def parquet_table(self, path: str) -> Any:
        """The hive-partitioned Parquet dataset at ``<bucket>/<path>`` as one Arrow table."""
        import pyarrow.dataset as ds

        if not self.object_keys(path + "/"):
            return None
        dataset = ds.dataset(
            f"{self.bucket}/{path}",
            filesystem=self.endpoints.s3_settings().pyarrow_filesystem(),
            format="parquet",
            partitioning="hive",
        )
        return dataset.to_table()

    # --- Redis ---------------------------------------------------------------------------

    def redis(self) -> Any:
        return self.endpoints.redis_settings().client()

    def session_hashes(self, session_ids: Iterable[str]) -> dict[str, dict[str, str]]:
        client = self.redis()
        ids = list(session_ids)
        pipe = client.pipeline(transaction=False)
        for session_id in ids:
            pipe.hgetall(f"{self.redis_prefix}session:{session_id}")
        return dict(zip(ids, pipe.execute(), strict=False))

    def stats(self) -> dict[str, int]:
        raw = self.redis().hgetall(f"{self.redis_prefix}stats:total")
        return {k: int(v) for k, v in raw.items()}

    # --- the command line ------------------------------------------------------------------

    def flywheel_run(self, log: Path, *args: str) -> subprocess.Popen[bytes]:
        """``flywheel run ARGS`` as a user starts it, pointed at this sandbox (2 s
        checkpoints, no embeddings), in its own process group so a kill takes the JVM too."""
        env = dict(os.environ)
        env.update(
            {
                "FLYWHEEL_JOB_CHECKPOINT_DIR": self.checkpoint_dir,
                "FLYWHEEL_JOB_CHECKPOINT_INTERVAL": "PT2S",
                "FLYWHEEL_JOB_OUTPUT_BASE": self.output_base,
                "FLYWHEEL_JOB_CONSUMER_GROUP": self.consumer_group,
                "FLYWHEEL_JOB_EMBEDDING_ENABLED": "false",
            }
        )
        flywheel = str(Path(sys.executable).parent / "flywheel")
        return subprocess.Popen(
            [flywheel, "run", *args], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def completed_checkpoints(self) -> int:
        """Completed checkpoints in the (local) checkpoint directory."""
        root = Path(self.checkpoint_dir.removeprefix("file://"))
        return len(list(root.glob("*/chk-*/_metadata")))


def _delete_topics(admin: Any, topics: list[str]) -> None:
    futures = admin.delete_topics(topics, operation_timeout=30)
    for future in futures.values():
        with contextlib.suppress(Exception):
            future.result(timeout=60)


@contextlib.contextmanager
def job_sandbox(
    endpoints: Any,
    kafka_admin: Any,
    tmp_dir: Path,
    name: str,
    *,
    events_topic_config: dict[str, str] | None = None,
    partitions: int = 1,
) -> Iterator[JobSandbox]:
    """An isolated world for one job scenario; the environment points the job at it."""
    from confluent_kafka.admin import NewTopic

    suffix = uuid.uuid4().hex[:10]
    box = JobSandbox(
        endpoints=endpoints,
        events_topic=f"test.fj-{name}.events.{suffix}",
        flagged_topic=f"test.fj-{name}.flagged.{suffix}",
        dlq_topic=f"test.fj-{name}.dlq.{suffix}",
        redis_prefix=f"test:fj-{name}:{suffix}:",
        bucket=f"test-fj-{name}-{suffix}"[:63],
        checkpoint_dir=(tmp_dir / "checkpoints").resolve().as_uri(),
        consumer_group=f"test-fj-{name}-{suffix}",
    )
    topics = [
        NewTopic(
            box.events_topic,
            num_partitions=partitions,
            replication_factor=1,
            config=events_topic_config or {},
        ),
        NewTopic(box.flagged_topic, num_partitions=1, replication_factor=1),
        NewTopic(box.dlq_topic, num_partitions=1, replication_factor=1),
    ]
    for future in kafka_admin.create_topics(topics, operation_timeout=30).values():
        future.result(timeout=60)
    s3 = endpoints.s3_settings().boto3_client()
    s3.create_bucket(Bucket=box.bucket)
    try:
        with pytest.MonkeyPatch.context() as env:
            for key, value in endpoints.to_env().items():
                env.setenv(key, value)
            env.setenv("FLYWHEEL_KAFKA_EVENTS_TOPIC", box.events_topic)
            env.setenv("FLYWHEEL_KAFKA_FLAGGED_TOPIC", box.flagged_topic)
            env.setenv("FLYWHEEL_KAFKA_DLQ_TOPIC", box.dlq_topic)
            env.setenv("FLYWHEEL_REDIS_KEY_PREFIX", box.redis_prefix)
            yield box
    finally:
        _delete_topics(kafka_admin, [t.topic for t in topics])
        client = box.redis()
        keys = list(client.scan_iter(match=f"{box.redis_prefix}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        delete_bucket(s3, box.bucket)


class JobRun:
    """A streaming job started on the embedded MiniCluster, cancelled if a test gives up."""

    def __init__(
        self, ctx: Any, *, savepoint: str | None = None, deadline_s: float = RUN_DEADLINE_S
    ):
        from jobs.commands import start_streaming

        self.ctx = ctx
        self.deadline = time.monotonic() + deadline_s
        self.started = time.monotonic()
        self.client = start_streaming(ctx, savepoint=savepoint)
        self.stopped = False

    def status(self) -> str:
        """The job's status name (``RUNNING``, ``FAILED``, ...)."""
        status = self.client.get_job_status().result()
        return getattr(status, "name", str(status))

    def check_deadline(self, what: str = "the job") -> None:
        if time.monotonic() > self.deadline:
            raise TimeoutError(f"{what} did not finish before the deadline")
        status = self.status()
        if status in ("FAILED", "CANCELED", "FINISHED"):
            raise AssertionError(f"feature job ended with status {status}")

    def wait_for(self, condition: Callable[[], bool], what: str, *, poll_s: float = 0.25) -> float:
        """Poll ``condition`` while the job runs; seconds it took."""
        start = time.monotonic()
        while not condition():
            self.check_deadline(what)
            time.sleep(poll_s)
        return time.monotonic() - start

    def stop_when_idle(self, *, idle_s: float, drain: bool) -> str:
        """``jobs.commands.stop_when_idle``: wait until idle, stop with a savepoint."""
        from jobs.commands import stop_when_idle

        def guard(_idle: float) -> None:
            if time.monotonic() > self.deadline:
                raise TimeoutError("the job never became idle (stuck or restarting?)")

        path = stop_when_idle(self.ctx, self.client, idle_s=idle_s, drain=drain, progress=guard)
        self.stopped = True
        return path

    def cancel(self) -> None:
        if not self.stopped:
            with contextlib.suppress(Exception):
                self.client.cancel().result()
            self.stopped = True

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started


@contextlib.contextmanager
def running_job(ctx: Any, **kwargs: Any) -> Iterator[JobRun]:
    """Start the streaming job; cancel it if the block fails before it was stopped."""
    run = JobRun(ctx, **kwargs)
    try:
        yield run
    finally:
        run.cancel()

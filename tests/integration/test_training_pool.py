"""Pool consumer against the real Kafka, S3 and Redis of the local stack.

Flagged messages are produced transactionally (as the feature job does); the consumer
reads committed only, writes Parquet to S3, and commits offsets after each write.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from typing import Any

import pytest

from training.data import QUALITY_HIGH, QUALITY_MEDIUM, QUALITY_REVIEW
from training.errors import PoolError
from training.online import pool_key, stats_minute_key, stats_total_key
from training.pool import PoolConsumer, PoolStore
from training.settings import PoolConfig
from training.synthetic import INTENTS

pytestmark = pytest.mark.integration


def _flagged(session: int, *, correct: bool, ordered: bool = False) -> dict[str, Any]:
    sid = f"sess-{session:03d}"
    return {
        "session_id": sid,
        "user_id": f"user-{session}",
        "session_start_ms": 1_767_225_600_000,
        "session_end_ms": 1_767_225_660_000,
        "reasons": ["explicit_negative"],
        "features": {"order_count": 1 if ordered else 0},
        "model_version": "intent-v1",
        "transcript": [
            {
                "ts_ms": 1_767_225_600_000,
                "role": "user",
                "text": f"how many days to Lyon {session}",
                "request_id": f"{sid}-a",
                "predicted_intent": "order_status",
                "intent_confidence": 0.62,
            },
            {
                "ts_ms": 1_767_225_601_000,
                "role": "assistant",
                "text": "It is on its way.",
                "request_id": f"{sid}-a",
                "predicted_intent": None,
                "intent_confidence": None,
            },
            {
                "ts_ms": 1_767_225_630_000,
                "role": "user",
                "text": f"how much is item {session}",
                "request_id": f"{sid}-b",
                "predicted_intent": "price",
                "intent_confidence": 0.97,
            },
        ],
        "feedback": (
            [
                {
                    "request_id": f"{sid}-a",
                    "kind": "correction",
                    "rating": None,
                    "corrected_text": None,
                    "corrected_intent": "shipping",
                }
            ]
            if correct
            else []
        ),
    }


def _produce(kafka_settings: Any, topic: str, values: list[bytes], *, commit: bool = True) -> None:
    from confluent_kafka import Producer

    producer = Producer(
        {**kafka_settings.client_config(), "transactional.id": f"test-{uuid.uuid4().hex}"}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for number, value in enumerate(values):
        producer.produce(topic, value=value, key=f"key-{number}".encode())
    if commit:
        producer.commit_transaction(30)
    else:
        producer.flush(30)
        producer.abort_transaction(30)


def _committed(kafka_settings: Any, group: str, topic: str, partitions: int) -> list[int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**kafka_settings.client_config(), "group.id": group})
    try:
        offsets = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], 30)
        return [tp.offset for tp in offsets]
    finally:
        consumer.close()


@pytest.fixture
def s3(s3_settings: Any, s3_bucket: str) -> Any:
    return s3_settings.model_copy(update={"bucket": s3_bucket})


def test_consumer_writes_pool_rows_and_commits_only_committed_transactions(
    kafka_settings: Any, s3: Any, redis_settings: Any, redis_prefix: str, unique_topic: Any
) -> None:
    topic = unique_topic(partitions=2)
    good = [
        json.dumps(_flagged(i, correct=i % 2 == 0, ordered=i % 3 == 0)).encode() for i in range(12)
    ]
    _produce(kafka_settings, topic, good[:6])
    _produce(kafka_settings, topic, [json.dumps(_flagged(99, correct=True)).encode()], commit=False)
    _produce(kafka_settings, topic, good[6:] + [b"{not json", b'{"session_id": 5}'])
    config = PoolConfig(consumer_group=f"pool-{uuid.uuid4().hex[:8]}", flush_every_messages=5)
    store = PoolStore(s3, config.prefix)
    redis = redis_settings.client()
    consumer = PoolConsumer(
        kafka=kafka_settings,
        store=store,
        config=config,
        labels=INTENTS,
        topic=topic,
        redis=redis,
        redis_prefix=redis_prefix,
    )
    report = consumer.run(idle_timeout_s=5)

    assert report.messages == 14  # the aborted transaction is invisible to read_committed
    assert report.rejected == 2
    samples = store.read_samples().samples
    assert len(samples) == 24 and report.new_samples == 24
    assert "sess-099" not in {s.session_id for s in samples}
    by_key = {s.key: s for s in samples}
    corrected = by_key[("sess-000", "sess-000-a")]
    assert (corrected.label, corrected.label_source, corrected.quality) == (
        "shipping",
        "correction",
        QUALITY_HIGH,
    )
    assert by_key[("sess-003", "sess-003-b")].quality == QUALITY_MEDIUM  # ordered, 0.97
    assert by_key[("sess-001", "sess-001-b")].quality == QUALITY_REVIEW  # no order
    assert by_key[("sess-001", "sess-001-a")].quality == QUALITY_REVIEW
    assert corrected.source_topic == topic and corrected.source_offset >= 0
    # Deterministic object names carry the offsets they hold.
    names = [key.rsplit("/", 1)[1] for key in report.objects if "/samples/" in key]
    assert names and all(name.startswith(f"part-{topic}-") for name in names)
    rejected = store.read_rejected()
    assert sorted(r["raw"] for r in rejected) == ['{"session_id": 5}', "{not json"]
    assert all(
        r["source_topic"] == topic and r["reason"] == "invalid_flagged_message" for r in rejected
    )
    # Each partition's offset is committed just past the last message written; only
    # the transaction's commit marker lies beyond it.
    last: dict[int, int] = {}
    for partition, offset in [(s.source_partition, s.source_offset) for s in samples] + [
        (r["source_partition"], r["source_offset"]) for r in rejected
    ]:
        last[partition] = max(last.get(partition, -1), offset)
    committed = _committed(kafka_settings, config.consumer_group, topic, 2)
    assert committed == [last[p] + 1 for p in range(2)]
    assert report.committed == {f"{topic}:{p}": last[p] + 1 for p in range(2)}
    ends = _end_offsets(kafka_settings, topic, 2)
    assert all(0 <= ends[p] - committed[p] <= 1 for p in range(2))
    # Redis: pool counts and the minute counter.
    assert redis.hgetall(pool_key(redis_prefix)) == {
        "samples_total": "24",
        "labeled_high": "6",
        "labeled_medium": "4",
        "review_queue": "14",
    }
    assert redis.hget(stats_total_key(redis_prefix), "pool_samples_added") == "24"
    minute = int(time.time() * 1000) // 60_000
    minutes = [
        redis.hget(stats_minute_key(redis_prefix, m), "pool_samples_added")
        for m in (minute - 1, minute)
    ]
    assert sum(int(v or 0) for v in minutes) == 24
    assert 0 < redis.ttl(stats_minute_key(redis_prefix, minute - (minutes[1] is None))) <= 172_800

    # A replay (new group, same topic) rewrites the same objects: the pool does not grow.
    replay = PoolConsumer(
        kafka=kafka_settings,
        store=store,
        config=config.model_copy(
            update={"consumer_group": config.consumer_group + "-r", "flush_every_messages": 100}
        ),
        labels=INTENTS,
        topic=topic,
    )
    assert replay.run(idle_timeout_s=5).new_samples == 0
    assert len(store.read_samples().samples) == 24


def _end_offsets(kafka_settings: Any, topic: str, partitions: int) -> list[int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**kafka_settings.client_config(), "group.id": "probe-" + uuid.uuid4().hex})
    try:
        return [
            consumer.get_watermark_offsets(TopicPartition(topic, p), 30)[1]
            for p in range(partitions)
        ]
    finally:
        consumer.close()


def test_offsets_are_not_committed_when_the_write_fails(
    kafka_settings: Any, s3: Any, unique_topic: Any
) -> None:
    topic = unique_topic()
    _produce(
        kafka_settings, topic, [json.dumps(_flagged(i, correct=True)).encode() for i in range(4)]
    )
    config = PoolConfig(consumer_group=f"pool-{uuid.uuid4().hex[:8]}")
    broken = PoolStore(s3.model_copy(update={"bucket": f"missing-{uuid.uuid4().hex[:8]}"}))
    with pytest.raises(PoolError, match="cannot write"):
        PoolConsumer(
            kafka=kafka_settings,
            store=_WritableKeys(broken),
            config=config,
            labels=INTENTS,
            topic=topic,
        ).run(idle_timeout_s=3)
    assert _committed(kafka_settings, config.consumer_group, topic, 1) == [-1001]  # nothing
    # The same group, with S3 back: every message is still there and lands in the pool.
    store = PoolStore(s3)
    report = PoolConsumer(
        kafka=kafka_settings, store=store, config=config, labels=INTENTS, topic=topic
    ).run(idle_timeout_s=3)
    assert report.messages == 4
    assert len(store.read_samples().samples) == 8
    last = max(s.source_offset for s in store.read_samples().samples)
    assert _committed(kafka_settings, config.consumer_group, topic, 1) == [last + 1]


class _WritableKeys:
    """A store whose reads work (an empty pool) but whose writes hit a missing bucket."""

    def __init__(self, store: PoolStore) -> None:
        self._store = store

    def sample_keys(self) -> set[tuple[str, str]]:
        return set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_the_pool_keeps_no_personal_data(kafka_settings: Any, s3: Any, unique_topic: Any) -> None:
    """Contract section 6: a flagged message whose texts were not redacted (an older job,
    another producer) leaves no raw personal data in samples, edits, rejected records or
    the review export; a pattern from settings counts as <ID>."""
    from training.labelstudio import export_tasks

    raw_values = [
        "li.wei88@example.com",
        "13812345678",
        "4111 1111 1111 1111",
        "11010519491231002X",
        "ab12Cd34Ef56",
        "192.168.31.7",
        "VIP-204811",
    ]
    message = _flagged(7, correct=True)
    message["transcript"][0]["text"] = "我的手机13812345678, mail li.wei88@example.com"
    message["transcript"][1]["text"] = "We will call 13812345678 about card 4111 1111 1111 1111."
    message["transcript"][2]["text"] = (
        "身份证11010519491231002X https://x.example/r?token=ab12Cd34Ef56 from 192.168.31.7"
    )
    message["feedback"].append(
        {
            "request_id": f"{message['session_id']}-a",
            "kind": "edit",
            "rating": None,
            "corrected_text": "Member VIP-204811 will get a call at 13812345678.",
            "corrected_intent": None,
        }
    )
    broken = json.dumps({"session_id": "x", "transcript": "mail li.wei88@example.com"})
    topic = unique_topic(partitions=1)
    _produce(kafka_settings, topic, [json.dumps(message).encode(), broken.encode()])
    config = PoolConfig(
        consumer_group=f"pool-{uuid.uuid4().hex[:8]}",
        flush_every_messages=5,
        redact_patterns=(r"VIP-\d{6}",),
    )
    store = PoolStore(s3, config.prefix)
    report = PoolConsumer(
        kafka=kafka_settings, store=store, config=config, labels=INTENTS, topic=topic
    ).run(idle_timeout_s=5)
    assert report.messages == 2 and report.rejected == 1

    samples = store.read_samples().samples
    edits, _ = store.read_edits()
    everything = json.dumps(
        {
            "samples": [dataclasses.asdict(s) for s in samples],
            "edits": [dataclasses.asdict(e) for e in edits],
            "rejected": store.read_rejected(),
            "export": export_tasks(samples, include_labeled=True),
        },
        ensure_ascii=False,
        default=str,
    )
    assert samples and edits
    leaked = [v for v in raw_values if v in everything]
    assert not leaked, f"raw personal data in the pool: {leaked}"
    for placeholder in ("<PHONE>", "<EMAIL>", "<ID>", "<URL_SECRET>", "<IP>"):
        assert placeholder in everything


def test_untrusted_corrections_are_in_the_review_queue_and_its_export(s3: Any) -> None:
    """A user's corrections over the cap, and all of a user caught contradicting others,
    are offered to human labelers: ``read_samples`` and ``label export`` see them as
    review samples with a note, and ``pool status`` counts them."""
    from training.data import PoolSample
    from training.labelstudio import export_tasks

    def correction(user: str, n: int, text: str, label: str) -> PoolSample:
        return PoolSample(
            session_id=f"s-{user}-{n}", request_id=f"r{n}", text=text,
            predicted_intent="greeting", confidence=0.5, label=label,
            label_source="correction", quality=QUALITY_HIGH, user_id=user, ts_ms=1_000 + n,
        )  # fmt: skip

    honest = [correction(f"user-{n}", n, f"question {n}", "shipping") for n in range(3)]
    mallory = [correction("mallory", 100 + n, f"question {n}", "price") for n in range(3)]
    chatty = [correction("bob", 200 + n, f"bob asks {n}", "price") for n in range(25)]
    prefix = f"pool-{uuid.uuid4().hex[:8]}"
    PoolStore(s3, prefix).write_batch("t", 0, 0, 30, honest + mallory + chatty, [], [])

    assert PoolStore(s3, prefix).counts()["review_queue"] == 0  # no cap: as stored
    store = PoolStore(s3, prefix, max_corrections_per_user=20)
    review = [s for s in store.read_samples().samples if s.quality == QUALITY_REVIEW]
    assert {s.user_id for s in review} == {"mallory", "bob"}
    assert len(review) == 3 + 5 and all(s.note and s.label is None for s in review)
    assert store.counts()["review_queue"] == 8
    exported = export_tasks(store.read_samples().samples)
    assert len(exported) == 8

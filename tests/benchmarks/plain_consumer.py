"""The baseline of issue #11: the pipeline as a competent engineer writes it without Flink.

One process, one confluent-kafka consumer over every partition, state in dicts. The same
contract code as the job (``schemas.events.parse``, ``features.compute_features``, the
same rules and flagged message), event time per partition from accepted events only,
sessions closed when the slowest partition's watermark passes their gap, texts encoded
in batches at close through a text->vector cache, results to Redis (one pipeline per
poll), flagged messages and dead letters to Kafka, Parquet written at the end. No
checkpoints and no exactly-once: that is what the job adds.

    python tests/benchmarks/plain_consumer.py --topic T --sessions N --prefix P

prints one JSON line: records, seconds (first record to last session closed), events/s.
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def run(topic: str, sessions_expected: int, prefix: str, parquet_out: str | None) -> dict[str, Any]:
    from confluent_kafka import Consumer, Producer

    from connectors.settings import KafkaSettings, RedisSettings
    from features import build_flagged_message, compute_features
    from jobs.embedding import Embedder
    from jobs.streaming import load_context
    from schemas.events import ParseError, UserMessage, parse

    ctx = load_context()
    config, rules = ctx.job.feature_config(), ctx.job.rule_set()
    gap_ms = config.session_gap_ms  # type: ignore[attr-defined]
    out_of_order_ms = config.max_out_of_order_ms  # type: ignore[attr-defined]
    kafka = KafkaSettings.load()
    consumer = Consumer(
        {
            **kafka.client_config(),
            "group.id": f"plain-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    producer = Producer({**kafka.client_config(), "linger.ms": 20})
    redis = RedisSettings.load().client()
    # The job's encoder (backend) so the two compare like for like; all cores, as a
    # single-process program would use them.
    embedder = Embedder(
        batch_size=ctx.job.embedding_batch_size,
        backend=ctx.job.embedding_backend,
        export_dir=ctx.job.embedding_export_dir,
    )
    embedder.encode(["warm up"])
    text_vectors: dict[str, Any] = {}

    open_events: dict[str, list[Any]] = {}
    last_ts: dict[str, int] = {}
    deadlines: list[tuple[int, str]] = []  # (last ts + gap, session_id), lazily deleted
    partition_max: dict[int, int] = {}
    partitions = len(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    consumer.subscribe([topic])
    rows: list[dict[str, Any]] = []
    counters = {"events": 0, "dlq": 0, "sessions_closed": 0, "sessions_flagged": 0}
    records, started = 0, None

    def close(session_ids: list[str]) -> None:
        closing = [(sid, open_events.pop(sid)) for sid in session_ids]
        for sid in session_ids:
            last_ts.pop(sid, None)
        texts = {
            e.text for _, events in closing for e in events if isinstance(e, UserMessage)
        } - text_vectors.keys()
        if texts:
            ordered = sorted(texts)
            for text, vector in zip(ordered, embedder.encode(ordered), strict=True):
                text_vectors[text] = vector.astype("float64")
        pipe = redis.pipeline(transaction=False)
        for sid, events in closing:
            vectors = {
                e.event_id: text_vectors[e.text] for e in events if isinstance(e, UserMessage)
            }
            features = compute_features(events, config, rules, embeddings=vectors)
            rows.append(features.to_row())
            pipe.hset(f"{prefix}session:{sid}", mapping=features.to_redis_hash())
            pipe.expire(f"{prefix}session:{sid}", 7 * 86_400)
            counters["sessions_closed"] += 1
            if features.flagged:
                counters["sessions_flagged"] += 1
                message = build_flagged_message(events, features)
                producer.produce(f"{topic}-flagged", message.to_json().encode(), key=sid.encode())
        pipe.hset(f"{prefix}stats:total", mapping={k: str(v) for k, v in counters.items()})
        pipe.execute()
        producer.poll(0)

    while counters["sessions_closed"] < sessions_expected:
        batch = consumer.consume(500, timeout=1.0)
        for message in batch:
            if message.error():
                continue
            started = started or time.perf_counter()
            records += 1
            event = parse(message.value())
            if isinstance(event, ParseError) or event.ts_ms > message.timestamp()[1] + 600_000:
                counters["dlq"] += 1
                producer.produce(f"{topic}-dlq", message.value())
                continue
            counters["events"] += 1
            partition = message.partition()
            partition_max[partition] = max(partition_max.get(partition, event.ts_ms), event.ts_ms)
            sid = event.session_id
            if sid in last_ts and event.ts_ms - last_ts[sid] > gap_ms:
                close([sid])  # the same id after the gap: a new session
            open_events.setdefault(sid, []).append(event)
            if event.ts_ms >= last_ts.get(sid, -1):
                last_ts[sid] = event.ts_ms
                heapq.heappush(deadlines, (event.ts_ms + gap_ms, sid))
        if len(partition_max) < partitions:
            continue
        watermark = min(partition_max.values()) - out_of_order_ms
        due = []
        while deadlines and deadlines[0][0] <= watermark:
            deadline, sid = heapq.heappop(deadlines)
            if sid in last_ts and last_ts[sid] + gap_ms == deadline:
                due.append(sid)
        if due:
            close(list(dict.fromkeys(due)))  # equal timestamps push a session twice
    seconds = time.perf_counter() - (started or time.perf_counter())
    producer.flush(30)
    consumer.close()
    if parquet_out:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), parquet_out)
    return {
        "records": records,
        "seconds": seconds,
        "events_per_s": records / max(seconds, 1e-9),
        "distinct_texts_encoded": len(text_vectors),
        **counters,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topic", required=True)
    parser.add_argument("--sessions", type=int, required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--parquet-out")
    args = parser.parse_args()
    print(json.dumps(run(args.topic, args.sessions, args.prefix, args.parquet_out)))


if __name__ == "__main__":
    main()

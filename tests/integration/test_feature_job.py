"""The feature job on 5,000 generated sessions, streaming and backfill, against the contract.

One streaming run (Kafka -> Redis, Parquet on S3, flagged, DLQ; stop when idle with drain)
and one backfill of the same records as JSON Lines; every test asserts on their outputs
against ``tests/reference/contract_reference.py``, an independent batch computation of
the contract. The stream mixes every behaviour of the contract (see
``tests/reference/generator.py``), ~2% duplicate deliveries, out-of-order delivery within
the 10 s bound, invalid records, and two poison records (a 10 MiB text, a 900 KB binary
blob) that must not stop the job.

Embeddings are off in these two runs: at 5,000 sessions the sentence model would take
most of the time (about 30 user messages/s on a loaded 2-core machine). The embedding
path of repeated questions is checked end to end in test_feature_job_restart.py.
"""

from __future__ import annotations

import base64
import collections
import json
import time
from typing import Any

import pytest
from reference.contract_reference import (
    COLUMNS,
    compute_reference,
    redis_fields,
    utc_date,
)
from reference.generator import BASE_TS_MS, Delivery, GeneratedStream, InvalidLine, generate_stream
from reference.job_harness import JobSandbox, job_sandbox, running_job

from features.columns import FLAGGED_PARQUET_FIELDS
from features.redaction import PLACEHOLDERS

pytestmark = [pytest.mark.integration, pytest.mark.flink]

SESSIONS = 5_000
JOB_SETTINGS = {"embedding_enabled": False}
MAX_MESSAGE_BYTES = 12 * 2**20


def _poison_records() -> list[InvalidLine]:
    text = json.dumps(
        {
            "event_id": "poison-text",
            "event_type": "user_message",
            "schema_version": 1,
            "session_id": "poison",
            "user_id": "u-poison",
            "ts_ms": BASE_TS_MS + 60_000,
            "text": "spam " * (2 * 2**20),  # 10 MiB of valid JSON text
        }
    ).encode()
    blob = bytes((i * 7919 + 13) % 256 for i in range(900_000)).replace(b"\n", b"\xff") + b"\xfe"
    return [
        InvalidLine(text, "too_large", b"poison", "10 MiB text"),
        InvalidLine(blob, "invalid_json", None, "900 KB binary blob"),
    ]


@pytest.fixture(scope="module")
def stream() -> GeneratedStream:
    generated = generate_stream(SESSIONS, seed=20260301, personal_data=True)
    third = len(generated.deliveries) // 3
    for n, poison in enumerate(_poison_records()):
        generated.deliveries.insert(
            (n + 1) * third, Delivery(poison.raw, poison.key, invalid=poison)
        )
    return generated


@pytest.fixture(scope="module")
def reference(stream: GeneratedStream) -> Any:
    return compute_reference(stream.events)


@pytest.fixture(scope="module")
def sandbox(stack_endpoints: Any, kafka_admin: Any, tmp_path_factory: pytest.TempPathFactory):
    with job_sandbox(
        stack_endpoints,
        kafka_admin,
        tmp_path_factory.mktemp("feature-job"),
        "main",
        events_topic_config={"max.message.bytes": str(MAX_MESSAGE_BYTES)},
    ) as box:
        yield box


class StreamingOutputs:
    """What the streaming run left behind."""

    def __init__(
        self,
        box: JobSandbox,
        stream: GeneratedStream,
        positions: list[tuple[int, int]],
        seconds: float,
    ):
        self.positions = positions
        self.seconds = seconds
        self.rows = box.parquet_rows("flywheel/session_features")
        self.object_keys = box.object_keys("flywheel/session_features/")
        session_ids = {e["session_id"] for e in stream.events}
        self.hashes = box.session_hashes(session_ids)
        self.ttls = {
            sid: box.redis().ttl(f"{box.redis_prefix}session:{sid}")
            for sid in sorted(session_ids)[:20]
        }
        self.stats = box.stats()
        self.flagged = box.read_json_topic(box.flagged_topic)
        self.dead_letters = box.read_json_topic(box.dlq_topic)
        client = box.redis()
        self.redis_text = _everything_in_redis(client, box.redis_prefix)
        self.models = {
            key[len(box.redis_prefix) + len("model:") :]: {
                k: int(v) for k, v in client.hgetall(key).items()
            }
            for key in client.scan_iter(match=f"{box.redis_prefix}model:*")
        }


def _everything_in_redis(client: Any, prefix: str) -> str:
    """Every key and value under ``prefix``, of any type, as one text to search."""
    parts: list[str] = []
    for key in client.scan_iter(match=f"{prefix}*"):
        kind = client.type(key)
        parts.append(key)
        if kind == "hash":
            parts += [f"{k}={v}" for k, v in client.hgetall(key).items()]
        elif kind == "string":
            parts.append(client.get(key) or "")
        elif kind == "list":
            parts += client.lrange(key, 0, -1)
        elif kind == "set":
            parts += client.smembers(key)
        elif kind == "zset":
            parts += client.zrange(key, 0, -1)
        elif kind == "stream":
            parts += [str(fields) for _, fields in client.xrange(key)]
    return "\n".join(parts)


@pytest.fixture(scope="module")
def streaming(sandbox: JobSandbox, stream: GeneratedStream) -> StreamingOutputs:
    """Produce the whole stream, run the job until idle, drain, and collect every output."""
    positions = sandbox.produce(
        ((d.key, d.raw) for d in stream.deliveries), max_bytes=MAX_MESSAGE_BYTES
    )
    started = time.monotonic()
    with running_job(sandbox.context(**JOB_SETTINGS)) as run:
        run.stop_when_idle(idle_s=4, drain=True)
    seconds = time.monotonic() - started
    print(f"\nstreaming run: {len(stream.deliveries)} records in {seconds:.0f} s")
    return StreamingOutputs(sandbox, stream, positions, seconds)


def _row_key(row: dict[str, Any]) -> tuple[str, int]:
    return (row["session_id"], row["session_start_ms"])


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {name: (list(row[name]) if name == "reasons" else row[name]) for name in COLUMNS}


def _assert_rows_equal_reference(rows: list[dict[str, Any]], reference: Any) -> None:
    counts = collections.Counter(_row_key(r) for r in rows)
    duplicated = [k for k, n in counts.items() if n > 1]
    missing = sorted(set(reference.rows) - set(counts))
    extra = sorted(set(counts) - set(reference.rows))
    assert not duplicated, (
        f"{len(duplicated)} sessions written more than once, e.g. {duplicated[:3]}"
    )
    assert not missing, f"{len(missing)} sessions missing, e.g. {missing[:3]}"
    assert not extra, f"{len(extra)} sessions not in the reference, e.g. {extra[:3]}"
    wrong = collections.Counter()
    example: dict[str, Any] = {}
    for row in rows:
        expected = reference.rows[_row_key(row)]
        for name, value in _plain(row).items():
            if value != expected[name]:
                wrong[name] += 1
                example.setdefault(name, (_row_key(row), value, expected[name]))
    assert not wrong, f"columns differing from the reference (count, example): {wrong} {example}"


# --- the stream itself ----------------------------------------------------------------------


def test_generated_stream_covers_the_contract(stream: GeneratedStream, reference: Any) -> None:
    rows = list(reference.rows.values())
    assert len({r["session_id"] for r in rows}) == SESSIONS
    assert len(rows) > SESSIONS, "some session_ids must carry a second session"
    share = stream.stats["duplicates"] / stream.stats["events"]
    assert 0.01 < share < 0.03
    for rule in (
        "cta_ignored",
        "stuck_loop",
        "abandoned",
        "explicit_negative",
        "uncertain_and_corrected",
    ):
        assert sum(rule in r["reasons"] for r in rows) > 50, rule
    for column in (
        "cta_clicked_count",
        "cta_not_clicked_count",
        "order_count",
        "carted",
        "repeated_question_count",
        "fsm_transitions",
        "long_silence_count",
        "low_confidence_count",
        "correction_count",
        "negative_feedback_count",
        "positive_feedback_count",
        "slow_response_count",
        "fsm_stalled",
    ):
        assert sum(bool(r[column]) for r in rows) > 50, column
    assert any(r["min_intent_confidence"] is None for r in rows)
    assert any(not r["flagged"] for r in rows)
    assert len({utc_date(r["session_end_ms"]) for r in rows}) >= 2
    # Out of order, never beyond the bound: when delivered, nothing 9 s later was seen.
    highest = 0
    out_of_order = 0
    for delivery in stream.deliveries:
        if delivery.event is not None:
            ts = delivery.event["ts_ms"]
            assert ts > highest - 10_000
            out_of_order += ts < highest
            highest = max(highest, ts)
    assert out_of_order > 1_000


# --- streaming ---------------------------------------------------------------------------


def test_parquet_has_every_closed_session_once_equal_to_the_reference(
    streaming: StreamingOutputs, reference: Any
) -> None:
    _assert_rows_equal_reference(streaming.rows, reference)


def test_parquet_is_partitioned_by_the_utc_date_of_session_end(streaming: StreamingOutputs) -> None:
    for row in streaming.rows:
        assert row["dt"] == utc_date(row["session_end_ms"])
    folders = {key.split("/")[2] for key in streaming.object_keys}
    assert folders == {f"dt={d}" for d in {r["dt"] for r in streaming.rows}}
    assert all(not key.split("/")[-1].startswith(".") for key in streaming.object_keys), (
        "in-progress files left behind"
    )


def test_redis_holds_the_last_session_of_each_session_id_closed(
    streaming: StreamingOutputs, reference: Any
) -> None:
    mismatched = {}
    for session_id, expected_row in reference.last_row_by_session_id.items():
        fields = streaming.hashes[session_id]
        assert fields.get("status") == "closed", (session_id, fields.get("status"))
        assert int(fields["updated_ms"]) > 0 and fields.get("version")
        expected = redis_fields(expected_row)
        for name, value in expected.items():
            got = fields.get(name)
            if name == "min_intent_confidence" and value and got:
                same = float(got) == float(value)
            else:
                same = got == value
            if not same:
                mismatched.setdefault(name, (session_id, got, value))
    assert not mismatched, mismatched
    # Every write refreshes the 7-day TTL.
    assert all(6 * 86_400 < ttl <= 7 * 86_400 for ttl in streaming.ttls.values()), streaming.ttls


def test_flagged_sessions_are_published_exactly_once_read_committed(
    streaming: StreamingOutputs, reference: Any
) -> None:
    keys = collections.Counter(
        (m["session_id"], m["session_start_ms"]) for _, m in streaming.flagged
    )
    assert not [k for k, n in keys.items() if n > 1], "a flagged session was published twice"
    assert set(keys) == set(reference.flagged)
    for key, message in streaming.flagged:
        assert key == message["session_id"]
        expected = reference.flagged[(message["session_id"], message["session_start_ms"])]
        assert message == expected


def test_dead_letters_carry_reason_raw_and_source_position(
    sandbox: JobSandbox, stream: GeneratedStream, streaming: StreamingOutputs
) -> None:
    from schemas import validation_errors

    by_offset = {m["source_offset"]: m for _, m in streaming.dead_letters}
    assert len(by_offset) == len(streaming.dead_letters), "a record was dead-lettered twice"
    invalid = stream.invalid
    assert len(streaming.dead_letters) == len(invalid)  # no late events in this stream
    for index, line in invalid:
        partition, offset = streaming.positions[index]
        message = by_offset[offset]
        assert message["reason"] == line.reason, line.name
        assert message["source_topic"] == sandbox.events_topic
        assert message["source_partition"] == partition
        assert isinstance(message["rejected_at_ms"], int)
        assert not validation_errors("dlq_message.v1", message), line.name
        if message.get("raw_truncated"):
            # A poison record keeps its beginning; its source position points at the whole.
            assert len(line.raw) > 100_000
            assert message["raw_size_bytes"] == len(line.raw)
            expected_start = (
                base64.b64encode(line.raw).decode()
                if message.get("raw_encoding") == "base64"
                else line.raw.decode()
            )
            assert expected_start.startswith(message["raw"]) and len(message["raw"]) > 1_000
        elif message.get("raw_encoding") == "base64":
            assert base64.b64decode(message["raw"]) == line.raw
        else:
            assert message["raw"].encode() == line.raw


def test_poison_records_did_not_stop_the_job(
    stream: GeneratedStream, streaming: StreamingOutputs, reference: Any
) -> None:
    reasons = {m["source_offset"]: m["reason"] for _, m in streaming.dead_letters}
    poisons = [(i, line) for i, line in stream.invalid if len(line.raw) > 100_000]
    assert len(poisons) == 2
    for index, line in poisons:
        assert reasons[streaming.positions[index][1]] == line.reason
    # Records after the poisons were processed: the last sessions are all there.
    assert len(streaming.rows) == len(reference.rows)


def test_counters_match_the_reference(
    stream: GeneratedStream, streaming: StreamingOutputs, reference: Any
) -> None:
    stats = streaming.stats
    invalid_reasons = collections.Counter(line.reason for _, line in stream.invalid)
    valid_deliveries = [d for d in stream.deliveries if d.event is not None]
    rows = list(reference.rows.values())
    flagged_reasons = collections.Counter(r for row in rows for r in row["reasons"])
    feedback = [e for e in stream.events if e["event_type"] == "feedback"]
    expected = {
        "events": len(valid_deliveries),
        "duplicates": sum(d.duplicate for d in valid_deliveries),
        "dlq": sum(invalid_reasons.values()),
        **{f"dlq:{reason}": n for reason, n in invalid_reasons.items()},
        "sessions_closed": len(rows),
        "sessions_flagged": reference.flagged_count,
        **{f"flagged:{reason}": n for reason, n in flagged_reasons.items()},
        "explicit_signals": len(feedback),
        "negative_feedback": sum(
            1
            for f in feedback
            if f["kind"] in ("thumbs_down", "edit", "correction")
            or (f["kind"] == "rating" and f["rating"] <= 2)
        ),
    }
    assert {k: stats.get(k, 0) for k in expected} == expected
    assert "dlq:late_event" not in stats

    models: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for row in rows:
        model = models[row["model_version"] or "unknown"]
        model["sessions"] += 1
        model["negative_sessions"] += row["negative_feedback_count"] > 0
        model["flagged_sessions"] += row["flagged"]
    assert streaming.models == {
        name: {k: v for k, v in counts.items()}
        | {k: 0 for k in ("sessions", "negative_sessions", "flagged_sessions") if k not in counts}
        for name, counts in models.items()
    }


# --- backfill ------------------------------------------------------------------------------


def test_no_personal_data_leaves_the_job(
    stream: GeneratedStream, streaming: StreamingOutputs, backfill: dict[str, Any]
) -> None:
    """Contract section 6: texts are redacted in the flagged topic and Parquet; Redis holds
    no text. The raw events and dead-letter topics are the only places raw text is kept."""
    values = set(stream.personal_values)
    assert len(values) >= 8, "the generated stream should carry every kind of personal data"
    flagged_text = json.dumps([m for _, m in streaming.flagged], ensure_ascii=False)
    backfill_text = json.dumps(backfill["flagged"], ensure_ascii=False, default=str)
    for store, text in (
        ("flagged topic", flagged_text),
        ("backfill flagged_sessions/", backfill_text),
        ("Redis", streaming.redis_text),
    ):
        leaked = sorted(v for v in values if v in text)
        assert not leaked, f"{store} holds raw personal data: {leaked}"
    placeholders = {p for p in PLACEHOLDERS.values() if p in flagged_text}
    assert placeholders == set(PLACEHOLDERS.values()), "every kind was redacted somewhere"


@pytest.fixture(scope="module")
def backfill(
    sandbox: JobSandbox, stream: GeneratedStream, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The same records as JSON Lines under an S3 prefix (two files and a non-JSONL file)."""
    from jobs.commands import run_backfill

    lines = [d.raw for d in stream.deliveries]
    half = len(lines) // 2
    sandbox.put_object("input/part-0.jsonl", b"\n".join(lines[:half]) + b"\n")
    sandbox.put_object("input/part-1.jsonl", b"\n".join(lines[half:]) + b"\n")
    sandbox.put_object("input/README.txt", b"not events: must be ignored\n{broken")
    ctx = sandbox.context(**JOB_SETTINGS)
    started = time.monotonic()
    run_backfill(ctx, f"s3://{sandbox.bucket}/input/", f"s3://{sandbox.bucket}/backfill")
    seconds = time.monotonic() - started
    print(f"\nbackfill: {len(lines)} lines in {seconds:.0f} s")
    dead_letters = []
    for key in sandbox.object_keys("backfill/dlq/"):
        if key.split("/")[-1].startswith("."):
            continue
        dead_letters += [json.loads(line) for line in sandbox.get_object(key).splitlines() if line]
    return {
        "rows": sandbox.parquet_rows("backfill/session_features"),
        "flagged": sandbox.parquet_rows("backfill/flagged_sessions"),
        "flagged_schema": sandbox.parquet_table("backfill/flagged_sessions").schema,
        "dead_letters": dead_letters,
        "dlq_keys": sandbox.object_keys("backfill/dlq/"),
        "seconds": seconds,
    }


def test_backfill_rows_equal_the_reference(backfill: dict[str, Any], reference: Any) -> None:
    _assert_rows_equal_reference(backfill["rows"], reference)
    for row in backfill["rows"]:
        assert row["dt"] == utc_date(row["session_end_ms"])


def test_backfill_rows_equal_the_streaming_rows(
    backfill: dict[str, Any], streaming: StreamingOutputs
) -> None:
    def keyed(rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
        return {_row_key(r): {**_plain(r), "dt": r["dt"]} for r in rows}

    assert keyed(backfill["rows"]) == keyed(streaming.rows)


def test_backfill_flagged_sessions_equal_the_reference(
    backfill: dict[str, Any], reference: Any
) -> None:
    """flagged_sessions/ holds the flagged message's fields as typed (nested) columns."""
    rows = backfill["flagged"]
    keys = collections.Counter(_row_key(r) for r in rows)
    assert set(keys) == set(reference.flagged) and max(keys.values()) == 1
    for row in rows:
        expected = reference.flagged[_row_key(row)]
        for name, _ in FLAGGED_PARQUET_FIELDS:
            assert row[name] == expected.get(name), (name, row[name], expected.get(name))
        assert row["dt"] == utc_date(row["session_end_ms"])


def test_backfill_flagged_sessions_have_typed_nested_columns(backfill: dict[str, Any]) -> None:
    import pyarrow as pa

    schema = backfill["flagged_schema"]
    reasons = schema.field("reasons").type
    assert pa.types.is_list(reasons) and reasons.value_type == pa.string()
    features = schema.field("features").type
    assert pa.types.is_struct(features)
    assert [features.field(i).name for i in range(features.num_fields)] == list(COLUMNS)
    assert features.field("min_intent_confidence").type == pa.float64()
    for name, first in (("transcript", "ts_ms"), ("feedback", "request_id")):
        kind = schema.field(name).type
        assert pa.types.is_list(kind) and pa.types.is_struct(kind.value_type)
        assert kind.value_type.field(0).name == first
    assert schema.field("transcript").type.value_type.field("ts_ms").type == pa.int64()
    assert "message" not in schema.names


def test_backfill_dead_letters_name_every_invalid_line(
    sandbox: JobSandbox, stream: GeneratedStream, backfill: dict[str, Any]
) -> None:
    assert all(
        key.endswith(".jsonl")
        for key in backfill["dlq_keys"]
        if not key.split("/")[-1].startswith(".")
    )
    got = collections.Counter(m["reason"] for m in backfill["dead_letters"])
    expected = collections.Counter(line.reason for _, line in stream.invalid)
    assert got == expected
    texts = {m["raw"] for m in backfill["dead_letters"] if m.get("raw_encoding") != "base64"}
    for _, line in stream.invalid:
        try:
            text = line.raw.decode()
        except UnicodeDecodeError:
            continue  # read as text by the file source: the bytes are not kept as they were
        if len(line.raw) < 100_000:
            assert text in texts, line.name
    for message in backfill["dead_letters"]:
        assert message["source_topic"].startswith(f"s3://{sandbox.bucket}/input/part-")

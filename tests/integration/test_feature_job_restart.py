"""Upgrade path: stop with a savepoint in the middle of open sessions, resume, drain.

The events topic has three partitions. The first run reads half of the stream and is
stopped with a savepoint *without* draining, so many sessions are open in its state; the
second run starts from that savepoint, reads the rest and drains. Every closed session
must land exactly once in Parquet and on the flagged topic, every dead letter exactly
once, and nothing may be missing.

These runs keep the job's default embeddings on: the reference uses the same sentence
model (offline) for repeated questions, and the test asserts that some repeats were found
only through embeddings and that no compared pair of texts lies near the 0.85 threshold.
"""

from __future__ import annotations

import collections
from typing import Any

import pytest
from reference.contract_reference import compute_reference, model_similarity, split_into_sessions
from reference.generator import GeneratedStream, generate_stream
from reference.job_harness import JobSandbox, job_sandbox, running_job

pytestmark = [pytest.mark.integration, pytest.mark.flink]

SESSIONS = 200
SPAN_MS = 2 * 3600 * 1000  # dense: dozens of sessions open at any moment
THRESHOLD_MARGIN = 0.01


@pytest.fixture(scope="module")
def stream() -> GeneratedStream:
    return generate_stream(SESSIONS, seed=4242, span_ms=SPAN_MS)


@pytest.fixture(scope="module")
def reference(stream: GeneratedStream) -> Any:
    similarity = model_similarity()
    similarity.prepare(stream.user_texts())
    return compute_reference(stream.events, similarity=similarity)


@pytest.fixture(scope="module")
def sandbox(stack_endpoints: Any, kafka_admin: Any, tmp_path_factory: pytest.TempPathFactory):
    # Three partitions: the job keeps one watermark per partition, so reading a backlog
    # across partitions must not make events late.
    with job_sandbox(
        stack_endpoints, kafka_admin, tmp_path_factory.mktemp("restart"), "restart", partitions=3
    ) as box:
        yield box


def _snapshot(box: JobSandbox, session_ids: set[str]) -> dict[str, Any]:
    return {
        "rows": box.parquet_rows("flywheel/session_features"),
        "flagged": box.read_json_topic(box.flagged_topic),
        "dead_letters": box.read_json_topic(box.dlq_topic),
        "hashes": box.session_hashes(session_ids),
    }


@pytest.fixture(scope="module")
def runs(sandbox: JobSandbox, stream: GeneratedStream) -> dict[str, Any]:
    deliveries = stream.deliveries
    cut = len(deliveries) // 2
    session_ids = {e["session_id"] for e in stream.events}
    positions = sandbox.produce((d.key, d.raw) for d in deliveries[:cut])

    with running_job(sandbox.context()) as run:
        savepoint = run.stop_when_idle(idle_s=3, drain=False)
    first = _snapshot(sandbox, session_ids)

    positions += sandbox.produce((d.key, d.raw) for d in deliveries[cut:])
    with running_job(sandbox.context(), savepoint=savepoint) as run:
        run.stop_when_idle(idle_s=3, drain=True)
    final = _snapshot(sandbox, session_ids)
    return {
        "cut": cut,
        "savepoint": savepoint,
        "first": first,
        "final": final,
        "positions": positions,
    }


def _keys(rows: list[dict[str, Any]]) -> collections.Counter:
    return collections.Counter((r["session_id"], r["session_start_ms"]) for r in rows)


def test_reference_exercises_embeddings_away_from_the_threshold(reference: Any) -> None:
    log = reference.similarity_log
    assert log.repeats_by_embedding_only > 0, "no repeat found through embeddings alone"
    assert log.closest_to(0.85) > THRESHOLD_MARGIN, (
        f"a compared pair is within {THRESHOLD_MARGIN} of the threshold: results would flake"
    )


def test_savepoint_was_taken_with_sessions_open(
    runs: dict[str, Any], stream: GeneratedStream, reference: Any
) -> None:
    assert runs["savepoint"].startswith("file:")
    before_cut = {d.event["event_id"] for d in stream.deliveries[: runs["cut"]] if d.event}
    straddling = []
    for session in split_into_sessions(stream.events, 30 * 60_000):
        ids = {e["event_id"] for e in session}
        if ids & before_cut and ids - before_cut:
            straddling.append(
                (session[0]["session_id"], session[0]["ts_ms"], len(ids & before_cut))
            )
    assert len(straddling) >= 10, "the stop should interrupt many open sessions"
    first_keys = _keys(runs["first"]["rows"])
    assert first_keys and max(first_keys.values()) == 1
    for session_id, start, _ in straddling:
        assert (session_id, start) not in first_keys
    # The online store showed them open, with the events seen so far.
    latest_open = [
        s for s in straddling if reference.last_row_by_session_id[s[0]]["session_start_ms"] == s[1]
    ]
    for session_id, _, seen in latest_open:
        fields = runs["first"]["hashes"][session_id]
        assert fields["status"] == "open", session_id
        assert int(fields["event_count"]) == seen, session_id


def test_every_session_lands_exactly_once_across_the_restart(
    runs: dict[str, Any], reference: Any
) -> None:
    rows = runs["final"]["rows"]
    keys = _keys(rows)
    assert max(keys.values()) == 1, [k for k, n in keys.items() if n > 1][:5]
    assert set(keys) == set(reference.rows)
    for row in rows:
        expected = reference.rows[(row["session_id"], row["session_start_ms"])]
        got = {name: (list(row[name]) if name == "reasons" else row[name]) for name in expected}
        assert got == expected


def test_flagged_sessions_exactly_once_across_the_restart(
    runs: dict[str, Any], reference: Any
) -> None:
    messages = [m for _, m in runs["final"]["flagged"]]
    keys = _keys(messages)
    assert max(keys.values()) == 1
    assert set(keys) == set(reference.flagged)
    for message in messages:
        assert message == reference.flagged[(message["session_id"], message["session_start_ms"])]
    # What the first run published was committed once and is not published again.
    first = _keys([m for _, m in runs["first"]["flagged"]])
    assert first and set(first) <= set(keys)


def test_dead_letters_exactly_once_across_the_restart(
    runs: dict[str, Any], stream: GeneratedStream
) -> None:
    letters = [m for _, m in runs["final"]["dead_letters"]]
    positions = [(m["source_partition"], m["source_offset"]) for m in letters]
    assert len(positions) == len(set(positions))
    expected = {runs["positions"][i]: line.reason for i, line in stream.invalid}
    assert {(m["source_partition"], m["source_offset"]): m["reason"] for m in letters} == expected


def test_redis_ends_with_the_last_session_of_each_id_closed(
    runs: dict[str, Any], reference: Any
) -> None:
    for session_id, row in reference.last_row_by_session_id.items():
        fields = runs["final"]["hashes"][session_id]
        assert fields["status"] == "closed"
        assert int(fields["session_start_ms"]) == row["session_start_ms"]
        assert int(fields["event_count"]) == row["event_count"]
        assert fields["reasons"] == ",".join(row["reasons"])
        assert int(fields["repeated_question_count"]) == row["repeated_question_count"]

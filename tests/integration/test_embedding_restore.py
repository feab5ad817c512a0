"""Vectors are not Flink state: a job restored from a savepoint encodes them again.

The session operator keeps a key's vectors in operator memory, not in its pickled state
(jobs/operators.py, ``_load``). This test stops the streaming job with a savepoint while
sessions are open, their early questions encoded, then resumes it on the rest of the
stream: the later questions of those sessions are compared with the early ones, whose
vectors the restored job must compute again. Every closed session must equal the
contract reference computed with the packaged model.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterator
from typing import Any

import pytest
from reference.contract_reference import (
    assert_rows_equal_reference,
    compute_reference,
    model_similarity,
)
from reference.generator import generate_stream
from reference.job_harness import JobSandbox, job_sandbox, running_job

pytestmark = [pytest.mark.integration, pytest.mark.flink]

THRESHOLD_MARGIN = 0.01


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    generated = generate_stream(
        80, seed=4242, invalid=False, duplicate_share=0.0, span_ms=600_000
    ).events  # started within 10 minutes: many sessions are open at the savepoint
    return sorted(generated, key=lambda e: (e["ts_ms"], e["event_id"]))


@pytest.fixture(scope="module")
def split_ms(events: list[dict[str, Any]]) -> int:
    return int(events[len(events) // 2]["ts_ms"])


@pytest.fixture(scope="module")
def sandbox(
    stack_endpoints: Any, kafka_admin: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JobSandbox]:
    with job_sandbox(
        stack_endpoints, kafka_admin, tmp_path_factory.mktemp("restore-job"), "vecrestore"
    ) as box:
        yield box


def _produce(box: JobSandbox, events: list[dict[str, Any]]) -> None:
    box.produce(
        (e["session_id"].encode(), json.dumps(e, ensure_ascii=False).encode()) for e in events
    )


@pytest.fixture(scope="module")
def rows(sandbox: JobSandbox, events: list[dict[str, Any]], split_ms: int) -> list[dict[str, Any]]:
    _produce(sandbox, [e for e in events if e["ts_ms"] < split_ms])
    with running_job(sandbox.context()) as run:
        savepoint = run.stop_when_idle(idle_s=3, drain=False)  # sessions stay open
    _produce(sandbox, [e for e in events if e["ts_ms"] >= split_ms])
    with running_job(sandbox.context(), savepoint=savepoint) as run:
        run.stop_when_idle(idle_s=3, drain=True)
    return sandbox.parquet_rows("flywheel/session_features")


def test_sessions_across_the_restore_equal_the_reference(
    rows: list[dict[str, Any]], events: list[dict[str, Any]], split_ms: int
) -> None:
    reference = compute_reference(events, similarity=model_similarity())
    assert reference.similarity_log.repeats_by_embedding_only >= 1
    assert reference.similarity_log.closest_to(0.85) >= THRESHOLD_MARGIN
    # Sessions asked questions on both sides of the savepoint.
    asked: dict[str, set[bool]] = collections.defaultdict(set)
    for e in events:
        if e["event_type"] == "user_message":
            asked[e["session_id"]].add(e["ts_ms"] >= split_ms)
    assert sum(sides == {True, False} for sides in asked.values()) >= 20

    assert_rows_equal_reference(rows, reference)

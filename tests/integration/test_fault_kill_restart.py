"""Fault: ``flywheel run`` killed with SIGKILL mid-stream, then started again, unchanged.

1,000 sessions with invalid lines among them (a rating of 7 from 30 h ahead, a ``ts_ms``
sent as a string, bad JSON, ...) and valid events that claim a time days after they were
sent (``future_event``). The first ``flywheel run`` is killed, process group and JVM,
as an OOM kill or a reboot would, once it has completed checkpoints and written output.
The same command started again must resume from the newest retained checkpoint; after
it every closed session is in Parquet and on the flagged topic exactly once, equal to an
independent computation of the contract, the dead-letter topic holds exactly the
rejected events once each, and the counters equal the true counts.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import time
from typing import Any

import pytest
from reference.contract_reference import compute_reference
from reference.generator import GeneratedStream, generate_stream
from reference.job_harness import JobSandbox, job_sandbox

pytestmark = [pytest.mark.integration, pytest.mark.flink, pytest.mark.slow]

SESSIONS = 1_000
SPAN_MS = 3 * 3600 * 1000
FUTURE_EVENTS = 5
DEADLINE_S = 600.0


@pytest.fixture(scope="module")
def stream() -> GeneratedStream:
    return generate_stream(SESSIONS, seed=1010, span_ms=SPAN_MS)


@pytest.fixture(scope="module")
def reference(stream: GeneratedStream) -> Any:
    return compute_reference(stream.events)


@pytest.fixture(scope="module")
def sandbox(stack_endpoints: Any, kafka_admin: Any, tmp_path_factory: pytest.TempPathFactory):
    with job_sandbox(
        stack_endpoints, kafka_admin, tmp_path_factory.mktemp("kill"), "kill", partitions=3
    ) as box:
        yield box


def _future_events(now_ms: int) -> list[tuple[bytes, bytes]]:
    """Valid events whose ts_ms is a day after they are sent: rejected, never counted."""
    records = []
    for i in range(FUTURE_EVENTS):
        event = {
            "event_id": f"future-{i}",
            "event_type": "user_message",
            "schema_version": 1,
            "session_id": f"future-session-{i}",
            "user_id": "u-wrong-clock",
            "ts_ms": now_ms + 86_400_000,
            "text": "hello from tomorrow",
        }
        records.append((event["session_id"].encode(), json.dumps(event).encode()))
    return records


@pytest.fixture(scope="module")
def runs(sandbox: JobSandbox, stream: GeneratedStream, tmp_path_factory: pytest.TempPathFactory):
    logs = tmp_path_factory.mktemp("kill-logs")
    positions = sandbox.produce((d.key, d.raw) for d in stream.deliveries)
    future_positions = sandbox.produce(_future_events(int(time.time() * 1000)))

    first = sandbox.flywheel_run(logs / "first.log")
    deadline = time.monotonic() + DEADLINE_S
    try:
        # Kill once checkpoints completed and output was committed, mid-stream.
        while not (
            sandbox.completed_checkpoints() >= 1
            and sandbox.object_keys("flywheel/session_features/")
        ):
            assert first.poll() is None, (logs / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the first run never checkpointed"
            time.sleep(0.5)
        time.sleep(3)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
    killed_at = time.monotonic()
    written_before = sandbox.parquet_rows("flywheel/session_features")

    second = sandbox.flywheel_run(logs / "second.log", "--stop-when-idle", "5")
    try:
        second.wait(DEADLINE_S)
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
    output = (logs / "second.log").read_text()
    assert second.returncode == 0, output[-3000:]
    return {
        "positions": positions,
        "future_positions": future_positions,
        "written_before": written_before,
        "second_output": output,
        "recovery_s": time.monotonic() - killed_at,
        "rows": sandbox.parquet_rows("flywheel/session_features"),
        "flagged": sandbox.read_json_topic(sandbox.flagged_topic),
        "dead_letters": sandbox.read_json_topic(sandbox.dlq_topic),
        "stats": sandbox.stats(),
    }


def _keys(rows: list[dict[str, Any]]) -> collections.Counter[tuple[str, int]]:
    return collections.Counter((r["session_id"], r["session_start_ms"]) for r in rows)


def test_the_restart_resumes_from_the_retained_checkpoint(runs: dict[str, Any]) -> None:
    assert "resuming from the newest retained checkpoint" in runs["second_output"]
    # The kill came mid-stream: some sessions were written before it, not all.
    assert runs["written_before"]
    print(f"kill -> restart -> idle stop took {runs['recovery_s']:.1f} s")


def test_every_closed_session_exactly_once_equal_to_the_reference(
    runs: dict[str, Any], reference: Any
) -> None:
    keys = _keys(runs["rows"])
    assert max(keys.values()) == 1, [k for k, n in keys.items() if n > 1][:5]
    assert set(keys) == set(reference.rows)
    for row in runs["rows"]:
        expected = reference.rows[(row["session_id"], row["session_start_ms"])]
        got = {name: (list(row[name]) if name == "reasons" else row[name]) for name in expected}
        assert got == expected


def test_flagged_sessions_exactly_once(runs: dict[str, Any], reference: Any) -> None:
    messages = [m for _, m in runs["flagged"]]
    keys = _keys(messages)
    assert max(keys.values()) == 1
    assert set(keys) == set(reference.flagged)


def test_dead_letters_are_exactly_the_rejected_events_once(
    runs: dict[str, Any], stream: GeneratedStream
) -> None:
    letters = [m for _, m in runs["dead_letters"]]
    got = collections.Counter(
        ((m["source_partition"], m["source_offset"]), m["reason"]) for m in letters
    )
    assert max(got.values()) == 1
    expected = {runs["positions"][i]: line.reason for i, line in stream.invalid}
    expected.update({p: "future_event" for p in runs["future_positions"]})
    assert dict(got.keys()) == expected
    assert "late_event" not in {m["reason"] for m in letters}


def test_counters_equal_the_true_counts(
    runs: dict[str, Any], stream: GeneratedStream, reference: Any
) -> None:
    stats = runs["stats"]
    rejected = len(stream.invalid) + FUTURE_EVENTS
    accepted_records = len(stream.deliveries) - len(stream.invalid)
    assert stats["events"] == accepted_records
    assert stats["dlq"] == rejected
    assert stats["dlq:future_event"] == FUTURE_EVENTS
    assert stats["sessions_closed"] == len(reference.rows)
    assert stats.get("sessions_flagged", 0) == len(reference.flagged)


def test_the_terminal_shows_flywheels_lines_and_the_jvm_logs_go_to_the_state_dir(
    runs: dict[str, Any],
) -> None:
    from deploy.settings import StackSettings

    jvm_lines = [
        line for line in runs["second_output"].splitlines()
        if re.search(r"\b(INFO|WARN|DEBUG)\s+(org\.apache|akka|org\.jboss)", line)
    ]  # fmt: skip
    assert not jvm_lines, jvm_lines[:5]
    logs = sorted(
        (StackSettings.load().state_dir / "logs").glob("flink-*.log"),
        key=lambda p: p.stat().st_mtime,
    )
    assert logs and "org.apache.flink" in logs[-1].read_text(errors="replace")

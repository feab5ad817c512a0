"""Faults on a standalone Flink cluster (JobManager + TaskManager with two slots).

The same job as ``flywheel run``, submitted with ``flywheel run --jobmanager``, on a
stack of its own (its own state directory: the shared stack is not touched):

* **TaskManager killed.** Mid-stream, once checkpoints completed and output was
  committed, the TaskManager is killed with SIGKILL and started again. The job restarts
  from its last completed checkpoint on the new TaskManager.
* **Rescale.** A run at parallelism 1 is stopped with a savepoint mid-stream (open
  sessions stay open in it); ``flywheel run --jobmanager --set parallelism=2`` resumes
  from it at parallelism 2 on the cluster's two slots.

After each: every closed session exactly once in Parquet and on the flagged topic, equal
to an independent computation of the contract; the dead-letter topic holds exactly the
rejected events once each; the counters equal the true counts.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from reference.contract_reference import compute_reference
from reference.generator import GeneratedStream, generate_stream
from reference.job_harness import JobSandbox, job_sandbox

from deploy import procs
from deploy.stack import StackEndpoints, ensure_up, stack_status, stop_stack

pytestmark = [pytest.mark.integration, pytest.mark.flink, pytest.mark.slow]

SESSIONS = 1_000
SPAN_MS = 3 * 3600 * 1000
DEADLINE_S = 600.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, StackEndpoints]]:
    state_dir = tmp_path_factory.mktemp("cluster") / "state"
    endpoints = ensure_up(state_dir, flink_cluster=True)
    try:
        yield state_dir, endpoints
    finally:
        stop_stack(state_dir)


@pytest.fixture(scope="module")
def admin(cluster: tuple[Path, StackEndpoints]) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient(cluster[1].kafka_settings().client_config())


def _jobmanager(endpoints: StackEndpoints) -> str:
    assert endpoints.flink_rest_url is not None
    return endpoints.flink_rest_url.removeprefix("http://")


def _cancel_unfinished_jobs(endpoints: StackEndpoints) -> None:
    """Cancel what a failed scenario left running, so the next one has the cluster's slots."""
    import json
    import urllib.request

    base = endpoints.flink_rest_url
    assert base is not None
    with urllib.request.urlopen(f"{base}/jobs", timeout=30) as response:
        jobs = json.loads(response.read())["jobs"]
    for job in jobs:
        if job["status"] not in ("FINISHED", "FAILED", "CANCELED"):
            request = urllib.request.Request(f"{base}/jobs/{job['id']}?mode=cancel", method="PATCH")
            urllib.request.urlopen(request, timeout=30).close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{base}/jobs", timeout=30) as response:
            states = {j["status"] for j in json.loads(response.read())["jobs"]}
        if states <= {"FINISHED", "FAILED", "CANCELED"}:
            return
        time.sleep(1)


def _wait_for_progress(box: JobSandbox, process: subprocess.Popen[bytes] | None, log: Path) -> None:
    """Until a checkpoint completed and some Parquet was committed (while ``process``,
    when given, still runs)."""
    deadline = time.monotonic() + DEADLINE_S
    while not (box.completed_checkpoints() >= 1 and box.object_keys("flywheel/session_features/")):
        if process is not None and process.poll() is not None:
            pytest.fail(f"flywheel run ended early:\n{log.read_text()[-3000:]}")
        assert time.monotonic() < deadline, "the job never checkpointed"
        time.sleep(0.5)
    time.sleep(3)


def _finish(process: subprocess.Popen[bytes], log: Path) -> str:
    try:
        process.wait(DEADLINE_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    output = log.read_text()
    assert process.returncode == 0, output[-3000:]
    return output


def _outputs(box: JobSandbox) -> dict[str, Any]:
    return {
        "rows": box.parquet_rows("flywheel/session_features"),
        "flagged": box.read_json_topic(box.flagged_topic),
        "dead_letters": box.read_json_topic(box.dlq_topic),
        "stats": box.stats(),
        "parquet_files": sorted(box.object_keys("flywheel/session_features/")),
    }


def _taskmanager_pid(state_dir: Path) -> int:
    (taskmanager,) = [s for s in stack_status(state_dir) if s.name == "flink-taskmanager"]
    assert taskmanager.running and taskmanager.pid is not None
    return taskmanager.pid


@pytest.fixture(scope="module")
def taskmanager_killed(
    cluster: tuple[Path, StackEndpoints], admin: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    state_dir, endpoints = cluster
    stream = generate_stream(SESSIONS, seed=3030, span_ms=SPAN_MS)
    logs = tmp_path_factory.mktemp("tm-kill-logs")
    with job_sandbox(endpoints, admin, logs, "tmkill", partitions=3) as box:
        positions = box.produce((d.key, d.raw) for d in stream.deliveries)
        log = logs / "run.log"
        run = box.flywheel_run(log, "--jobmanager", _jobmanager(endpoints), "--stop-when-idle", "8")
        _wait_for_progress(box, run, log)
        files_before = set(box.object_keys("flywheel/session_features/"))
        pid = _taskmanager_pid(state_dir)
        os.killpg(pid, signal.SIGKILL)  # services run in their own session: the JVM too
        killed_at = time.monotonic()
        # As a supervisor would: a new TaskManager once the old one is gone (a SIGKILLed
        # JVM can still be in /proc for a moment on a busy machine, and the JobManager
        # counts it until its heartbeat times out, so the stack would keep it).
        while procs.is_alive(pid):
            assert time.monotonic() - killed_at < 60, "the killed TaskManager is still alive"
            time.sleep(0.1)
        ensure_up(state_dir, flink_cluster=True)  # a new TaskManager, as a supervisor would
        recovered_s = None
        while run.poll() is None and time.monotonic() - killed_at < DEADLINE_S:
            if (
                recovered_s is None
                and set(box.object_keys("flywheel/session_features/")) - files_before
            ):
                recovered_s = time.monotonic() - killed_at
            time.sleep(0.5)
        output = _finish(run, log)
        yield {
            "stream": stream,
            "positions": positions,
            "recovery_s": recovered_s,
            "output": output,
            "new_pid": _taskmanager_pid(state_dir),
            "old_pid": pid,
            **_outputs(box),
        }


@pytest.fixture(scope="module")
def rescaled(
    cluster: tuple[Path, StackEndpoints], admin: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    state_dir, endpoints = cluster
    # Whatever the scenario before left (a job holding slots, no TaskManager), this one
    # starts on a cluster with a TaskManager and free slots.
    _cancel_unfinished_jobs(endpoints)
    ensure_up(state_dir, flink_cluster=True)
    stream = generate_stream(SESSIONS, seed=4040, span_ms=SPAN_MS)
    logs = tmp_path_factory.mktemp("rescale-logs")
    jobmanager = _jobmanager(endpoints)
    with job_sandbox(endpoints, admin, logs, "rescale", partitions=4) as box:
        positions = box.produce((d.key, d.raw) for d in stream.deliveries)
        first_log = logs / "p1.log"
        first = box.flywheel_run(first_log, "--jobmanager", jobmanager)
        first.wait(120)  # without --stop-when-idle it returns once the job is submitted
        match = re.search(r"as job ([0-9a-f]{32})", first_log.read_text())
        assert first.returncode == 0 and match, first_log.read_text()
        _wait_for_progress(box, None, first_log)
        from jobs.commands import _flink_cli

        directory = box.checkpoint_dir + "/savepoints"
        stopped = subprocess.run(
            [_flink_cli(), "stop", "-m", jobmanager, "-p", directory, match.group(1)],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        written_at_p1 = box.parquet_rows("flywheel/session_features")
        second_log = logs / "p2.log"
        second = box.flywheel_run(
            second_log, "--jobmanager", jobmanager, "--set", "parallelism=2",
            "--stop-when-idle", "8",
        )  # fmt: skip
        output = _finish(second, second_log)
        yield {
            "stream": stream,
            "positions": positions,
            "output": output,
            "written_at_p1": written_at_p1,
            **_outputs(box),
        }


def _keys(rows: list[dict[str, Any]]) -> collections.Counter[tuple[str, int]]:
    return collections.Counter((r["session_id"], r["session_start_ms"]) for r in rows)


def _diagnose(outcome: dict[str, Any], reference: Any, missing: set[Any], extra: set[Any]) -> str:
    """Where the sessions missing from (or extra in) Parquet are in the other outputs."""
    flagged = set(_keys([m for _, m in outcome["flagged"]]))
    late = collections.Counter(
        m.get("session_id") for _, m in outcome["dead_letters"] if m["reason"] == "late_event"
    )
    lines = [f"missing {len(missing)}, extra {len(extra)}"]
    for key in sorted(missing)[:10]:
        row = reference.rows[key]
        lines.append(
            f"  missing {key}: end_ms={row.get('session_end_ms')} events={row.get('event_count')}"
            f" flagged_expected={key in reference.flagged} on_flagged_topic={key in flagged}"
            f" late_letters={late.get(key[0], 0)}"
        )
    lines.append(f"  parquet files: {outcome.get('parquet_files')}")
    return "\n".join(lines)


def _assert_exactly_once(outcome: dict[str, Any]) -> None:
    stream: GeneratedStream = outcome["stream"]
    reference = compute_reference(stream.events)
    keys = _keys(outcome["rows"])
    assert max(keys.values()) == 1, [k for k, n in keys.items() if n > 1][:5]
    missing, extra = set(reference.rows) - set(keys), set(keys) - set(reference.rows)
    assert not missing and not extra, _diagnose(outcome, reference, missing, extra)
    for row in outcome["rows"]:
        expected = reference.rows[(row["session_id"], row["session_start_ms"])]
        got = {name: (list(row[name]) if name == "reasons" else row[name]) for name in expected}
        assert got == expected
    flagged = _keys([m for _, m in outcome["flagged"]])
    assert max(flagged.values()) == 1 and set(flagged) == set(reference.flagged)
    letters = collections.Counter(
        ((m["source_partition"], m["source_offset"]), m["reason"])
        for _, m in outcome["dead_letters"]
    )
    assert max(letters.values()) == 1
    assert dict(letters.keys()) == {
        outcome["positions"][i]: line.reason for i, line in stream.invalid
    }
    stats = outcome["stats"]
    assert stats["events"] == len(stream.deliveries) - len(stream.invalid)
    assert stats["dlq"] == len(stream.invalid)
    assert stats["sessions_closed"] == len(reference.rows)
    assert stats.get("sessions_flagged", 0) == len(reference.flagged)


def test_taskmanager_killed_mid_stream_loses_and_duplicates_nothing(
    taskmanager_killed: dict[str, Any],
) -> None:
    assert taskmanager_killed["new_pid"] != taskmanager_killed["old_pid"]
    print(f"\nTaskManager kill -> first new Parquet file: {taskmanager_killed['recovery_s']} s")
    _assert_exactly_once(taskmanager_killed)


def test_savepoint_at_parallelism_1_resumes_at_parallelism_2(rescaled: dict[str, Any]) -> None:
    assert "resuming from the newest retained savepoint" in rescaled["output"], rescaled["output"]
    assert rescaled["written_at_p1"], "the p1 run should have written sessions before its stop"
    _assert_exactly_once(rescaled)

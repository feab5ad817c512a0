"""``flywheel run --jobmanager``'s control of a cluster job through the JobManager's REST API.

A small HTTP server on loopback answers as Flink's REST API does (the paths and the
fields ``jobs.commands._ClusterJob`` reads); the real cluster is in
``tests/integration/test_fault_cluster.py``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import click
import pytest

from jobs.commands import (
    StaleStateError,
    _ClusterJob,
    java_failure_summary,
    restore_failure_hint,
    start_running,
    wait_until_running,
)

JOB = "0" * 32
TRACE = """org.apache.flink.util.FlinkException: Stop with savepoint failed.
\tat org.apache.flink.Foo.bar(Foo.java:1)
\tat org.apache.flink.Foo.baz(Foo.java:2)
Caused by: java.util.concurrent.CompletionException: checkpoint declined
\tat java.base/java.util.concurrent.CompletableFuture.encodeThrowable(CompletableFuture.java:332)
\t... 12 more
Caused by: org.apache.flink.runtime.checkpoint.CheckpointException: Task not running
\tat org.apache.flink.Qux.run(Qux.java:3)
"""


class _JobManager:
    """Answers like a JobManager whose first ``failures`` stops fail."""

    def __init__(self, failures: int, *, state: str = "RUNNING"):
        self.failures = failures
        self.state = state
        self.stops = 0
        self.vertex_status = "RUNNING"

    def answer(self, method: str, path: str) -> dict[str, Any]:
        if method == "POST" and path == f"/jobs/{JOB}/stop":
            self.stops += 1
            return {"request-id": f"t{self.stops}"}
        if path.startswith(f"/jobs/{JOB}/savepoints/t"):
            attempt = int(path.rsplit("t", 1)[1])
            if attempt <= self.failures:
                operation = {"failure-cause": {"class": "x", "stack-trace": TRACE}}
            else:
                operation = {"location": "file:/savepoints/savepoint-1"}
            return {"status": {"id": "COMPLETED"}, "operation": operation}
        if path == f"/jobs/{JOB}":
            return {"state": self.state, "vertices": [{"status": self.vertex_status}] * 2}
        raise AssertionError(path)


@pytest.fixture
def jobmanager(request: pytest.FixtureRequest) -> Iterator[tuple[str, _JobManager]]:
    manager = _JobManager(**getattr(request, "param", {"failures": 0}))

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            body = json.dumps(manager.answer(method, self.path)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._reply("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._reply("POST")

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", manager
    finally:
        server.shutdown()
        server.server_close()


def test_a_java_failure_is_cut_to_its_causes() -> None:
    summary = java_failure_summary(TRACE)
    assert summary.splitlines() == [
        "org.apache.flink.util.FlinkException: Stop with savepoint failed.",
        "Caused by: java.util.concurrent.CompletionException: checkpoint declined",
        "Caused by: org.apache.flink.runtime.checkpoint.CheckpointException: Task not running",
    ]
    assert java_failure_summary("") == ""


@pytest.mark.parametrize("jobmanager", [{"failures": 0}, {"failures": 1}], indirect=True)
def test_a_stop_returns_the_savepoint_trying_again_while_the_job_runs(
    jobmanager: tuple[str, _JobManager], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("jobs.commands.time.sleep", lambda _s: None)
    address, manager = jobmanager
    job = _ClusterJob(address, JOB)
    assert job.stop_with_savepoint("file:/savepoints", drain=True) == "file:/savepoints/savepoint-1"
    assert manager.stops == manager.failures + 1


@pytest.mark.parametrize("jobmanager", [{"failures": 5}], indirect=True)
def test_a_stop_that_keeps_failing_names_the_root_cause(
    jobmanager: tuple[str, _JobManager], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("jobs.commands.time.sleep", lambda _s: None)
    address, manager = jobmanager
    with pytest.raises(click.ClickException) as failed:
        _ClusterJob(address, JOB).stop_with_savepoint("file:/savepoints", drain=True)
    assert manager.stops == 3
    assert "CheckpointException: Task not running" in failed.value.message
    assert "\tat " not in failed.value.message


def test_tasks_being_deployed_after_a_restart_are_not_running(
    jobmanager: tuple[str, _JobManager],
) -> None:
    address, manager = jobmanager
    job = _ClusterJob(address, JOB)
    assert job.state() == ("RUNNING", True)
    manager.vertex_status = "INITIALIZING"
    assert job.state() == ("RUNNING", False)


STALE_TRACE = """java.util.concurrent.ExecutionException: org.apache.flink.runtime.client.JobInitializationException: Could not start the JobMaster.
Caused by: java.lang.IllegalStateException: Failed to rollback to checkpoint/savepoint file:/sp/savepoint-1. Cannot map checkpoint/savepoint state for operator 0a448493b4782967b150582570326227 to the new program, because the operator is not available in the new program.
"""  # noqa: E501 (Flink's words, one line each)


class _FinishedJob:
    """What a PyFlink JobClient answers about a job that ended (or runs)."""

    def __init__(self, status: str, trace: str = ""):
        self.status, self.trace = status, trace

    def get_job_status(self) -> Any:
        return _Done(type("JobStatus", (), {"name": self.status})())

    def get_job_execution_result(self) -> Any:
        return _Done(None, RuntimeError(self.trace) if self.trace else None)


class _Done:
    def __init__(self, value: Any, error: Exception | None = None):
        self.value, self.error = value, error

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


def test_a_restore_of_another_jobs_state_is_told_apart() -> None:
    assert restore_failure_hint(STALE_TRACE) is not None
    assert "--fresh" in (restore_failure_hint(STALE_TRACE) or "")
    assert restore_failure_hint(TRACE) is None


def test_a_job_that_could_not_restore_its_savepoint_says_what_to_do() -> None:
    wait_until_running(_FinishedJob("RUNNING"))
    with pytest.raises(StaleStateError) as stale:
        wait_until_running(_FinishedJob("FAILED", STALE_TRACE))
    assert "--from-savepoint" in stale.value.message
    with pytest.raises(click.ClickException) as failed:
        wait_until_running(_FinishedJob("FAILED", TRACE))
    assert not isinstance(failed.value, StaleStateError)
    assert "CheckpointException: Task not running" in failed.value.message


def test_a_start_refused_for_foreign_state_is_told_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(ctx: Any, *, savepoint: str | None = None) -> Any:
        raise RuntimeError(STALE_TRACE)  # as execute_async's Py4J error reads

    monkeypatch.setattr("jobs.commands.start_streaming", refuse)
    with pytest.raises(StaleStateError):
        start_running(object(), savepoint="file:/sp/savepoint-1")
    monkeypatch.setattr("jobs.commands.start_streaming", lambda ctx, savepoint=None: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # anything else is not hidden
        start_running(object(), savepoint=None)

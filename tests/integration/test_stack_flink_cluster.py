"""`flywheel stack up --flink-cluster`: a session cluster that runs jobs and stops cleanly.

Uses its own state directory, so the shared stack is not touched.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from deploy import procs
from deploy.stack import StackEndpoints, ensure_up, stack_status, stop_stack

pytestmark = [pytest.mark.integration, pytest.mark.flink, pytest.mark.slow]

# Runs in a child process: the PyFlink JVM of the test process stays untouched.
REMOTE_JOB = textwrap.dedent(
    """
    import json, sys
    from deploy.jars import configure_pyflink
    from deploy.stack import StackEndpoints

    endpoints = StackEndpoints(**json.loads(sys.argv[1]))
    options = configure_pyflink(endpoints.s3_settings())
    from pyflink.table import EnvironmentSettings, TableEnvironment

    env = TableEnvironment.create(EnvironmentSettings.in_batch_mode())
    config = env.get_config()
    for key, value in options.items():
        config.set(key, value)
    rest = endpoints.flink_rest_url.rsplit(":", 1)[1]
    config.set("execution.target", "remote")
    config.set("rest.address", "127.0.0.1")
    config.set("rest.port", rest)
    env.execute_sql(
        "CREATE TABLE sink (session_id STRING, n BIGINT) WITH ('connector'='filesystem',"
        f"'path'='s3://{endpoints.s3_bucket}/on-cluster','format'='parquet')"
    )
    env.execute_sql("INSERT INTO sink VALUES ('a', CAST(1 AS BIGINT)), ('b', 2)").wait()
    """
)


@pytest.fixture
def cluster(tmp_path: Path) -> Any:
    state_dir = tmp_path / "state"
    endpoints = ensure_up(state_dir, flink_cluster=True)
    try:
        yield state_dir, endpoints
    finally:
        stop_stack(state_dir)


def test_cluster_runs_a_job_writing_parquet_to_s3_and_stops_cleanly(
    cluster: tuple[Path, StackEndpoints],
) -> None:
    state_dir, endpoints = cluster
    statuses = {s.name: s for s in stack_status(state_dir)}
    assert statuses["flink-jobmanager"].healthy and statuses["flink-taskmanager"].healthy
    assert endpoints.flink_rest_url is not None

    job = subprocess.run(
        [sys.executable, "-c", REMOTE_JOB, json.dumps(endpoints.__dict__)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert job.returncode == 0, job.stderr[-3000:]

    listed = (
        endpoints.s3_settings()
        .boto3_client()
        .list_objects_v2(Bucket=endpoints.s3_bucket, Prefix="on-cluster/")
    )
    files = [item for item in listed.get("Contents", []) if not item["Key"].endswith("/")]
    assert [item["Size"] > 0 for item in files] == [True]

    pids = [s.pid for s in statuses.values() if s.pid is not None]
    rest_port = int(endpoints.flink_rest_url.rsplit(":", 1)[1])
    stop_stack(state_dir)
    assert not [pid for pid in pids if procs.is_alive(pid)]
    assert procs.marked_pids(procs.marker_value(state_dir.resolve(), "")) == []
    assert procs.port_is_free("127.0.0.1", rest_port)

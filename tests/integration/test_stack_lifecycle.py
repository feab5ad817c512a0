"""`flywheel stack up|down|status` on a private state directory and fresh ports.

These tests never touch the shared stack: each uses its own temporary state
directory, and `down` only stops processes of that directory.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from deploy import procs

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"


def _flywheel(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("flywheel")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "jobs.cli"]
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_STACK_")}
    child_env.update(env or {})
    return subprocess.run(
        [*argv, *args], capture_output=True, text=True, timeout=300, env=child_env, check=False
    )


def _fresh_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        ports.append(procs.free_port(HOST, avoid=ports))
    return ports


def _stack_file(state_dir: Path) -> dict[str, Any]:
    return dict(json.loads((state_dir / "stack.json").read_text()))


def _processes_of_state_dir(state_dir: Path) -> list[str]:
    """Command lines of live processes started for ``state_dir`` (empty when none)."""
    found = []
    for pid in procs.marked_pids(procs.marker_value(state_dir.resolve(), "")):
        try:
            found.append(f"{pid}: {Path(f'/proc/{pid}/cmdline').read_bytes()[:200]!r}")
        except OSError:
            continue  # exited meanwhile
    return found


@pytest.fixture
def state_dir(tmp_path: Path) -> Any:
    directory = tmp_path / "state"
    yield directory
    # Whatever happened in the test, leave no process behind.
    _flywheel("stack", "down", "--state-dir", str(directory))


def test_up_twice_reuses_services_and_down_leaves_no_process_or_port(state_dir: Path) -> None:
    kafka, controller, redis, s3 = _fresh_ports(4)
    up_args = [
        "stack", "up", "--state-dir", str(state_dir),
        "--kafka-port", str(kafka), "--kafka-controller-port", str(controller),
        "--redis-port", str(redis), "--s3-port", str(s3),
    ]  # fmt: skip

    first = _flywheel(*up_args, "--json")
    assert first.returncode == 0, first.stderr
    endpoints = json.loads(first.stdout)
    assert endpoints["kafka_bootstrap"] == f"{HOST}:{kafka}"
    assert endpoints["redis_url"] == f"redis://{HOST}:{redis}/0"
    assert endpoints["s3_endpoint_url"] == f"http://{HOST}:{s3}"
    services = _stack_file(state_dir)["services"]
    pids = {name: info["pid"] for name, info in services.items()}
    assert set(pids) == {"kafka", "redis", "s3"}

    second = _flywheel(*up_args)
    assert second.returncode == 0, second.stderr
    for name in pids:
        assert f"{name}: already running" in second.stderr
    assert {n: i["pid"] for n, i in _stack_file(state_dir)["services"].items()} == pids

    status = _flywheel("stack", "status", "--state-dir", str(state_dir), "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    report = json.loads(status.stdout)
    assert report["running"] is True
    assert all(s["healthy"] for s in report["services"])

    # A crashed service is restarted by the next `up`; the others keep running.
    os.kill(pids["redis"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while procs.is_alive(pids["redis"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    healed = _flywheel(*up_args)
    assert healed.returncode == 0, healed.stderr
    after = {n: i["pid"] for n, i in _stack_file(state_dir)["services"].items()}
    assert after["redis"] != pids["redis"]
    assert after["kafka"] == pids["kafka"] and after["s3"] == pids["s3"]

    all_pids = set(pids.values()) | set(after.values())
    sessions = {pid: procs.session_members(pid) for pid in all_pids}
    down = _flywheel("stack", "down", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stderr

    assert not [pid for pid in all_pids if procs.is_alive(pid)]
    assert not [pid for members in sessions.values() for pid in members if procs.is_alive(pid)]
    assert _processes_of_state_dir(state_dir) == []
    for port in (kafka, controller, redis, s3):
        assert procs.port_is_free(HOST, port), f"port {port} still in use"
    assert not (state_dir / "stack.json").exists()
    stopped = _flywheel("stack", "status", "--state-dir", str(state_dir))
    assert stopped.returncode == 3


def test_up_refuses_a_busy_port_and_starts_nothing(state_dir: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind((HOST, 0))
        squatter.listen()
        busy = squatter.getsockname()[1]

        result = _flywheel("stack", "up", "--state-dir", str(state_dir), "--redis-port", str(busy))

    assert result.returncode != 0
    assert f"port {busy} (redis) is in use" in result.stderr
    assert _processes_of_state_dir(state_dir) == []


def test_a_service_that_cannot_start_is_reported_and_nothing_is_left(state_dir: Path) -> None:
    # `false` stands in for a broken Java: Kafka's storage format step fails.
    result = _flywheel(
        "stack", "up", "--state-dir", str(state_dir), env={"FLYWHEEL_STACK_JAVA": "false"}
    )

    assert result.returncode != 0
    assert "kafka: kafka storage format failed" in result.stderr, result.stderr
    assert _processes_of_state_dir(state_dir) == []  # redis and s3 were stopped again


def test_a_service_not_healthy_in_time_is_reported_and_nothing_is_left(state_dir: Path) -> None:
    result = _flywheel(
        "stack", "up", "--state-dir", str(state_dir), env={"FLYWHEEL_STACK_START_TIMEOUT": "PT1S"}
    )

    assert result.returncode != 0
    assert "kafka not healthy after 1s" in result.stderr, result.stderr
    assert "last lines of" in result.stderr  # the log tail tells why
    assert _processes_of_state_dir(state_dir) == []


def test_down_of_a_stack_that_never_ran_is_a_no_op(state_dir: Path) -> None:
    result = _flywheel("stack", "down", "--state-dir", str(state_dir))

    assert result.returncode == 0, result.stderr
    assert "stack stopped" in result.stderr


def test_bad_stack_setting_is_a_usage_error_naming_it(state_dir: Path) -> None:
    result = _flywheel(
        "stack", "status", "--state-dir", str(state_dir), env={"FLYWHEEL_STACK_HOST": "10.0.0.1"}
    )

    assert result.returncode == 2
    assert "FLYWHEEL_STACK_HOST (host)" in result.stderr


def test_down_then_up_keeps_every_s3_object_and_redis_key(state_dir: Path) -> None:
    """The local S3 server keeps objects on disk: `down` then `up` loses none."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from boto3.s3.transfer import TransferConfig

    from deploy.stack import StackEndpoints

    def up() -> tuple[StackEndpoints, Any, Any]:
        started = _flywheel("stack", "up", "--state-dir", str(state_dir), "--json")
        assert started.returncode == 0, started.stderr
        endpoints = StackEndpoints.from_mapping(json.loads(started.stdout))
        s3 = endpoints.s3_settings()
        return endpoints, s3, s3.boto3_client()

    endpoints, s3, client = up()
    written = {
        "registry/intent/versions/v0001/manifest.json": b'{"version": "v0001"}',
        "pool/samples/dt=2026-12-01/part-0.jsonl": "请问这个多少钱\n".encode(),
        "empty-object": b"",
    }
    for key, body in written.items():
        client.put_object(Bucket=endpoints.s3_bucket, Key=key, Body=body)
    # A Hive-partitioned Parquet file written by pyarrow (the AWS C++ SDK, as the
    # backfill and the pool use it), and a 6 MiB object sent as a multipart upload.
    table = pa.table({"session_id": ["s1", "s2"], "n": [1, 2]})
    parquet_key = f"{endpoints.s3_bucket}/features/dt=2026-12-01/part-0.parquet"
    pq.write_table(table, parquet_key, filesystem=s3.pyarrow_filesystem())
    big = os.urandom(6 * 1024 * 1024)
    five_mib = 5 * 1024 * 1024
    client.upload_fileobj(
        io.BytesIO(big),
        endpoints.s3_bucket,
        "big/blob.bin",
        Config=TransferConfig(multipart_threshold=five_mib, multipart_chunksize=five_mib),
    )
    redis = endpoints.redis_settings().client()
    redis.hset("fw:session:durable", mapping={"n_events": "3"})
    redis.close()

    down = _flywheel("stack", "down", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stderr
    assert _processes_of_state_dir(state_dir) == []

    endpoints, s3, client = up()
    listed = {
        item["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=endpoints.s3_bucket)
        for item in page.get("Contents", [])
        if not item["Key"].endswith("/")  # the server lists folders as markers
    }
    assert listed == {*written, "features/dt=2026-12-01/part-0.parquet", "big/blob.bin"}
    for key, body in written.items():
        assert client.get_object(Bucket=endpoints.s3_bucket, Key=key)["Body"].read() == body
    assert client.get_object(Bucket=endpoints.s3_bucket, Key="big/blob.bin")["Body"].read() == big
    assert pq.read_table(parquet_key, filesystem=s3.pyarrow_filesystem()).equals(table)
    redis = endpoints.redis_settings().client()
    assert redis.hgetall("fw:session:durable") == {"n_events": "3"}
    redis.close()

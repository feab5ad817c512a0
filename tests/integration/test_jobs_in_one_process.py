"""Many jobs in one Python process start no gRPC server there, and the process exits 0.

The test suite and ``flywheel demo`` run several jobs in one process. PyFlink used to
start a new loopback worker-pool gRPC server for each (its singleton resets its address
in ``__init__``) with only an unawaited stop at exit, and a run of the suite segfaulted
at interpreter exit after every test passed. The job now runs with no loopback server
at all; this runs a few backfills in a fresh interpreter, as a user's script would, and
checks what is left at exit and the exit status.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from reference.generator import generate_stream

pytestmark = [pytest.mark.integration, pytest.mark.flink]

JOBS = 3

SCRIPT = Path(__file__).resolve().parents[1] / "reference" / "jobs_in_one_process.py"


def test_jobs_in_one_process_leave_no_server_and_exit_zero(tmp_path: Path) -> None:
    stream = generate_stream(20, seed=7)
    events = tmp_path / "events.jsonl"
    events.write_bytes(stream.jsonl())
    done = subprocess.run(
        [
            sys.executable,
            "-X",
            "faulthandler",
            str(SCRIPT),
            str(events),
            str(tmp_path / "out"),
            str(JOBS),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Fatal Python error" not in done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"loopback_servers": 0, "grpc_threads": 0}
    for i in range(JOBS):
        assert list((tmp_path / "out" / f"run-{i}" / "session_features").rglob("part-*"))

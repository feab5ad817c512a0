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
import textwrap
from pathlib import Path

import pytest
from reference.generator import generate_stream

pytestmark = [pytest.mark.integration, pytest.mark.flink]

JOBS = 3

SCRIPT = textwrap.dedent(
    """
    import json, sys, threading
    from jobs.commands import run_backfill
    from jobs.streaming import load_context

    events, out, jobs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ctx = load_context(embedding_enabled=False, redis_enabled=False)
    for i in range(jobs):
        run_backfill(ctx, events, f"{out}/run-{i}")
    from pyflink.fn_execution.beam.beam_worker_pool_service import (
        BeamFnLoopbackWorkerPoolServicer,
    )
    servicer = BeamFnLoopbackWorkerPoolServicer._instance
    print(json.dumps({
        "loopback_servers": 0 if servicer is None or not servicer._worker_address else 1,
        "grpc_threads": sum("grpc" in t.name.lower() or "serve" in t.name.lower()
                            for t in threading.enumerate()),
    }))
    """
)


def test_jobs_in_one_process_leave_no_server_and_exit_zero(tmp_path: Path) -> None:
    stream = generate_stream(20, seed=7)
    events = tmp_path / "events.jsonl"
    events.write_bytes(stream.jsonl())
    done = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", SCRIPT, str(events), str(tmp_path / "out"),
         str(JOBS)],
        capture_output=True, text=True, timeout=600,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Fatal Python error" not in done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"loopback_servers": 0, "grpc_threads": 0}
    for i in range(JOBS):
        assert list((tmp_path / "out" / f"run-{i}" / "session_features").rglob("part-*"))

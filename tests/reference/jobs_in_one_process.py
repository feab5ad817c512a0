"""Run N backfill jobs in one Python process, then report what is left alive.

``python -X faulthandler tests/reference/jobs_in_one_process.py EVENTS OUT N`` prints one
JSON line: the loopback gRPC servers and gRPC threads left in the process. Used by
``tests/integration/test_jobs_in_one_process.py`` (3 jobs) and by
``tests/benchmarks/loop_jobs_in_one_process.py`` (30 jobs, 20 processes in a row).
"""

from __future__ import annotations

import json
import sys
import threading


def main(events: str, out: str, jobs: int) -> dict[str, int]:
    from jobs.commands import run_backfill
    from jobs.streaming import load_context

    ctx = load_context(embedding_enabled=False, redis_enabled=False)
    for i in range(jobs):
        run_backfill(ctx, events, f"{out}/run-{i}")
    from pyflink.fn_execution.beam.beam_worker_pool_service import (
        BeamFnLoopbackWorkerPoolServicer,
    )

    servicer = BeamFnLoopbackWorkerPoolServicer._instance
    return {
        "loopback_servers": 0 if servicer is None or not servicer._worker_address else 1,
        "grpc_threads": sum(
            "grpc" in t.name.lower() or "serve" in t.name.lower() for t in threading.enumerate()
        ),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))))

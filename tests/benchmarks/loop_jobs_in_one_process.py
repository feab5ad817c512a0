"""Start 30 in-process jobs in one Python process, 20 processes in a row; all must exit 0.

    .venv/bin/python tests/benchmarks/loop_jobs_in_one_process.py [--jobs 30] [--runs 20]

The check of issue #16: the suite and ``flywheel demo`` run many jobs in one process,
and a run once segfaulted at interpreter exit. Each process runs with faulthandler on
and core dumps allowed; the loop prints each exit status, the seconds it took, and
stops at the first failure with the tail of its stderr.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from reference.generator import generate_stream  # noqa: E402

SCRIPT = ROOT / "tests" / "reference" / "jobs_in_one_process.py"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    with tempfile.TemporaryDirectory(prefix="flywheel-loop-") as tmp:
        events = Path(tmp) / "events.jsonl"
        events.write_bytes(generate_stream(20, seed=7).jsonl())
        for run in range(1, args.runs + 1):
            start = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-X", "faulthandler", str(SCRIPT), str(events),
                 f"{tmp}/out-{run}", str(args.jobs)],
                capture_output=True, text=True, cwd=ROOT, check=False,
            )  # fmt: skip
            took = time.monotonic() - start
            report = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "{}"
            crashed = "Fatal Python error" in done.stderr
            print(
                f"run {run:2d}/{args.runs}: exit {done.returncode}, {args.jobs} jobs in "
                f"{took:.0f} s, left alive {report}{', CRASH LINE' if crashed else ''}",
                flush=True,
            )
            if done.returncode != 0 or crashed or json.loads(report).get("grpc_threads"):
                print(done.stderr[-6000:], file=sys.stderr)
                return 1
    print(f"{args.runs} processes x {args.jobs} jobs: every one exited 0")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

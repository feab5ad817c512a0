"""Entry point for ``flink run -py jobs/streaming_main.py`` (a standalone or Kubernetes cluster).

Settings come from FLYWHEEL_* environment variables, as for ``flywheel run``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs.streaming import build_streaming_job, load_context  # noqa: E402


def main() -> None:
    env, _ = build_streaming_job(load_context())
    env.execute("flywheel-feature-job")


if __name__ == "__main__":
    main()

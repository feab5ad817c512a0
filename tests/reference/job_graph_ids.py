"""Print the operator ids of the streaming job's graph at one parallelism, as JSON.

Run in a child process (``python job_graph_ids.py PARALLELISM``) with the FLYWHEEL_*
environment of a stack: the job is built, never run. Used by
``tests/integration/test_job_graph_uids.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from jobs.streaming import build_streaming_job, load_context  # noqa: E402


def operators(parallelism: int) -> dict[str, str]:
    ctx = load_context(
        embedding_enabled=False,
        parallelism=parallelism,
        checkpoint_dir="file:///tmp/flywheel-graph-ids",
    )
    env, _ = build_streaming_job(ctx)
    graph = env._j_stream_execution_environment.getStreamGraph(False).getJobGraph()
    found = {}
    for vertex in list(graph.getVerticesSortedTopologicallyFromSources()):
        for pair in list(vertex.getOperatorIDs()):
            found[str(pair.getGeneratedOperatorID())] = str(vertex.getName())
    return found


def main() -> None:
    # Built twice in this process: a restart in the same process must get the same ids.
    first = operators(int(sys.argv[1]))
    again = operators(int(sys.argv[1]))
    print("OPERATORS " + json.dumps(first))
    print("AGAIN " + json.dumps(again))


if __name__ == "__main__":
    main()

"""Savepoints map state to operators by id: the ids must not depend on parallelism, nor
on how many jobs the process built before.

Every DataStream operator has a ``.uid()``; the SQL sources and sinks get theirs from
``table.exec.uid.generation=ALWAYS``. Without it the filesystem sink's writer, chained
differently at parallelism 2, got another id, and a savepoint taken at parallelism 1
could not be restored at 2 ("the operator is not available in the new program").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.flink]

SCRIPT = Path(__file__).resolve().parents[1] / "reference" / "job_graph_ids.py"


def _operators(parallelism: int, env: dict[str, str]) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(parallelism)],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    found = {
        tag: dict(json.loads(line.removeprefix(tag + " ")))
        for line in done.stdout.splitlines()
        for tag in ("OPERATORS", "AGAIN")
        if line.startswith(tag + " ")
    }
    assert done.returncode == 0 and len(found) == 2, done.stderr[-3000:]
    # Vertex names count anonymous sources per process; the ids must not.
    assert set(found["OPERATORS"]) == set(found["AGAIN"]), "a rebuild in one process got other ids"
    return found["OPERATORS"]


def test_operator_ids_are_the_same_at_every_parallelism(
    stack_endpoints: Any, unique_topic: Any
) -> None:
    env = {**os.environ, **stack_endpoints.to_env()}
    env["FLYWHEEL_KAFKA_EVENTS_TOPIC"] = str(unique_topic(partitions=4))
    at_1, at_2 = _operators(1, env), _operators(2, env)
    assert set(at_1) == set(at_2), {
        "only at parallelism 1": {k: at_1[k] for k in set(at_1) - set(at_2)},
        "only at parallelism 2": {k: at_2[k] for k in set(at_2) - set(at_1)},
    }
    assert len(at_1) >= 15

"""A savepoint the job cannot take fails ``flywheel run`` with what to do, not a Java trace.

The savepoint comes from another job (a keyed Python counter with a uid the feature job
does not have), as one from an older Flywheel with other operator ids would. Flink
refuses to map its state; ``flywheel run --from-savepoint`` must say so in a sentence
that names the ways out (``--from-savepoint``, ``--fresh``).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from reference.job_harness import job_sandbox

pytestmark = [pytest.mark.integration, pytest.mark.flink, pytest.mark.slow]

FOREIGN_JOB = textwrap.dedent(
    """
    import sys, time
    from pyflink.common import Configuration, Types
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.datastream.functions import KeyedProcessFunction, RuntimeContext
    from pyflink.datastream.state import ValueStateDescriptor
    from pyflink.table import StreamTableEnvironment

    class Count(KeyedProcessFunction):
        def open(self, ctx: RuntimeContext) -> None:
            self.seen = ctx.get_state(ValueStateDescriptor("seen", Types.LONG()))

        def process_element(self, value, ctx):
            self.seen.update((self.seen.value() or 0) + 1)
            yield value[0]

    conf = Configuration()
    conf.set_string("execution.checkpointing.interval", "1 s")
    conf.set_string("python.executable", sys.executable)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(1)
    t_env = StreamTableEnvironment.create(env)
    t_env.execute_sql(
        "CREATE TEMPORARY TABLE numbers (n INT) WITH "
        "('connector' = 'datagen', 'rows-per-second' = '20', 'fields.n.min' = '0', "
        "'fields.n.max' = '9')"
    )
    numbers = t_env.to_data_stream(t_env.from_path("numbers"))
    counted = numbers.key_by(lambda r: r[0], key_type=Types.INT()).process(
        Count(), output_type=Types.INT()
    ).uid("not-a-flywheel-operator")
    counted.filter(lambda n: False).print()
    client = env.execute_async("foreign")
    for attempt in range(30):  # until its tasks run (the Python workers take a while)
        time.sleep(5)
        try:
            savepoint = client.stop_with_savepoint(False, sys.argv[1]).result()
        except Exception:
            continue
        print("SAVEPOINT", savepoint, flush=True)
        break
    """
)


def test_a_savepoint_of_another_job_is_refused_with_what_to_do(
    stack_endpoints: Any, kafka_admin: Any, tmp_path: Path
) -> None:
    script = tmp_path / "foreign_job.py"
    script.write_text(FOREIGN_JOB)
    root = Path(__file__).resolve().parents[2]
    foreign = subprocess.run(
        [sys.executable, str(script), (tmp_path / "foreign-savepoints").resolve().as_uri()],
        cwd=root, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    lines = [line for line in foreign.stdout.splitlines() if line.startswith("SAVEPOINT ")]
    assert foreign.returncode == 0 and lines, foreign.stdout[-2000:] + foreign.stderr[-3000:]
    savepoint = lines[-1].split(" ", 1)[1]

    with job_sandbox(stack_endpoints, kafka_admin, tmp_path, "stale") as box:
        log = tmp_path / "run.log"
        run = box.flywheel_run(log, "--from-savepoint", savepoint, "--stop-when-idle", "5")
        try:
            run.wait(300)
        finally:
            if run.poll() is None:
                run.kill()
        output = log.read_text()
    assert run.returncode == 1, output[-3000:]
    assert "was written by a job with other operators" in output, output[-3000:]
    assert "--fresh" in output and "--from-savepoint" in output
    assert "\tat org.apache.flink" not in output  # a sentence, not a stack trace

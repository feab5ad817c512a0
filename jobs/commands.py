"""``flywheel run`` and ``flywheel backfill``."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import click

from connectors.settings import ConfigError
from features.rules import RuleError


def _parse_overrides(pairs: tuple[str, ...]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--set")
        overrides[key.strip()] = value
    return overrides


def _load(overrides: dict[str, Any]) -> Any:
    from jobs.streaming import load_context

    try:
        return load_context(**overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except RuleError as exc:  # names the rule
        raise click.ClickException(f"invalid rules: {exc}") from None


class IdleMonitor:
    """Tells when the job has consumed everything and no new events arrived for a while."""

    def __init__(self, kafka_settings: Any, topic: str, group: str):
        from confluent_kafka import Consumer

        conf = kafka_settings.client_config()
        conf.update({"group.id": group, "enable.auto.commit": False})
        self._consumer = Consumer(conf)
        self._topic = topic
        self._group = group
        self._last_change = time.monotonic()
        self._last_snapshot: Any = None

    def _snapshot(self) -> tuple[tuple[int, int, int], ...]:
        from confluent_kafka import TopicPartition

        meta = self._consumer.list_topics(self._topic, timeout=10)
        partitions = [TopicPartition(self._topic, p) for p in meta.topics[self._topic].partitions]
        committed = self._consumer.committed(partitions, timeout=10)
        rows = []
        for tp in committed:
            _, high = self._consumer.get_watermark_offsets(tp, timeout=10, cached=False)
            rows.append((tp.partition, high, tp.offset))
        return tuple(sorted(rows))

    def idle_for(self) -> float:
        """Seconds since the topic last grew or the job last committed new offsets."""
        snapshot = self._snapshot()
        caught_up = all(committed >= high for _, high, committed in snapshot if high > 0)
        if snapshot != self._last_snapshot or not caught_up:
            self._last_snapshot = snapshot
            self._last_change = time.monotonic()
        return time.monotonic() - self._last_change

    def reset(self) -> None:
        """Start counting idle time again from now."""
        self._last_change = time.monotonic()

    def close(self) -> None:
        self._consumer.close()


def start_streaming(ctx: Any, *, savepoint: str | None = None) -> Any:
    """Start the streaming job on the embedded MiniCluster; returns its JobClient."""
    from jobs.streaming import build_streaming_job

    env, _ = build_streaming_job(ctx, savepoint=savepoint)
    return env.execute_async("flywheel-feature-job")


def wait_until_running(client: Any, timeout_s: float = 120.0) -> None:
    """Block until the job runs; a job that failed to start (a checkpoint it cannot
    restore, say) raises with its cause."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job_status = client.get_job_status().result()
        status = getattr(job_status, "name", str(job_status))
        if status == "RUNNING":
            return
        if status in ("FAILED", "CANCELED", "FINISHED"):
            raise click.ClickException(
                f"feature job ended with status {status}{_why_it_failed(client, status)}"
            )
        time.sleep(0.5)
    raise click.ClickException(f"feature job not running after {timeout_s:.0f} s")


def start_running(ctx: Any, *, savepoint: str | None) -> Any:
    """``start_streaming``, then wait until the job runs; a checkpoint or savepoint the job
    cannot restore raises ``StaleStateError``."""
    try:
        client = start_streaming(ctx, savepoint=savepoint)
    except Exception as exc:  # noqa: BLE001 (Py4J errors carry the Java trace as text)
        hint = restore_failure_hint(str(exc))
        if hint is None:
            raise
        raise StaleStateError(f"feature job failed: {hint}") from exc
    wait_until_running(client)
    return client


def stop_when_idle(
    ctx: Any, client: Any, *, idle_s: float, drain: bool, progress: Any = None
) -> str:
    """Wait until the input has been idle ``idle_s`` seconds, then stop with a savepoint."""
    monitor = IdleMonitor(ctx.kafka, ctx.kafka.events_topic, ctx.job.consumer_group)
    try:
        while True:
            time.sleep(1.0)
            # PyFlink's JobStatus is an Enum: str() gives "JobStatus.FAILED", its name "FAILED".
            job_status = client.get_job_status().result()
            status = getattr(job_status, "name", str(job_status))
            if status in ("FAILED", "CANCELED", "FINISHED"):
                raise click.ClickException(
                    f"feature job ended with status {status}{_why_it_failed(client, status)}"
                )
            idle = monitor.idle_for()
            if status != "RUNNING":  # restarting after a failure: nothing reads
                monitor.reset()
                idle = 0.0
            if progress is not None:
                progress(idle)
            if idle >= idle_s:
                break
    finally:
        monitor.close()
    from jobs.streaming import checkpoint_dir

    return str(client.stop_with_savepoint(drain, checkpoint_dir(ctx) + "/savepoints").result())


def choose_resume_point(ctx: Any, *, savepoint: str | None, fresh: bool) -> str | None:
    """Where ``flywheel run`` starts: an explicit savepoint, else the newest retained
    checkpoint or savepoint of an earlier run in ``checkpoint_dir``, unless ``fresh``."""
    from jobs.checkpoints import StaleCheckpointError, resume_point
    from jobs.streaming import checkpoint_dir

    if savepoint:
        click.echo(f"resuming from {savepoint} (--from-savepoint)")
        return savepoint
    directory = checkpoint_dir(ctx)
    if fresh:
        click.echo(f"fresh start from {ctx.job.starting_offsets} offsets (--fresh)")
        return None
    try:
        found = resume_point(
            directory, state_ttl=ctx.job.state_ttl, s3_client_factory=ctx.s3.boto3_client
        )
    except StaleCheckpointError as exc:
        raise click.ClickException(str(exc)) from None
    if found is None:
        click.echo(
            f"first start: no retained checkpoint in {directory}; "
            f"reading from {ctx.job.starting_offsets} offsets"
        )
        return None
    click.echo(f"resuming from the newest retained {found.kind}: {found.path}")
    return found.path


def run_streaming(
    ctx: Any,
    *,
    stop_when_idle_s: float | None,
    drain: bool,
    savepoint: str | None,
    jobmanager: str | None,
    progress: Any = None,
    overrides: dict[str, str] | None = None,
) -> str | None:
    """Run the streaming job; with ``stop_when_idle_s`` stop with a final savepoint.

    ``savepoint`` is where to resume (see ``choose_resume_point``). Returns the final
    savepoint path (or None when the job ran until killed).
    """
    if jobmanager:
        return _run_on_cluster(
            ctx,
            jobmanager,
            savepoint,
            overrides or {},
            stop_when_idle_s=stop_when_idle_s,
            drain=drain,
        )
    client = start_streaming(ctx, savepoint=savepoint)
    if stop_when_idle_s is None:
        client.get_job_execution_result().result()
        return None
    return stop_when_idle(ctx, client, idle_s=stop_when_idle_s, drain=drain, progress=progress)


def _flink_cli() -> str:
    import pyflink

    return str(Path(pyflink.__file__).parent / "bin" / "flink")


class _ClusterJob:
    """A job submitted with ``flink run -d``, seen through the JobManager's REST API.

    (The ``flink`` CLI would start a JVM for every status check, and ``flink stop``
    gives up on a draining savepoint after its client timeout.)
    """

    def __init__(self, jobmanager: str, job_id: str, savepoint_timeout_s: float = 600.0):
        self.base = jobmanager if "://" in jobmanager else f"http://{jobmanager}"
        self.job_id = job_id
        self.savepoint_timeout_s = savepoint_timeout_s

    def _call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        import json
        import urllib.request

        request = urllib.request.Request(
            f"{self.base.rstrip('/')}{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="GET" if body is None else "POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return dict(json.loads(response.read() or b"{}"))

    def status(self) -> str:
        return str(self._call(f"/jobs/{self.job_id}").get("state", "UNKNOWN"))

    def root_exception(self) -> str:
        """The Java trace of what made the job fail (empty if the JobManager has none)."""
        try:
            answer = self._call(f"/jobs/{self.job_id}/exceptions")
        except OSError:
            return ""
        return str(answer.get("root-exception") or "")

    def state(self) -> tuple[str, bool]:
        """The job's status, and whether every one of its tasks runs (after a restart
        the job is RUNNING again while its tasks are still being deployed)."""
        job = self._call(f"/jobs/{self.job_id}")
        vertices = job.get("vertices", [])
        tasks_running = bool(vertices) and all(v.get("status") == "RUNNING" for v in vertices)
        return str(job.get("state", "UNKNOWN")), tasks_running

    def stop_with_savepoint(self, directory: str, drain: bool, attempts: int = 3) -> str:
        """Stop with a savepoint; a stop that failed while the job kept running (a
        checkpoint declined during a restart, say) is tried again, up to ``attempts``."""
        deadline = time.monotonic() + self.savepoint_timeout_s
        failure = ""
        for _ in range(attempts):
            outcome = self._stop_once(directory, drain, deadline)
            if outcome.startswith("location:"):
                return outcome.removeprefix("location:")
            failure = outcome
            time.sleep(5.0)
            if self.status() not in ("RUNNING", "RESTARTING", "CREATED", "INITIALIZING"):
                break
        raise click.ClickException(f"stop with savepoint failed: {failure}")

    def _stop_once(self, directory: str, drain: bool, deadline: float) -> str:
        """``location:<path>`` of the savepoint, or why the stop failed."""
        trigger = self._call(
            f"/jobs/{self.job_id}/stop", {"targetDirectory": directory, "drain": drain}
        )["request-id"]
        while time.monotonic() < deadline:
            answer = self._call(f"/jobs/{self.job_id}/savepoints/{trigger}")
            if answer.get("status", {}).get("id") == "COMPLETED":
                operation = answer.get("operation", {})
                if "location" in operation:
                    return "location:" + str(operation["location"])
                cause = operation.get("failure-cause", {}).get("stack-trace", str(operation))
                return java_failure_summary(str(cause))
            time.sleep(1.0)
        raise click.ClickException(
            f"stop with savepoint did not finish within {self.savepoint_timeout_s:.0f} s"
        )


# Flink's words (runtime.checkpoint.Checkpoints) when a checkpoint or savepoint holds
# state the job cannot take: operators it no longer has (an older job graph, other uids),
# or another max parallelism.
_STALE_STATE_MARKERS = (
    "Cannot map checkpoint/savepoint state for operator",
    "Max parallelism mismatch between checkpoint/savepoint state",
)


class StaleStateError(click.ClickException):
    """The job could not restore a checkpoint or savepoint written by another job graph."""


def restore_failure_hint(failure: str) -> str | None:
    """What to do when ``failure`` (a Java trace) is a restore of foreign state, else None."""
    if not any(marker in failure for marker in _STALE_STATE_MARKERS):
        return None
    return (
        "the checkpoint or savepoint it resumed from was written by a job with other "
        "operators or another max parallelism (an older Flywheel version, other settings), "
        "so its state cannot be restored. Resume from another one with --from-savepoint, "
        "or start with --fresh (reads from starting_offsets; the sessions open in that "
        "checkpoint are not restored), or move it out of checkpoint_dir."
    )


def _explained(failure: str) -> str:
    """``: <hint or root causes>`` for a job failure message ('' without a trace)."""
    if not failure:
        return ""
    hint = restore_failure_hint(failure)
    if hint is not None:
        raise StaleStateError(f"feature job failed: {hint}\n{java_failure_summary(failure)}")
    return ":\n" + java_failure_summary(failure)


def _why_it_failed(client: Any, status: str) -> str:
    """The root causes of a MiniCluster job that ended ``status`` ('' if it did not fail)."""
    if status != "FAILED":
        return ""
    try:
        client.get_job_execution_result().result()
    except Exception as exc:  # noqa: BLE001 (a Py4J error carrying the Java trace)
        return _explained(str(exc))
    return ""


def _cli_failure(output: str) -> str:
    """The ``flink`` CLI's output when it failed: its causes, then its last lines."""
    causes = [line.strip() for line in output.splitlines() if line.strip().startswith("Caused by:")]
    tail = output[-2000:]
    return ("\n".join(causes[-5:]) + "\n...\n" + tail) if causes else output[-4000:]


def java_failure_summary(stack_trace: str, limit: int = 3000) -> str:
    """A Java stack trace cut to what a person reads: its first line and every
    ``Caused by:`` line (the root cause is the last one), without the frames."""
    lines = [line.strip() for line in stack_trace.splitlines() if line.strip()]
    if not lines:
        return ""
    kept = [lines[0]] + [line for line in lines[1:] if line.startswith("Caused by:")]
    summary = "\n".join(kept)
    return summary if len(summary) <= limit else "..." + summary[-limit:]


def _run_on_cluster(
    ctx: Any,
    jobmanager: str,
    savepoint: str | None,
    overrides: dict[str, str],
    *,
    stop_when_idle_s: float | None,
    drain: bool,
) -> str | None:
    """Submit this job's entry point to a running Flink cluster with ``flink run``.

    The job is built in the ``flink run`` client from FLYWHEEL_* variables, so ``--set``
    overrides travel as ``FLYWHEEL_JOB_<NAME>``; the settings reach the Python workers
    inside the job graph.
    """
    import os
    import subprocess

    entry = Path(__file__).resolve().parent / "streaming_main.py"
    # -pyclientexec: the client that builds the job graph must be this venv's Python too
    # (else `flink run` takes the first `python` on PATH, without this project's packages).
    cmd = [
        _flink_cli(),
        "run",
        "-m",
        jobmanager,
        "-d",
        "-py",
        str(entry),
        "-pyexec",
        sys.executable,
        "-pyclientexec",
        sys.executable,
    ]
    if savepoint:
        cmd[2:2] = ["-s", savepoint]
    env = dict(os.environ)
    prefix = ctx.job.env_prefix()
    # Python operators run as processes on a cluster: in thread mode the TaskManager's
    # embedded interpreter has no JVM gateway, and PyFlink needs one to build the state's
    # TTL config (it tries to start a JVM of its own and fails). An explicit setting wins.
    env.setdefault(prefix + "PYTHON_EXECUTION_MODE", "process")
    env.update({prefix + key.upper(): value for key, value in overrides.items()})
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()
        hint = restore_failure_hint(output)
        if hint is not None:
            raise StaleStateError(f"flink run failed: {hint}")
        raise click.ClickException(
            f"flink run exited with {done.returncode}:\n{_cli_failure(output)}"
        )
    match = re.search(r"JobID ([0-9a-f]{32})", done.stdout + done.stderr)
    if match is None:
        raise click.ClickException(f"flink run printed no job id:\n{done.stdout}{done.stderr}")
    job = _ClusterJob(jobmanager, match.group(1))
    click.echo(f"submitted to {jobmanager} as job {job.job_id}")
    if stop_when_idle_s is None:
        return None
    from jobs.streaming import checkpoint_dir

    monitor = IdleMonitor(ctx.kafka, ctx.kafka.events_topic, ctx.job.consumer_group)
    try:
        while True:
            time.sleep(1.0)
            status, tasks_running = job.state()
            if status in ("FAILED", "CANCELED", "FINISHED"):
                cause = job.root_exception() if status == "FAILED" else ""
                raise click.ClickException(
                    f"feature job ended with status {status}{_explained(cause)}"
                )
            idle = monitor.idle_for()
            if not tasks_running:
                # Restarting (a TaskManager lost): offsets stand still because nothing
                # reads, not because the input is done; a stop now could not take a savepoint.
                monitor.reset()
            elif idle >= stop_when_idle_s:
                break
    finally:
        monitor.close()
    return job.stop_with_savepoint(checkpoint_dir(ctx) + "/savepoints", drain)


@click.command("run")
@click.option(
    "--jobmanager",
    default=None,
    help="Submit to a Flink cluster at HOST:PORT instead of the embedded MiniCluster.",
)
@click.option(
    "--stop-when-idle",
    "stop_when_idle",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Stop with a final savepoint once the input has been idle this long.",
)
@click.option(
    "--drain/--no-drain",
    default=True,
    show_default=True,
    help="On --stop-when-idle, advance to the end of event time so every open session closes.",
)
@click.option(
    "--from-savepoint",
    "savepoint",
    default=None,
    help="Resume from this savepoint or retained checkpoint.",
)
@click.option(
    "--fresh",
    is_flag=True,
    default=False,
    help="Ignore retained checkpoints and start from starting_offsets.",
)
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a job setting (e.g. --set session_gap=PT5M); env FLYWHEEL_JOB_* works too.",
)
def run(
    jobmanager: str | None,
    stop_when_idle: float | None,
    drain: bool,
    savepoint: str | None,
    fresh: bool,
    settings: tuple[str, ...],
) -> None:
    """Run the streaming feature job (Kafka -> Redis, Parquet, flagged, dead letters).

    Started again after a crash, it resumes from the newest completed checkpoint (or
    savepoint) in checkpoint_dir, so each closed session is still written once.
    """
    if fresh and savepoint:
        raise click.UsageError("--fresh and --from-savepoint exclude each other")
    overrides = _parse_overrides(settings)
    ctx = _load(overrides)
    try:
        final = run_streaming(
            ctx,
            stop_when_idle_s=stop_when_idle,
            drain=drain,
            savepoint=choose_resume_point(ctx, savepoint=savepoint, fresh=fresh),
            jobmanager=jobmanager,
            overrides=overrides,
        )
    except click.ClickException:
        raise
    except Exception as exc:  # noqa: BLE001 (Py4J errors carry the Java trace as text)
        hint = restore_failure_hint(str(exc))
        if hint is None:
            raise
        raise StaleStateError(f"feature job failed: {hint}") from exc
    if final:
        click.echo(f"stopped; final savepoint: {final}")


@click.command("backfill")
@click.option(
    "--events",
    "events_path",
    required=True,
    help="A JSON Lines file, a folder of *.jsonl, or an s3:// prefix.",
)
@click.option(
    "--out", "out_base", required=True, help="Output base: a local path or s3://bucket/prefix."
)
@click.option(
    "--set", "settings", multiple=True, metavar="KEY=VALUE", help="Override a job setting."
)
def backfill(events_path: str, out_base: str, settings: tuple[str, ...]) -> None:
    """Compute the contract's outputs over JSON Lines files in Flink's batch mode."""
    ctx = _load(_parse_overrides(settings))
    try:
        run_backfill(ctx, events_path, out_base)
    except Exception as exc:  # noqa: BLE001 - exit non-zero with the cause
        raise click.ClickException(f"backfill failed: {exc}") from exc
    click.echo(f"backfill written under {out_base}")


def run_backfill(ctx: Any, events_path: str, out_base: str) -> None:
    """Run the batch job to completion."""
    from jobs.streaming import build_backfill_job

    if "://" not in events_path:
        path = Path(events_path)
        if not path.exists():
            raise FileNotFoundError(f"no such events file or folder: {events_path}")
        events_path = path.resolve().as_uri()
    env, _ = build_backfill_job(ctx, events_path, out_base)
    env.execute("flywheel-backfill")

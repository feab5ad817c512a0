"""Throughput on realistic traffic: the feature job against a plain consumer, same backlog.

    .venv/bin/python tests/benchmarks/bench_realistic.py [--sessions 2000] [--partitions 6]

On the running local stack (``flywheel stack up``), in one run:
1. generates the realistic workload (``realistic_traffic.py``) and produces it to a fresh
   topic, plus one event per partition two hours after the backlog, so both systems
   close every session of it;
2. measures the encoder alone on a sample of the same user texts, and the encode-bound
   ceilings it implies (every text encoded; distinct texts only, as a cache allows);
3. runs the plain-consumer baseline (``plain_consumer.py``) in a child process;
4. runs the streaming job (embedded MiniCluster, the job's settings from the environment);
5. prints, for each: backlog wall time with and without start-up, events/s, peak memory
   of its process tree, and the ratio job / baseline.

A system's backlog time runs from its first record read to its last session closed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

from realistic_traffic import describe, generate  # noqa: E402


def tree_rss_mb(root_pid: int) -> float:
    """Resident memory of ``root_pid`` and all its descendants, in MiB."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            pages = int((entry / "statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        rss[pid] = pages * os.sysconf("SC_PAGE_SIZE")
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total / 2**20


def tree_cpu_seconds(root_pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of ``root_pid``'s tree, by kind of process."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    cpu: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        command = b" ".join(argv).decode("utf-8", "replace")
        if "jobs.embedding" in command:
            kind = "encoder child (Python, torch)"
        elif Path(argv[0].decode("utf-8", "replace")).name == "java":
            kind = "JVM (Flink, Kafka client, Python operators in thread mode)"
        else:
            kind = "other (this benchmark's Python, Beam workers)"
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        cpu[pid] = (kind, (int(fields[11]) + int(fields[12])) / tick)
    totals: dict[str, float] = {}
    stack = [root_pid]
    while stack:
        pid = stack.pop()
        if pid in cpu:
            kind, seconds = cpu[pid]
            totals[kind] = totals.get(kind, 0.0) + seconds
        stack.extend(children.get(pid, []))
    return totals


class PeakMemory:
    """Samples a process tree's RSS every 0.5 s in a thread; ``peak_mb`` once stopped."""

    def __init__(self, pid: int, exclude_self_baseline_mb: float = 0.0):
        self.pid, self.baseline, self.peak_mb = pid, exclude_self_baseline_mb, 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(0.5):
            self.peak_mb = max(self.peak_mb, tree_rss_mb(self.pid) - self.baseline)

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        return self.peak_mb


def produce(bootstrap: str, topic: str, stream, partitions: int) -> int:
    from confluent_kafka import Producer

    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True}
    )
    for delivery in stream.deliveries:
        while True:
            try:
                producer.produce(topic, delivery.raw, key=delivery.key)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    last_ms = max(e["ts_ms"] for e in stream.events)
    for partition in range(partitions):
        tick = {
            "event_id": f"tick-{partition}", "event_type": "fsm_state", "schema_version": 1,
            "session_id": f"tick-{partition}", "user_id": "bench",
            "ts_ms": last_ms + 2 * 3600 * 1000, "to_state": "greeting",
        }  # fmt: skip
        producer.produce(topic, json.dumps(tick).encode(), partition=partition)
    producer.flush()
    return len(stream.deliveries) + partitions


def encode_rate(texts: list[str], batch_size: int, backend: str, threads: int) -> float:
    from jobs.embedding import Embedder

    embedder = Embedder(batch_size=batch_size, threads=threads, backend=backend)  # type: ignore[arg-type]
    embedder.encode(texts[:32])
    started = time.perf_counter()
    embedder.encode(texts)
    return len(texts) / (time.perf_counter() - started)


def run_job(ctx, redis, prefix: str, sessions: int, records: int) -> dict[str, float]:
    from jobs.streaming import build_streaming_job

    memory = PeakMemory(os.getpid(), exclude_self_baseline_mb=tree_rss_mb(os.getpid()))
    cpu_before = tree_cpu_seconds(os.getpid())
    submitted = time.perf_counter()
    env, _ = build_streaming_job(ctx)
    client = env.execute_async("bench-realistic")
    first = None
    closed, changed_at = -1, time.perf_counter()
    try:
        while True:
            stats = redis.hgetall(f"{prefix}stats:total")
            counted = int(stats.get("events", 0)) + int(stats.get("dlq", 0))
            if counted and first is None:
                first = time.perf_counter()
            now_closed = int(stats.get("sessions_closed", 0))
            if now_closed != closed:
                closed, changed_at = now_closed, time.perf_counter()
            if closed >= sessions:
                break
            # Every record read and nothing closed for a while: some sessions never will.
            if counted >= records and time.perf_counter() - changed_at > 30:
                print(f"job: only {closed} of {sessions} sessions closed; late events: "
                      f"{stats.get('dlq:late_event', 0)}")  # fmt: skip
                break
            time.sleep(0.2)
        done = changed_at if closed < sessions else time.perf_counter()
        # Where the CPU went (the job's processes only live until the cancel below).
        for kind, seconds in sorted(tree_cpu_seconds(os.getpid()).items()):
            seconds -= cpu_before.get(kind, 0.0)
            print(f"  job CPU: {seconds:6.1f} s in {kind}")
    finally:
        client.cancel().result()
        peak = memory.stop()
    assert first is not None
    return {
        "startup_s": first - submitted,
        "backlog_s": done - first,
        "with_startup_s": done - submitted,
        "events_per_s": records / (done - first),
        "events_per_s_with_startup": records / (done - submitted),
        "peak_mb": peak,
    }


def run_baseline(topic: str, sessions: int, prefix: str) -> dict[str, float]:
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, str(HERE / "plain_consumer.py"), "--topic", topic,
         "--sessions", str(sessions), "--prefix", prefix],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    memory = PeakMemory(child.pid)
    out, _ = child.communicate(timeout=3600)
    peak = memory.stop()
    assert child.returncode == 0, out
    result = json.loads(out.strip().splitlines()[-1])
    result["with_startup_s"] = time.perf_counter() - started
    result["startup_s"] = result["with_startup_s"] - result["seconds"]
    result["peak_mb"] = peak
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()

    from deploy.stack import use_running_stack_for_unset_endpoints

    use_running_stack_for_unset_endpoints()
    from confluent_kafka.admin import AdminClient, NewTopic

    from connectors.settings import RedisSettings
    from jobs.streaming import load_context

    stream = generate(args.sessions, seed=args.seed)
    print("workload:", describe(stream), flush=True)
    suffix = uuid.uuid4().hex[:8]
    topic = f"bench-real-{suffix}"
    bootstrap = os.environ["FLYWHEEL_KAFKA_BOOTSTRAP_SERVERS"]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = [NewTopic(topic, args.partitions, 1)] + [
        NewTopic(f"{topic}-{kind}", 1, 1) for kind in ("flagged", "dlq")
    ]
    for future in admin.create_topics(new).values():
        future.result()
    records = produce(bootstrap, topic, stream, args.partitions)
    print(f"backlog: {records:,} records on {args.partitions} partitions", flush=True)

    os.environ["FLYWHEEL_KAFKA_EVENTS_TOPIC"] = topic
    os.environ["FLYWHEEL_KAFKA_FLAGGED_TOPIC"] = f"{topic}-flagged"
    os.environ["FLYWHEEL_KAFKA_DLQ_TOPIC"] = f"{topic}-dlq"
    texts = [e["text"] for e in stream.events if e["event_type"] == "user_message"]
    user_share = len(texts) / records
    distinct_share = len(set(texts)) / len(texts)
    job_settings = load_context().job
    batch, backend = job_settings.embedding_batch_size, job_settings.embedding_backend
    threads = job_settings.embedding_threads
    for other in ("torch", "onnx-int8"):
        if other != backend:
            print(f"encoder {other} alone: {encode_rate(texts[:2000], batch, other, threads):,.0f} "
                  f"texts/s on these texts ({threads} thread(s))", flush=True)  # fmt: skip
    rate = encode_rate(texts[:2000], batch, backend, threads)
    ceiling_all = rate / user_share
    ceiling_distinct = rate / (user_share * distinct_share)
    print(
        f"encoder {backend} alone (the job's): {rate:,.0f} texts/s on these texts "
        f"({threads} thread(s)) -> encode-bound ceiling "
        f"{ceiling_all:,.0f} events/s encoding every text, {ceiling_distinct:,.0f} events/s "
        f"encoding each distinct text once",
        flush=True,
    )

    redis = RedisSettings.load().client()
    base_prefix = f"bench-plain-{suffix}:"
    baseline = run_baseline(topic, args.sessions, base_prefix)
    print(
        f"plain consumer: {baseline['seconds']:.1f} s backlog "
        f"({baseline['with_startup_s']:.1f} s with start-up), "
        f"{baseline['events_per_s']:,.0f} events/s, peak {baseline['peak_mb']:,.0f} MiB",
        flush=True,
    )

    job_prefix = f"bench-job-{suffix}:"
    os.environ["FLYWHEEL_REDIS_KEY_PREFIX"] = job_prefix
    ctx = load_context(
        output_base=f"s3://{os.environ.get('FLYWHEEL_S3_BUCKET', 'flywheel')}/bench-{suffix}",
        consumer_group=f"bench-{suffix}",
    )
    job = run_job(ctx, redis, job_prefix, args.sessions, records)
    print(
        f"feature job: {job['backlog_s']:.1f} s backlog ({job['with_startup_s']:.1f} s with "
        f"start-up {job['startup_s']:.1f} s), {job['events_per_s']:,.0f} events/s "
        f"({job['events_per_s_with_startup']:,.0f} with start-up), peak {job['peak_mb']:,.0f} MiB"
    )
    baseline_with_startup = records / baseline["with_startup_s"]
    print(
        f"ratio job / plain consumer: {job['events_per_s'] / baseline['events_per_s']:.2f}x "
        f"without start-up, {job['events_per_s_with_startup'] / baseline_with_startup:.2f}x "
        f"with; job at {job['events_per_s'] / ceiling_all:.0%} of the every-text ceiling, "
        f"{job['events_per_s'] / ceiling_distinct:.0%} of the distinct-text ceiling"
    )


if __name__ == "__main__":
    main()

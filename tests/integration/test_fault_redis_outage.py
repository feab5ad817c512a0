"""Fault: Redis goes away while the job runs, and comes back.

Parquet and the flagged topic must keep flowing while Redis is unreachable; the job's
Redis writes wait in a bounded buffer (newest version per key) and, once Redis answers
again, the session hashes and the counters converge to the true values, each event and
each closed session counted once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from reference.contract_reference import compute_reference
from reference.generator import generate_stream
from reference.job_harness import job_sandbox, running_job
from reference.redis_server import PrivateRedis

pytestmark = [pytest.mark.integration, pytest.mark.flink, pytest.mark.slow]

SESSIONS = 1_000
OUTAGE_S = 60


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_redis_outage_loses_nothing_and_converges(
    stack_endpoints: Any,
    kafka_admin: Any,
    tmp_path: Path,
    private_redis: PrivateRedis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from connectors.settings import RedisSettings

    stream = generate_stream(SESSIONS, seed=606, span_ms=2 * 3600 * 1000)
    reference = compute_reference(stream.events)
    with (
        job_sandbox(stack_endpoints, kafka_admin, tmp_path, "redis-out", partitions=2) as box,
        monkeypatch.context() as env,
    ):
        env.setenv("FLYWHEEL_REDIS_URL", private_redis.url)
        half = len(stream.deliveries) // 2
        box.produce((d.key, d.raw) for d in stream.deliveries[:half])
        with running_job(box.context(embedding_enabled=False)) as run:
            client = RedisSettings.load().client()
            run.wait_for(
                lambda: int(client.hget(f"{box.redis_prefix}stats:total", "events") or 0) > 0,
                "the first Redis writes",
            )
            events_before = int(client.hget(f"{box.redis_prefix}stats:total", "events") or 0)
            private_redis.stop()
            outage_started = time.monotonic()
            box.produce((d.key, d.raw) for d in stream.deliveries[half:])
            # Parquet keeps flowing while Redis is away.
            written_during = run.wait_for(
                lambda: len(box.parquet_rows("flywheel/session_features")) > 0,
                "Parquet output during the outage",
            )
            assert time.monotonic() - outage_started < OUTAGE_S + written_during + 5
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - outage_started)))
            private_redis.start()
            back_at = time.monotonic()
            run.wait_for(
                lambda: (
                    int(client.hget(f"{box.redis_prefix}stats:total", "events") or 0)
                    > events_before
                ),
                "the first Redis write after the outage",
            )
            print(
                f"\nRedis outage {OUTAGE_S} s: Parquet rows {written_during:.1f} s into it; "
                f"Redis written again {time.monotonic() - back_at:.1f} s after it came back"
            )
            run.stop_when_idle(idle_s=4, drain=True)

        rows = box.parquet_rows("flywheel/session_features")
        keys = [(r["session_id"], r["session_start_ms"]) for r in rows]
        assert len(keys) == len(set(keys)) and set(keys) == set(reference.rows)
        flagged = [m for _, m in box.read_json_topic(box.flagged_topic)]
        flagged_keys = [(m["session_id"], m["session_start_ms"]) for m in flagged]
        assert len(flagged_keys) == len(set(flagged_keys))
        assert set(flagged_keys) == set(reference.flagged)

        client = RedisSettings.load().client()
        for session_id, row in reference.last_row_by_session_id.items():
            stored = client.hgetall(f"{box.redis_prefix}session:{session_id}")
            assert stored.get("status") == "closed", session_id
            assert int(stored["event_count"]) == row["event_count"], session_id
            assert stored["reasons"] == ",".join(row["reasons"]), session_id
        totals = {k: int(v) for k, v in client.hgetall(f"{box.redis_prefix}stats:total").items()}
        assert totals["events"] == len(stream.deliveries) - len(stream.invalid)
        assert totals["dlq"] == len(stream.invalid)
        assert totals["sessions_closed"] == len(reference.rows)
        assert totals.get("sessions_flagged", 0) == len(reference.flagged)

"""State TTL: a session id idle for ``state_ttl`` is forgotten, and what is forgotten is counted.

One streaming run with an 8 s ``state_ttl`` (the default is 2 days), a 20 s session gap
and a 30 s idle timeout. Two sessions lie a few minutes in the future, so wall-clock idle
advance cannot close them during the run:

- ``ttl-a`` is closed by event time (``ttl-b``'s events move the watermark past it); its
  id stays in state with nothing open, and state_ttl later it is forgotten:
  ``expired_session_ids`` + 1.
- ``ttl-b`` stays open; when its idle timer looks, it has been idle longer than state_ttl
  and is dropped without a row: ``expired_session_ids`` + 1, ``expired_open_sessions`` + 1.

An event for a forgotten id is judged by the watermark alone: late when its own session
would already be closed (``ttl-a``'s), else the start of a new session (``ttl-b``'s,
which is not merged into the dropped one). State_ttl must be far longer than any delay
after which events still arrive.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from reference.generator import encode_event
from reference.generator import literal_event as event
from reference.job_harness import JobSandbox, job_sandbox, running_job

pytestmark = [pytest.mark.integration, pytest.mark.flink]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _produce(box: JobSandbox, events: list[dict[str, Any]]) -> None:
    box.produce((e["session_id"].encode(), encode_event(e)) for e in events)


@pytest.fixture(scope="module")
def scenario(
    stack_endpoints: Any, kafka_admin: Any, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    with job_sandbox(stack_endpoints, kafka_admin, tmp_path_factory.mktemp("ttl"), "ttl") as box:
        ctx = box.context(
            session_gap="PT20S", idle_timeout="PT30S", state_ttl="PT8S", embedding_enabled=False
        )
        client = box.redis()
        now = _now_ms()
        a_start, b_start = now + 200_000, now + 300_000
        _produce(
            box,
            [
                event("ttl-a", 1, "user_message", a_start, text="Is the kettle in stock?"),
                event("ttl-a", 2, "assistant_message", a_start + 2_000, text="It is."),
                event("ttl-b", 1, "user_message", b_start, text="hello"),
            ],
        )
        out: dict[str, Any] = {}
        with running_job(ctx) as run:
            run.wait_for(
                lambda: client.hget(f"{box.redis_prefix}session:ttl-a", "status") == "closed",
                "ttl-a to close by event time",
            )
            out["expired_s"] = run.wait_for(
                lambda: box.stats().get("expired_session_ids", 0) >= 2,
                "both session ids to expire",
            )
            out["stats_after_expiry"] = box.stats()
            # Both ids are forgotten: only the watermark decides about these.
            _produce(
                box,
                [
                    event("ttl-a", 3, "cart_add", a_start + 3_000, sku="k1"),
                    event("ttl-b", 2, "user_message", b_start + 1_000, text="anyone?"),
                ],
            )
            run.wait_for(lambda: box.stats().get("events", 0) >= 5, "the two later events")
            run.stop_when_idle(idle_s=3, drain=False)
        out["rows"] = box.parquet_rows("flywheel/session_features")
        out["stats"] = box.stats()
        return out


def test_expired_state_is_counted(scenario: dict[str, Any]) -> None:
    stats = scenario["stats_after_expiry"]
    assert stats["expired_session_ids"] == 2
    assert stats["expired_open_sessions"] == 1
    # ttl-b was open when it went stale (30 s idle timer), ttl-a some 8 s after closing.
    assert scenario["expired_s"] < 60


def test_an_expired_open_session_is_never_written(scenario: dict[str, Any]) -> None:
    rows = [(r["session_id"], r["event_count"]) for r in scenario["rows"]]
    assert rows == [("ttl-a", 2)]
    assert scenario["stats"]["sessions_closed"] == 1


def test_events_after_expiry_are_judged_by_the_watermark_alone(scenario: dict[str, Any]) -> None:
    stats = scenario["stats"]
    assert stats["events"] == 5
    # ttl-a's cart_add lies in a session the watermark has passed: late. ttl-b's message
    # opens a new session (not written: the job stopped without a drain).
    assert stats["dlq"] == 1 and stats["dlq:late_event"] == 1
    assert stats.get("duplicates", 0) == 0
    assert stats["expired_session_ids"] == 2 and stats["expired_open_sessions"] == 1

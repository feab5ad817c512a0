"""Idle input advances event time; late events are dead-lettered, never merged.

One streaming run with a 20 s session gap and a 3 s idle timeout, in two phases:

1. Idle advance: sessions whose events lie in the recent past. Their own events cannot
   close them (the watermark they make is far below end + gap); with no further input
   the job must close them after the idle timeout, while it keeps running, without a
   drain. Then an event for one of them arrives: late.
2. Event time: sessions in the near future. Events of a later session move the watermark
   past the end of an earlier one, which closes (the idle rule cannot close it: wall-clock
   time is still before it). Then an event for it arrives: late.

The job is finally stopped *without* draining: the session still open is not written.
A custom rule file (the defaults plus one rule) is used, which checks that rules come
from the file.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from reference.contract_reference import (
    DEFAULT_RULES,
    ContractConfig,
    compute_reference,
    redis_fields,
)
from reference.generator import encode_event
from reference.generator import literal_event as event
from reference.job_harness import JobSandbox, job_sandbox, running_job

pytestmark = [pytest.mark.integration, pytest.mark.flink]

GAP_MS = 20_000
RULES = {**DEFAULT_RULES, "chatty": lambda r: r["user_turns"] >= 2}
RULES_YAML = """
rules:
  - {id: cta_ignored, expression: cta_not_clicked_count > 0 and no_order}
  - {id: stuck_loop, expression: repeated_question_count > 0 and fsm_stalled}
  - {id: abandoned, expression: long_silence_count > 0 and no_conversion}
  - {id: explicit_negative, expression: negative_feedback_count > 0}
  - id: uncertain_and_corrected
    expression: low_confidence_count > 0 and (correction_count > 0 or repeated_question_count > 0)
  - {id: chatty, expression: user_turns >= 2}
"""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def idle_phase_events(now: int) -> list[dict[str, Any]]:
    return [
        event(
            "idle-c1",
            1,
            "user_message",
            now - 60_000,
            text="Do you ship to Oslo?",
            intent_confidence=0.4,
        ),
        event("idle-c1", 2, "assistant_message", now - 58_000, text="Yes", response_time_ms=2_000),
        event("idle-c1", 3, "user_message", now - 55_000, text="Actually, to Bergen"),
        event("idle-c2", 1, "cta_sent", now - 50_000, cta_id="c"),
        event("idle-c2", 2, "cta_click", now - 45_000, cta_id="c"),
    ]


def event_time_phase_events(now: int) -> list[dict[str, Any]]:
    return [
        event("late-a", 1, "user_message", now + 200_000, text="Is the kettle in stock?"),
        event("late-a", 2, "assistant_message", now + 202_000, text="It is.", model_version="m1"),
        event("late-a", 3, "feedback", now + 203_000, kind="thumbs_down"),
        event("late-b", 1, "user_message", now + 300_000, text="hello"),
    ]


def _produce(box: JobSandbox, events: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return box.produce((e["session_id"].encode(), encode_event(e)) for e in events)


@pytest.fixture(scope="module")
def scenario(
    stack_endpoints: Any, kafka_admin: Any, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("idle")
    rules_path = tmp / "rules.yaml"
    rules_path.write_text(RULES_YAML)
    with job_sandbox(stack_endpoints, kafka_admin, tmp, "idle") as box:
        out: dict[str, Any] = {"box": box, "accepted": [], "late": []}
        ctx = box.context(
            session_gap="PT20S",
            idle_timeout="PT3S",
            embedding_enabled=False,
            rules_path=str(rules_path),
        )
        client = box.redis()

        def status(session_id: str) -> str | None:
            return client.hget(f"{box.redis_prefix}session:{session_id}", "status")

        def late_count() -> int:
            return int(client.hget(f"{box.redis_prefix}stats:total", "dlq:late_event") or 0)

        idle_events = idle_phase_events(_now_ms())
        _produce(box, idle_events)
        out["accepted"] += idle_events
        with running_job(ctx) as run:
            # 1. No more input: the idle timeout must close both sessions.
            out["idle_close_s"] = run.wait_for(
                lambda: status("idle-c1") == "closed" and status("idle-c2") == "closed",
                "idle sessions to close",
            )
            out["status_when_idle_closed"] = run.status()
            late_idle = event(
                "idle-c1", 9, "user_message", idle_events[0]["ts_ms"] + 1_000, text="one more thing"
            )
            out["late"].append((late_idle, _produce(box, [late_idle])[0]))
            run.wait_for(lambda: late_count() >= 1, "the first late event")

            # 2. Later events move the watermark past the end of late-a.
            future_events = event_time_phase_events(_now_ms())
            _produce(box, future_events)
            out["accepted"] += future_events
            run.wait_for(lambda: status("late-a") == "closed", "late-a to close by event time")
            out["late_b_status_when_a_closed"] = status("late-b")
            late_a = event("late-a", 9, "cart_add", future_events[0]["ts_ms"] + 500, sku="k1")
            out["late"].append((late_a, _produce(box, [late_a])[0]))
            run.wait_for(lambda: late_count() >= 2, "the second late event")

            run.stop_when_idle(idle_s=3, drain=False)

        out["rows"] = box.parquet_rows("flywheel/session_features")
        out["hashes"] = box.session_hashes(["idle-c1", "idle-c2", "late-a", "late-b"])
        out["dead_letters"] = box.read_json_topic(box.dlq_topic)
        out["flagged"] = box.read_json_topic(box.flagged_topic)
        out["stats"] = box.stats()
        out["reference"] = compute_reference(
            out["accepted"], ContractConfig(session_gap_ms=GAP_MS), RULES
        )
        yield out


def test_idle_input_closes_sessions_while_the_job_runs(scenario: dict[str, Any]) -> None:
    assert scenario["status_when_idle_closed"] == "RUNNING"
    # Closed some seconds after the input stopped (3 s idle timeout), not at a drain.
    assert scenario["idle_close_s"] < 60


def test_later_events_close_an_earlier_session(scenario: dict[str, Any]) -> None:
    assert scenario["late_b_status_when_a_closed"] == "open"


def test_late_events_are_dead_lettered_with_their_source(scenario: dict[str, Any]) -> None:
    box: JobSandbox = scenario["box"]
    letters = {m["source_offset"]: m for _, m in scenario["dead_letters"]}
    assert len(letters) == len(scenario["late"]) == 2
    for late, (partition, offset) in scenario["late"]:
        message = letters[offset]
        assert message["reason"] == "late_event"
        assert message["event_id"] == late["event_id"]
        assert message["session_id"] == late["session_id"]
        assert message["source_topic"] == box.events_topic
        assert message["source_partition"] == partition
        assert json.loads(message["raw"]) == late
    stats = scenario["stats"]
    assert stats["dlq:late_event"] == 2 and stats["dlq"] == 2


def test_late_events_are_never_merged(scenario: dict[str, Any]) -> None:
    reference = scenario["reference"]
    rows = {(r["session_id"], r["session_start_ms"]): r for r in scenario["rows"]}
    closed = {k: v for k, v in reference.rows.items() if k[0] != "late-b"}
    assert set(rows) == set(closed), "exactly the closed sessions, each once"
    for key, expected in closed.items():
        got = {
            name: (list(rows[key][name]) if name == "reasons" else rows[key][name])
            for name in expected
        }
        assert got == expected
    for session_id in ("idle-c1", "idle-c2", "late-a"):
        fields = scenario["hashes"][session_id]
        assert fields["status"] == "closed"
        expected_fields = redis_fields(reference.last_row_by_session_id[session_id])
        assert {k: fields[k] for k in expected_fields} == expected_fields


def test_open_session_is_not_written_without_a_drain(scenario: dict[str, Any]) -> None:
    assert scenario["hashes"]["late-b"]["status"] == "open"
    assert not [r for r in scenario["rows"] if r["session_id"] == "late-b"]
    assert scenario["stats"]["sessions_closed"] == 3


def test_rules_come_from_the_rule_file(scenario: dict[str, Any]) -> None:
    rows = {r["session_id"]: r for r in scenario["rows"]}
    assert "chatty" in rows["idle-c1"]["reasons"]
    assert "explicit_negative" in rows["late-a"]["reasons"]
    flagged = {m["session_id"]: m for _, m in scenario["flagged"]}
    reference = scenario["reference"]
    assert set(flagged) == {k[0] for k in reference.flagged}
    for session_id, message in flagged.items():
        assert message == reference.flagged[(session_id, message["session_start_ms"])]

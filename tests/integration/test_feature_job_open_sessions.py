"""Open sessions on Redis: written as events arrive, and again when a window runs out.

One streaming run with embeddings on. Two sessions stay open the whole time (10 min gap):
``open-w`` repeats a question, leaves the last assistant message unanswered and a CTA
unclicked; ``open-ok`` answers and clicks in time. Their hashes must first show every
event with no window run out yet, then, once a later event moves event time past the
CTA window and the silence gap, show the not-clicked CTA and the long silence while
still open. The job keeps only the event-time timers that can change something, so this
also checks that the timers it keeps are the right ones.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from reference.generator import encode_event
from reference.generator import literal_event as event
from reference.job_harness import job_sandbox, running_job

pytestmark = [pytest.mark.integration, pytest.mark.flink]

CTA_WINDOW_MS = 60_000
SILENCE_MS = 30_000
BOUND_MS = 10_000


def huge_session(t0: int) -> list[dict[str, Any]]:
    """A session whose full flagged message (about 1.3 MB) would not fit one Kafka record.

    It ends 15 minutes before ``t0``, so the events at ``t0`` close it (10-minute gap).
    """
    start = t0 - 20 * 60_000
    events = [
        event("huge", n, "user_message", start + n * 1_000, text="x" * 32_000,
              intent_confidence=0.2)
        for n in range(40)
    ]  # fmt: skip
    events.append(event("huge", 99, "feedback", start + 60_000, kind="thumbs_down"))
    return events


def first_events(t0: int) -> list[dict[str, Any]]:
    return [
        event("open-w", 1, "user_message", t0, text="Do you ship to Oslo?"),
        event("open-w", 2, "assistant_message", t0 + 1_000, text="We do."),
        event("open-w", 3, "user_message", t0 + 2_000, text="do you ship to oslo"),
        event("open-w", 4, "assistant_message", t0 + 3_000, text="Yes, in 3 days."),
        event("open-w", 5, "cta_sent", t0 + 4_000, cta_id="c1"),
        event("open-ok", 1, "user_message", t0, text="Is the kettle in stock?"),
        event("open-ok", 2, "assistant_message", t0 + 1_000, text="It is."),
        event("open-ok", 3, "user_message", t0 + 2_000, text="Great, thanks"),
        event("open-ok", 4, "cta_sent", t0 + 3_000, cta_id="c2"),
        event("open-ok", 5, "cta_click", t0 + 5_000, cta_id="c2"),
    ]


@pytest.fixture(scope="module")
def snapshots(
    stack_endpoints: Any, kafka_admin: Any, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("open-sessions")
    with job_sandbox(stack_endpoints, kafka_admin, tmp, "open") as box:
        ctx = box.context(
            session_gap="PT10M",
            idle_timeout="PT10M",
            cta_window="PT1M",
            silence_gap="PT30S",
            max_out_of_order="PT10S",
        )
        t0 = time.time_ns() // 1_000_000

        def hashes() -> dict[str, dict[str, str]]:
            return box.session_hashes(["open-w", "open-ok"])

        def counted_all(expected: int) -> bool:
            return all(h.get("event_count") == str(expected) for h in hashes().values())

        out: dict[str, Any] = {}
        with running_job(ctx) as run:
            box.produce(
                (e["session_id"].encode(), encode_event(e))
                for e in huge_session(t0) + first_events(t0)
            )
            run.wait_for(lambda: counted_all(5), "both open sessions on Redis")
            out["before"] = hashes()
            # Event time moves past both window deadlines of open-w, not past its gap.
            latest_deadline = max(t0 + 4_000 + CTA_WINDOW_MS, t0 + 3_000 + SILENCE_MS)
            ticker = event("ticker", 1, "fsm_state", latest_deadline + BOUND_MS + 1, to_state="x")
            box.produce([(b"ticker", encode_event(ticker))])
            run.wait_for(
                lambda: hashes()["open-w"].get("cta_not_clicked_count") == "1",
                "the CTA window of open-w to run out",
            )
            run.wait_for(
                lambda: hashes()["open-w"].get("long_silence_count") == "1",
                "the silence gap of open-w to run out",
            )
            out["after"] = hashes()
            run.wait_for(lambda: len(box.read_json_topic(box.flagged_topic)) >= 1, "huge flagged")
            out["status"] = run.status()
        out["flagged"] = box.read_json_topic(box.flagged_topic)
        out["huge_hash"] = box.session_hashes(["huge"])["huge"]
        yield out


def test_open_sessions_are_written_as_events_arrive(snapshots: dict[str, Any]) -> None:
    before = snapshots["before"]
    assert before["open-w"]["status"] == before["open-ok"]["status"] == "open"
    assert before["open-w"]["repeated_question_count"] == "1"  # its vector was waited for
    assert before["open-ok"]["repeated_question_count"] == "0"
    # No window has run out yet: neither is counted before its deadline.
    assert before["open-w"]["cta_not_clicked_count"] == "0"
    assert before["open-w"]["long_silence_count"] == "0"
    assert before["open-ok"]["cta_clicked_count"] == "1"


def test_windows_running_out_update_open_sessions(snapshots: dict[str, Any]) -> None:
    after = snapshots["after"]
    assert after["open-w"]["status"] == "open"
    assert after["open-w"]["event_count"] == "5"
    assert after["open-w"]["cta_not_clicked_count"] == "1"
    assert after["open-w"]["long_silence_count"] == "1"
    assert int(after["open-w"]["updated_ms"]) > int(snapshots["before"]["open-w"]["updated_ms"])


def test_answered_and_clicked_in_time_never_turn(snapshots: dict[str, Any]) -> None:
    after = snapshots["after"]["open-ok"]
    assert after["status"] == "open"
    assert (after["cta_not_clicked_count"], after["long_silence_count"]) == ("0", "0")
    assert after["cta_clicked_count"] == "1"


def test_a_flagged_message_too_large_for_one_record_is_cut_to_fit(
    snapshots: dict[str, Any],
) -> None:
    import json

    assert snapshots["status"] == "RUNNING"  # no restart loop on a record too large
    assert snapshots["huge_hash"]["status"] == "closed"
    [(key, message)] = snapshots["flagged"]
    assert key == "huge"
    assert len(json.dumps(message, ensure_ascii=False).encode()) <= 1_000_000  # as sent
    assert message["truncated_texts"] == 40
    assert len(message["transcript"]) == 40
    assert {len(turn["text"]) for turn in message["transcript"]} == {
        len(message["transcript"][0]["text"])
    }
    assert 20_000 < len(message["transcript"][0]["text"]) < 32_000
    assert message["features"]["user_turns"] == 40
    assert "explicit_negative" in message["reasons"]

"""Write a realistic hour of flywheel state into Redis, the way the jobs write it.

Stands in for the feature job and the training loop until the browser test is
fed by the real pipeline: same keys, same field names, same increments
(`HINCRBY` on the running total and on the current minute's bucket).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from typing import Any

MINUTE_STATS_TTL_S = 2 * 24 * 3600
SESSION_TTL_S = 7 * 24 * 3600

FLAG_REASONS = (
    "cta_ignored",
    "abandoned",
    "explicit_negative",
    "stuck_loop",
    "uncertain_and_corrected",
)
DLQ_REASONS = ("invalid_json", "missing_field", "late_event", "unknown_event_type")
IMPLICIT_SIGNALS = (
    "cta_not_clicked",
    "no_order",
    "long_silence",
    "repeated_question",
    "low_confidence",
    "correction",
)


@dataclass(frozen=True)
class SeededFlywheel:
    """What was written: enough for a test to know which ids to look up."""

    prefix: str
    end_minute: int
    minutes: int
    flagged_session_id: str
    open_session_id: str
    stable: str
    canary: str


def _count(pipe: Any, prefix: str, minute: int | None, counters: dict[str, int]) -> None:
    """Like the job: add to the total and (when given) to that minute's bucket."""
    for name, value in counters.items():
        if value:
            pipe.hincrby(f"{prefix}stats:total", name, value)
            if minute is not None:
                pipe.hincrby(f"{prefix}stats:minute:{minute}", name, value)
    if minute is not None:
        pipe.expire(f"{prefix}stats:minute:{minute}", MINUTE_STATS_TTL_S)


def _minute_counters(rng: random.Random, i: int) -> dict[str, int]:
    events = int(140 + 60 * math.sin(i / 9) + 25 * math.sin(i / 2.3) + rng.randint(-12, 12))
    explicit = max(0, int(events * 0.07) + rng.randint(-3, 3))
    negative = min(explicit, int(explicit * 0.35) + rng.randint(0, 2))
    closed = max(1, events // 14 + rng.randint(-2, 2))
    counters = {
        "events": events,
        "duplicates": rng.randint(0, 3),
        "explicit_signals": explicit,
        "negative_feedback": negative,
        "sessions_closed": closed,
    }
    implicit = 0
    for signal in IMPLICIT_SIGNALS:
        n = rng.randint(0, 3 if signal in ("no_order", "cta_not_clicked") else 1)
        counters[f"implicit:{signal}"] = n
        implicit += n
    counters["implicit_signals"] = implicit
    flagged = 0
    for reason, weight in zip(FLAG_REASONS, (3, 2, 2, 1, 1), strict=True):
        n = rng.randint(0, weight) if rng.random() < 0.6 else 0
        counters[f"flagged:{reason}"] = n
        flagged += n
    counters["sessions_flagged"] = min(flagged, closed)
    counters["pool_samples_added"] = (
        rng.choice((0, 0, 1, 2, 3)) if i % 3 else counters["sessions_flagged"]
    )
    dlq = 0
    for reason in DLQ_REASONS:
        n = 1 if rng.random() < (0.25 if reason == "late_event" else 0.1) else 0
        counters[f"dlq:{reason}"] = n
        dlq += n
    counters["dlq"] = dlq
    return counters


def session_columns(session_id: str, now_ms: int, *, flagged: bool, closed: bool) -> dict[str, str]:
    """A session hash as the job writes it (bools 0/1, reasons comma-joined, null empty)."""
    start = now_ms - 14 * 60_000
    reasons = "cta_ignored,explicit_negative" if flagged else ""
    return {
        "session_id": session_id,
        "user_id": f"u-{session_id[-4:]}",
        "session_start_ms": str(start),
        "session_end_ms": str(now_ms - 90_000),
        "event_count": "17" if flagged else "6",
        "user_turns": "6" if flagged else "2",
        "assistant_turns": "6" if flagged else "2",
        "cta_sent_count": "2" if flagged else "1",
        "cta_clicked_count": "0" if flagged else "1",
        "cta_not_clicked_count": "2" if flagged else "0",
        "order_count": "0",
        "carted": "0" if flagged else "1",
        "no_order": "1",
        "no_conversion": "1" if flagged else "0",
        "repeated_question_count": "1" if flagged else "0",
        "fsm_state_final": "objection_handling" if flagged else "product_info",
        "fsm_transitions": "3" if flagged else "1",
        "max_stall_turns": "2" if flagged else "1",
        "fsm_stalled": "0",
        "long_silence_count": "0",
        "low_confidence_count": "1" if flagged else "0",
        "min_intent_confidence": "0.41" if flagged else "0.88",
        "correction_count": "1" if flagged else "0",
        "negative_feedback_count": "1" if flagged else "0",
        "positive_feedback_count": "0" if flagged else "1",
        "slow_response_count": "0",
        "model_version": "lora-2024-06-03" if flagged else "lora-2024-05-20",
        "reasons": reasons,
        "flagged": "1" if flagged else "0",
        "status": "closed" if closed else "open",
        "updated_ms": str(now_ms - 30_000),
        "version": f"{start:016d}:{int(closed)}:{17 if flagged else 6:08d}:{now_ms - 30_000:016d}",
    }


def seed_flywheel(client: Any, prefix: str, now_ms: int, *, minutes: int = 60) -> SeededFlywheel:
    """Write one hour of per-minute stats plus pool, registry, models and two sessions."""
    rng = random.Random(20240603)
    end_minute = now_ms // 60_000
    pipe = client.pipeline(transaction=False)
    # What happened before the charted hour: in the totals only.
    earlier = _minute_counters(rng, -1)
    _count(pipe, prefix, None, {name: value * 240 for name, value in earlier.items()})
    for i, minute in enumerate(range(end_minute - minutes + 1, end_minute + 1)):
        _count(pipe, prefix, minute, _minute_counters(rng, i))

    pipe.hset(
        f"{prefix}pool",
        mapping={
            "samples_total": 1873,
            "labeled_high": 1204,
            "labeled_medium": 512,
            "review_queue": 157,
        },
    )
    stable, canary, retired = "lora-2024-05-20", "lora-2024-06-03", "lora-2024-05-06"
    pipe.hset(
        f"{prefix}registry",
        mapping={
            "stable": stable,
            "canary": canary,
            "canary_share": "0.1",
            "updated_ms": str(now_ms - 3_600_000),
        },
    )
    for decision in (
        {
            "action": "promote",
            "version": stable,
            "decided_at_ms": now_ms - 86_400_000,
            "reason": "canary healthy",
        },
        {"action": "canary", "version": canary, "share": 0.1, "decided_at_ms": now_ms - 3_600_000},
    ):
        pipe.rpush(f"{prefix}registry:log", json.dumps(decision))
    for version, sessions, negative, flagged in (
        (stable, 9140, 822, 1460),
        (canary, 1012, 71, 139),
        (retired, 20400, 2510, 3880),
    ):
        pipe.hset(
            f"{prefix}model:{version}",
            mapping={
                "sessions": sessions,
                "negative_sessions": negative,
                "flagged_sessions": flagged,
            },
        )

    flagged_id, open_id = "s-7f3a9c21", "s-51be07d4"
    for session_id, flagged, closed in ((flagged_id, True, True), (open_id, False, False)):
        key = f"{prefix}session:{session_id}"
        pipe.delete(key)
        pipe.hset(key, mapping=session_columns(session_id, now_ms, flagged=flagged, closed=closed))
        pipe.expire(key, SESSION_TTL_S)
    pipe.execute()
    return SeededFlywheel(
        prefix=prefix,
        end_minute=end_minute,
        minutes=minutes,
        flagged_session_id=flagged_id,
        open_session_id=open_id,
        stable=stable,
        canary=canary,
    )

"""The test oracle itself: hand-checked contract cases, the generator, and agreement with features/.

The integration tests trust ``contract_reference``; these cases pin it to the contract's
text (computed by hand), and a cross-check against the production ``features`` package
on a generated stream finds disagreements without starting Flink.
"""

from __future__ import annotations

import pytest

from reference.contract_reference import (
    ContractConfig,
    compute_reference,
    flagged_message,
    has_correction_marker,
    normalize_text,
    session_row,
    split_into_sessions,
)
from reference.generator import MAX_JITTER_MS, generate_stream

T0 = 1_772_359_200_000
MIN = 60_000


def ev(n: int, event_type: str, ts: int, **fields: object) -> dict:
    return {
        "event_id": f"e{n:03d}",
        "event_type": event_type,
        "schema_version": 1,
        "session_id": "s",
        "user_id": "u",
        "ts_ms": T0 + ts,
        **fields,
    }


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("Can I pay with PayPal?", "canipaywithpaypal"),
        ("什么时候 发货？", "什么时候发货"),
        ("👍", ""),
        ("Straße\tnr. 5", "strassenr5"),
        ("a\u00a0b\u2003c", "abc"),  # no-break and em spaces are Z*
    ],
)
def test_normalized_text(text: str, normalized: str) -> None:
    assert normalize_text(text) == normalized


@pytest.mark.parametrize(
    ("text", "holds"),
    [
        ("Actually I wanted the blue one", True),
        ("WRONG!", True),
        ("That’s not what I asked", True),
        ("that's   not it", True),
        ("wrong_size.pdf", True),  # "_" is neither letter nor digit
        ("不对，我要的是蓝色的", True),
        ("我觉得其实还行", True),
        ("I was wrongly charged", False),
        ("Factually, is it cotton?", False),
        ("thats not bad", False),
        ("Hi meant to ask", False),
        ("actually2 is my name", False),
        ("是不是包邮", False),
        ("", False),
    ],
)
def test_correction_markers(text: str, holds: bool) -> None:
    assert has_correction_marker(text) is holds


def test_sessions_split_at_exactly_the_gap() -> None:
    gap = 30 * MIN
    events = [
        ev(1, "order", 0, order_id="o"),
        ev(2, "order", gap - 1, order_id="o"),
        ev(3, "order", 2 * gap - 1, order_id="o"),
        ev(2, "order", gap - 1, order_id="o"),
    ]
    sessions = split_into_sessions(events, gap)
    assert [[e["event_id"] for e in s] for s in sessions] == [["e001", "e002"], ["e003"]]


def test_hand_computed_session() -> None:
    events = [
        ev(1, "fsm_state", 0, to_state="greeting"),
        ev(2, "user_message", 1_000, text="Do you ship to Lyon?", intent_confidence=0.6),
        ev(3, "assistant_message", 2_000, text="Yes", response_time_ms=15_000, model_version="m1"),
        ev(4, "cta_sent", 3_000, cta_id="c1"),
        ev(5, "user_message", 4_000, text="Actually, to Paris", intent_confidence=0.59),
        ev(6, "fsm_state", 5_000, to_state="greeting"),  # self-transition: not counted
        ev(7, "assistant_message", 6_000, text="Sure", response_time_ms=15_001),
        ev(8, "user_message", 6_000 + 5 * MIN, text="do you ship to lyon"),  # exactly at the gap
        ev(9, "cta_click", 3_000 + 10 * MIN, cta_id="c1"),  # exactly at the window's end
        ev(10, "cta_sent", 20 * MIN, cta_id="c2"),
        ev(11, "cta_click", 20 * MIN, cta_id="c2"),  # same ts, id sorts after: clicked
        ev(12, "cta_sent", 21 * MIN, cta_id="c3"),
        ev(13, "assistant_message", 22 * MIN, text="Anything else?", model_version="m2"),
        ev(14, "feedback", 23 * MIN, kind="rating", rating=2),
        ev(15, "feedback", 23 * MIN + 1, kind="thumbs_up", rating=1),
        ev(16, "feedback", 23 * MIN + 2, kind="rating", rating=3),
    ]
    row = session_row(sorted(events, key=lambda e: (e["ts_ms"], e["event_id"])), ContractConfig())
    assert row == {
        "session_id": "s",
        "user_id": "u",
        "session_start_ms": T0,
        "session_end_ms": T0 + 23 * MIN + 2,
        "event_count": 16,
        "user_turns": 3,
        "assistant_turns": 3,
        "cta_sent_count": 3,
        "cta_clicked_count": 2,
        "cta_not_clicked_count": 1,
        "order_count": 0,
        "carted": False,
        "no_order": True,
        "no_conversion": False,
        "repeated_question_count": 1,
        "fsm_state_final": "greeting",
        "fsm_transitions": 1,
        "max_stall_turns": 3,
        "fsm_stalled": True,
        "long_silence_count": 1,
        "low_confidence_count": 1,
        "min_intent_confidence": 0.59,
        "correction_count": 1,
        "negative_feedback_count": 1,
        "positive_feedback_count": 1,
        "slow_response_count": 1,
        "model_version": "m2",
        # A click happened, so no "abandoned" despite the silence.
        "reasons": ["cta_ignored", "explicit_negative", "stuck_loop", "uncertain_and_corrected"],
        "flagged": True,
    }
    message = flagged_message(events, row)
    assert [m["role"] for m in message["transcript"]] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert message["transcript"][1]["intent_confidence"] is None
    assert [f["rating"] for f in message["feedback"]] == [2, 1, 3]


def test_similarity_counts_a_repeat_at_or_above_the_threshold() -> None:
    events = [
        ev(1, "user_message", 0, text="a"),
        ev(2, "user_message", 1, text="b"),
        ev(3, "user_message", 2, text="c"),
    ]
    cosines = {frozenset("ab"): 0.85, frozenset("ac"): 0.2, frozenset("bc"): 0.84999}
    row = session_row(events, similarity=lambda x, y: cosines[frozenset(x + y)])
    assert row["repeated_question_count"] == 1


def test_generator_is_seeded_and_never_beyond_the_bound() -> None:
    first, second = generate_stream(300, seed=5), generate_stream(300, seed=5)
    assert [d.raw for d in first.deliveries] == [d.raw for d in second.deliveries]
    highest = 0
    for delivery in first.deliveries:
        if delivery.event is not None:
            assert delivery.event["ts_ms"] > highest - MAX_JITTER_MS
            highest = max(highest, delivery.event["ts_ms"])
    ids = [e["event_id"] for e in first.events]
    assert len(ids) == len(set(ids))


def test_invalid_lines_get_the_reasons_the_parser_gives() -> None:
    from schemas import ParseError, parse

    for line in generate_stream(10, seed=1).deliveries:
        result = parse(line.raw)
        if line.invalid is not None:
            assert isinstance(result, ParseError) and result.reason == line.invalid.reason, (
                line.invalid.name
            )
        else:
            assert not isinstance(result, ParseError), line.raw


def test_features_package_agrees_with_the_reference() -> None:
    """The production feature code against the oracle on 1,500 generated sessions (no Flink)."""
    from features import RuleSet, build_flagged_message, compute_features, split_sessions
    from features.config import FeatureConfig
    from schemas import parse

    stream = generate_stream(1_500, seed=99)
    reference = compute_reference(stream.events)
    parsed = [parse(d.raw) for d in stream.deliveries if d.event is not None]
    rules = RuleSet.default()
    seen = 0
    for session in split_sessions(parsed, 30 * MIN):
        features = compute_features(session, FeatureConfig(), rules)
        row = features.to_row()
        expected = reference.rows[(row["session_id"], row["session_start_ms"])]
        assert row == expected
        if row["flagged"]:
            assert (
                build_flagged_message(session, features).to_dict()
                == reference.flagged[(row["session_id"], row["session_start_ms"])]
            )
        seen += 1
    assert seen == len(reference.rows)

"""The flagged-session record: the wire shape key for key, and a parse that names the field."""

from __future__ import annotations

from typing import Any

import pytest

from features import FeatureConfig, RuleSet, build_flagged_message, compute_features
from schemas.events import AssistantMessage, Feedback, UserMessage
from schemas.flagged import FlaggedMessage, InvalidFlaggedMessage
from schemas.json_schema import validation_errors

T0 = 1_772_000_000_000


def _message() -> FlaggedMessage:
    base = {"session_id": "s-1", "user_id": "u-1"}
    events = [
        UserMessage(
            event_id="e1",
            ts_ms=T0,
            text="when will it arrive in Lyon?",
            request_id="r1",
            predicted_intent="order_status",
            intent_confidence=0.41,
            **base,
        ),
        AssistantMessage(
            event_id="e2", ts_ms=T0 + 1_000, text="Order #123?", request_id="r1", **base
        ),
        Feedback(
            event_id="e3",
            ts_ms=T0 + 2_000,
            kind="correction",
            request_id="r1",
            corrected_intent="shipping",
            **base,
        ),
    ]
    features = compute_features(events, FeatureConfig(), RuleSet.default())
    assert features.flagged
    return build_flagged_message(events, features)


def test_the_record_serializes_to_the_contract_and_reads_back_equal() -> None:
    message = _message()
    wire = message.to_dict()
    assert validation_errors("flagged_session.v1", wire) == []
    assert list(wire) == [
        "session_id", "user_id", "session_start_ms", "session_end_ms", "reasons",
        "features", "model_version", "transcript", "feedback",
    ]  # fmt: skip
    assert FlaggedMessage.from_dict(wire) == message
    assert message.size_bytes() == len(message.to_json().encode("utf-8"))


def test_optional_fields_of_other_producers_default_and_odd_feedback_is_skipped() -> None:
    message = FlaggedMessage.from_dict(
        {"session_id": "s", "transcript": [{"text": "hi", "role": "user"}], "feedback": [3]}
    )
    assert (message.user_id, message.session_start_ms, message.reasons) == ("", 0, ())
    assert message.transcript[0].ts_ms == 0 and message.feedback == ()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ([], "not a JSON object"),
        ({"transcript": []}, "session_id missing or not a string"),
        ({"session_id": "s"}, "transcript missing or not a list"),
        ({"session_id": "s", "transcript": [], "feedback": {}}, "feedback is not a list"),
        ({"session_id": "s", "transcript": [{"text": 5}]}, "transcript entry is not an object"),
        ({"session_id": "s", "transcript": [], "session_end_ms": "soon"}, "session_end_ms"),
        ({"session_id": "s", "transcript": [{"text": "a", "ts_ms": [1]}]}, "transcript ts_ms"),
        ({"session_id": "s", "transcript": [], "features": "x"}, "features is not an object"),
    ],
)
def test_a_message_the_pool_cannot_use_is_refused_naming_the_field(raw: Any, reason: str) -> None:
    with pytest.raises(InvalidFlaggedMessage, match=reason):
        FlaggedMessage.from_dict(raw)

"""Flagged-session messages (contract section 5)."""

from __future__ import annotations

from features import (
    FeatureConfig,
    RuleSet,
    build_flagged_message,
    compute_features,
    fit_flagged_message,
    message_size_bytes,
)
from schemas import (
    AssistantMessage,
    CtaSent,
    Event,
    Feedback,
    FsmState,
    UserMessage,
    validation_errors,
)
from schemas.flagged import FlaggedMessage

T0 = 1_700_000_000_000


def env(n: int, at_ms: int, session_id: str = "s-1") -> dict[str, object]:
    return {"event_id": f"e{n}", "session_id": session_id, "user_id": "u-1", "ts_ms": T0 + at_ms}


def conversation() -> list[Event]:
    return [
        UserMessage(**env(1, 0), text="Do you have red shoes?", request_id="r1",
                    predicted_intent="product_search", intent_confidence=0.42),
        AssistantMessage(**env(2, 1_000), text="Here are blue shoes.", request_id="r1",
                         model_version="m-7", response_time_ms=900),
        FsmState(**env(3, 1_500), to_state="recommend"),
        CtaSent(**env(4, 2_000), cta_id="c1"),
        UserMessage(**env(5, 3_000), text="That's not what I asked", request_id="r2"),
        Feedback(**env(6, 4_000), kind="rating", rating=1, request_id="r1",
                 corrected_text="Red shoes, please", corrected_intent="product_search"),
        Feedback(**env(7, 5_000), kind="thumbs_down"),
    ]  # fmt: skip


def test_flagged_message_shape_and_content() -> None:
    events = conversation()
    features = compute_features(events, FeatureConfig(), RuleSet.default())
    assert features.flagged
    message = build_flagged_message(list(reversed(events)) + events[:2], features).to_dict()
    assert validation_errors("flagged_session.v1", message) == []
    assert list(message) == [
        "session_id", "user_id", "session_start_ms", "session_end_ms", "reasons",
        "features", "model_version", "transcript", "feedback",
    ]  # fmt: skip
    assert message["session_id"] == "s-1" and message["user_id"] == "u-1"
    assert (message["session_start_ms"], message["session_end_ms"]) == (T0, T0 + 5_000)
    assert message["reasons"] == [
        "cta_ignored", "explicit_negative", "uncertain_and_corrected",
    ]  # fmt: skip
    assert message["features"] == features.to_row()
    assert message["model_version"] == "m-7"
    assert message["transcript"] == [
        {"ts_ms": T0, "role": "user", "text": "Do you have red shoes?", "request_id": "r1",
         "predicted_intent": "product_search", "intent_confidence": 0.42},
        {"ts_ms": T0 + 1_000, "role": "assistant", "text": "Here are blue shoes.",
         "request_id": "r1", "predicted_intent": None, "intent_confidence": None},
        {"ts_ms": T0 + 3_000, "role": "user", "text": "That's not what I asked",
         "request_id": "r2", "predicted_intent": None, "intent_confidence": None},
    ]  # fmt: skip
    assert message["feedback"] == [
        {"request_id": "r1", "kind": "rating", "rating": 1,
         "corrected_text": "Red shoes, please", "corrected_intent": "product_search"},
        {"request_id": None, "kind": "thumbs_down", "rating": None, "corrected_text": None,
         "corrected_intent": None},
    ]  # fmt: skip


def test_flagged_message_keeps_only_the_sessions_events() -> None:
    events = conversation()
    features = compute_features(events, FeatureConfig(), RuleSet.default())
    later_session = UserMessage(**env(8, 2 * 3_600_000), text="new visit")
    other_session = UserMessage(**env(9, 1_000, session_id="s-2"), text="someone else")
    message = build_flagged_message([*events, later_session, other_session], features).to_dict()
    assert [t["text"] for t in message["transcript"]] == [
        "Do you have red shoes?", "Here are blue shoes.", "That's not what I asked",
    ]  # fmt: skip


def _big_session(texts: list[str]) -> list[Event]:
    events: list[Event] = []
    for n, text in enumerate(texts):
        events.append(UserMessage(**env(2 * n, 2 * n * 1_000), text=text, intent_confidence=0.1))
        events.append(AssistantMessage(**env(2 * n + 1, (2 * n + 1) * 1_000), text="ok"))
    events.append(Feedback(**env(999, 999_000), kind="edit", corrected_text="y" * 30_000))
    return events


def _flagged(events: list[Event]) -> FlaggedMessage:
    features = compute_features(events, FeatureConfig(), RuleSet.default())
    assert features.flagged
    return build_flagged_message(events, features)


def test_a_message_that_fits_is_left_unchanged() -> None:
    message = build_flagged_message(
        conversation(), compute_features(conversation(), FeatureConfig(), RuleSet.default())
    )
    assert fit_flagged_message(message, 1_000_000) is message
    assert "truncated_texts" not in message.to_dict()


def test_long_texts_are_cut_to_one_common_cap_that_fits() -> None:
    texts = ["x" * 32_000] * 40 + ["short question"]  # about 1.3 MB of text
    message = _flagged(_big_session(texts))
    assert message_size_bytes(message) > 1_000_000

    fitted_message = fit_flagged_message(message, 1_000_000)

    size = message_size_bytes(fitted_message)
    fitted, original = fitted_message.to_dict(), message.to_dict()
    cut = fitted["truncated_texts"]
    assert size <= 1_000_000
    assert size + cut > 1_000_000  # one more character per cut text would not fit
    assert cut == 41  # 40 long user texts and the corrected text; short ones stay whole
    assert [e["text"] for e in fitted["transcript"]][-2:] == ["short question", "ok"]
    pairs = zip(fitted["transcript"], original["transcript"], strict=True)
    assert all(m["text"] == o["text"][: len(m["text"])] for m, o in pairs)
    assert fitted["features"] == original["features"]
    assert fitted["reasons"] == original["reasons"]
    assert "omitted_transcript_entries" not in fitted
    assert validation_errors("flagged_session.v1", fitted) == []


def test_when_empty_texts_do_not_fit_the_latest_entries_are_kept() -> None:
    message = _flagged(_big_session([f"q{n}" for n in range(3_000)]))

    fitted_message = fit_flagged_message(message, 60_000)

    assert message_size_bytes(fitted_message) <= 60_000
    fitted, original = fitted_message.to_dict(), message.to_dict()
    omitted = fitted["omitted_transcript_entries"]
    assert omitted > 0
    assert fitted["transcript"] == [
        {**entry, "text": ""} for entry in original["transcript"][omitted:]
    ]
    assert validation_errors("flagged_session.v1", fitted) == []

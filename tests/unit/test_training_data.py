"""Pool samples from flagged messages: the label rule, dedup, and training-set assembly."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from training.data import (
    QUALITY_HIGH,
    QUALITY_MEDIUM,
    QUALITY_REVIEW,
    PoolSample,
    SourcePosition,
    apply_human_labels,
    build_training_set,
    dataset_sha256,
    dedupe_samples,
    extract_samples,
    is_eval_session,
    pool_counts,
    validate_flagged,
)
from training.errors import EmptyPoolError, OneClassPoolError, UnknownLabelError
from training.settings import PoolConfig
from training.synthetic import INTENTS, base_dataset, normalize

CONFIG = PoolConfig()


def _message(
    *,
    session_id: str = "s1",
    turns: list[dict[str, Any]],
    feedback: list[dict[str, Any]] | None = None,
    ordered: bool = False,
) -> dict[str, Any]:
    transcript = []
    for i, turn in enumerate(turns):
        transcript.append(
            {
                "ts_ms": 1_767_225_600_000 + i * 1000,
                "role": turn.get("role", "user"),
                "text": turn["text"],
                "request_id": turn.get("request_id", f"r{i}"),
                "predicted_intent": turn.get("intent"),
                "intent_confidence": turn.get("confidence"),
            }
        )
    return {
        "session_id": session_id,
        "user_id": "u1",
        "session_start_ms": 1_767_225_600_000,
        "session_end_ms": 1_767_225_700_000,
        "reasons": ["explicit_negative"],
        "features": {"order_count": 1 if ordered else 0},
        "model_version": "intent-v1",
        "transcript": transcript,
        "feedback": feedback or [],
    }


def _feedback(kind: str, request_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "kind": kind,
        "rating": fields.get("rating"),
        "corrected_text": fields.get("corrected_text"),
        "corrected_intent": fields.get("corrected_intent"),
    }


def test_correction_labels_high_and_confident_ordered_prediction_labels_medium() -> None:
    message = _message(
        turns=[
            {
                "text": "how many days to Lyon?",
                "intent": "order_status",
                "confidence": 0.7,
                "request_id": "a",
            },
            {"role": "assistant", "text": "Your order is on its way.", "request_id": "a"},
            {
                "text": "how much is the blender",
                "intent": "price",
                "confidence": 0.95,
                "request_id": "b",
            },
            {"text": "hmm ok", "intent": "greeting", "confidence": 0.5, "request_id": "c"},
        ],
        feedback=[_feedback("correction", "a", corrected_intent="shipping")],
        ordered=True,
    )
    out = extract_samples(
        message, CONFIG, INTENTS, source=SourcePosition(topic="t", partition=2, offset=41)
    )
    by_request = {s.request_id: s for s in out.samples}
    assert set(by_request) == {"a", "b", "c"}  # one sample per user message with a prediction
    assert (by_request["a"].label, by_request["a"].label_source, by_request["a"].quality) == (
        "shipping",
        "correction",
        QUALITY_HIGH,
    )
    assert (by_request["b"].label, by_request["b"].label_source, by_request["b"].quality) == (
        "price",
        "auto",
        QUALITY_MEDIUM,
    )
    assert by_request["c"].label is None and by_request["c"].quality == QUALITY_REVIEW
    assert by_request["a"].predicted_intent == "order_status"
    assert by_request["a"].reasons == ("explicit_negative",)
    assert (
        by_request["a"].source_topic,
        by_request["a"].source_partition,
        by_request["a"].source_offset,
    ) == ("t", 2, 41)


def test_auto_label_needs_an_order_and_no_negative_feedback_on_the_request() -> None:
    turns = [
        {
            "text": "how much is the blender",
            "intent": "price",
            "confidence": 0.97,
            "request_id": "b",
        }
    ]
    no_order = extract_samples(_message(turns=turns), CONFIG, INTENTS).samples[0]
    assert no_order.quality == QUALITY_REVIEW
    thumbs_down = extract_samples(
        _message(turns=turns, feedback=[_feedback("thumbs_down", "b")], ordered=True),
        CONFIG,
        INTENTS,
    ).samples[0]
    assert thumbs_down.quality == QUALITY_REVIEW
    low_rating = extract_samples(
        _message(turns=turns, feedback=[_feedback("rating", "b", rating=2)], ordered=True),
        CONFIG,
        INTENTS,
    ).samples[0]
    assert low_rating.quality == QUALITY_REVIEW
    without_order_rule = extract_samples(
        _message(turns=turns), PoolConfig(auto_label_requires_order=False), INTENTS
    ).samples[0]
    assert without_order_rule.quality == QUALITY_MEDIUM
    stricter = extract_samples(
        _message(turns=turns, ordered=True), PoolConfig(auto_label_min_confidence=0.99), INTENTS
    ).samples[0]
    assert stricter.quality == QUALITY_REVIEW


def test_unknown_corrected_intent_goes_to_review_with_a_note() -> None:
    message = _message(
        turns=[
            {
                "text": "do you sell gift cards",
                "intent": "product_info",
                "confidence": 0.4,
                "request_id": "a",
            }
        ],
        feedback=[_feedback("correction", "a", corrected_intent="gift_cards")],
    )
    sample = extract_samples(message, CONFIG, INTENTS).samples[0]
    assert sample.label is None and sample.quality == QUALITY_REVIEW
    assert "gift_cards" in sample.note


def test_messages_without_prediction_are_skipped_and_missing_request_id_gets_a_stable_key() -> None:
    message = _message(
        turns=[
            {"text": "no prediction here", "request_id": "x"},
            {"text": "hello", "intent": "greeting", "confidence": 0.9, "request_id": None},
        ]
    )
    samples = extract_samples(message, CONFIG, INTENTS).samples
    assert len(samples) == 1
    assert samples[0].request_id == "@1767225601000:1"
    assert extract_samples(message, CONFIG, INTENTS).samples[0].key == samples[0].key


def test_edit_feedback_becomes_a_prompt_response_pair() -> None:
    message = _message(
        turns=[
            {
                "text": "do you ship to Norway?",
                "intent": "shipping",
                "confidence": 0.9,
                "request_id": "a",
            },
            {"role": "assistant", "text": "Yes.", "request_id": "a"},
        ],
        feedback=[_feedback("edit", "a", corrected_text="Yes, we ship to Norway in 3-5 days.")],
    )
    pair = extract_samples(message, CONFIG, INTENTS).edits[0]
    assert pair.prompt == "User: do you ship to Norway?\nAssistant:"
    assert pair.response == "Yes."
    assert pair.corrected_response == "Yes, we ship to Norway in 3-5 days."


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        ([], "not a JSON object"),
        ({"transcript": []}, "session_id"),
        ({"session_id": "s", "transcript": "nope"}, "transcript"),
        ({"session_id": "s", "transcript": [], "feedback": {}}, "feedback"),
        ({"session_id": "s", "transcript": [{"text": 3}]}, "transcript entry"),
    ],
)
def test_validate_flagged_names_the_problem(message: Any, problem: str) -> None:
    reason = validate_flagged(message)
    assert reason is not None and problem in reason
    assert validate_flagged(_message(turns=[])) is None


def _sample(
    session: str,
    request: str,
    label: str | None,
    source: str,
    quality: str,
    added_ms: int = 0,
    text: str = "t",
) -> PoolSample:
    return PoolSample(
        session_id=session,
        request_id=request,
        text=text,
        predicted_intent="price",
        confidence=0.5,
        label=label,
        label_source=source,
        quality=quality,
        added_ms=added_ms,
    )


def test_dedupe_prefers_the_better_label_then_the_newest_write() -> None:
    rows = [
        _sample("s", "r", "price", "auto", QUALITY_MEDIUM, added_ms=5),
        _sample("s", "r", "shipping", "correction", QUALITY_HIGH, added_ms=1),
        _sample("s", "r", None, "", QUALITY_REVIEW, added_ms=9),
        _sample("s", "q", None, "", QUALITY_REVIEW, added_ms=1),
        _sample("s", "q", None, "", QUALITY_REVIEW, added_ms=2, text="newer"),
    ]
    out = {s.request_id: s for s in dedupe_samples(rows)}
    assert len(out) == 2
    assert out["r"].label == "shipping"
    assert out["q"].text == "newer"
    human = apply_human_labels(list(out.values()), {("s", "q"): ("returns", 10)})
    q = next(s for s in human if s.request_id == "q")
    assert (q.label, q.label_source, q.quality) == ("returns", "human", QUALITY_HIGH)
    assert pool_counts(human) == {
        "samples_total": 2,
        "labeled_high": 2,
        "labeled_medium": 0,
        "review_queue": 0,
    }


def _pool(n_sessions: int, labels: list[str]) -> list[PoolSample]:
    return [
        _sample(
            f"sess-{i}",
            "r0",
            labels[i % len(labels)],
            "correction",
            QUALITY_HIGH,
            text=f"pool text number {i}",
        )
        for i in range(n_sessions)
    ]


def test_training_set_mixes_pool_and_stratified_replay_and_holds_out_sessions() -> None:
    pool = _pool(100, ["shipping", "order_status"]) + [
        _sample("sess-review", "r0", None, "", QUALITY_REVIEW)
    ]
    base = base_dataset(0)
    ts = build_training_set(
        pool,
        base,
        INTENTS,
        replay_ratio=2.0,
        min_replay=0,
        eval_share=0.2,
        min_pool_classes=2,
        seed=0,
    )
    origins = Counter(e.origin for e in ts.train)
    held_out = {k for k in ts.eval_keys}
    assert origins["pool"] + len(held_out) == 100  # the review-queue sample is never used
    assert all(is_eval_session(s, 0.2) for s, _ in held_out)
    assert 5 < len(held_out) < 40
    assert len(ts.failure_slice) == len(held_out)
    assert origins["replay"] == 2 * origins["pool"]
    replay_labels = Counter(e.label for e in ts.train if e.origin == "replay")
    assert set(replay_labels) == set(INTENTS)
    assert max(replay_labels.values()) - min(replay_labels.values()) <= 2  # stratified
    again = build_training_set(
        pool,
        base,
        INTENTS,
        replay_ratio=2.0,
        min_replay=0,
        eval_share=0.2,
        min_pool_classes=2,
        seed=0,
    )
    assert again.train == ts.train
    rows = ts.rows()
    assert dataset_sha256(rows) == dataset_sha256(again.rows())


def test_min_replay_and_pool_texts_win_over_replay() -> None:
    base = base_dataset(0)
    pool = _pool(10, ["shipping", "price"])
    clash = _sample("sess-clash", "r0", "greeting", "correction", QUALITY_HIGH, text=base[0].text)
    ts = build_training_set(
        pool + [clash],
        base,
        INTENTS,
        replay_ratio=1.0,
        min_replay=10_000,
        eval_share=0.0,
        min_pool_classes=2,
        seed=0,
    )
    replay = [e for e in ts.train if e.origin == "replay"]
    assert len(replay) == len(base) - 1  # everything but the text the pool relabeled
    assert normalize(base[0].text) not in {normalize(e.text) for e in replay}


def test_bad_pools_raise_their_own_errors() -> None:
    base = base_dataset(0)
    kwargs = {"replay_ratio": 1.0, "eval_share": 0.2, "min_pool_classes": 2, "seed": 0}
    with pytest.raises(EmptyPoolError):
        build_training_set([], base, INTENTS, **kwargs)
    with pytest.raises(EmptyPoolError, match="review queue"):
        build_training_set([_sample("s", "r", None, "", QUALITY_REVIEW)], base, INTENTS, **kwargs)
    with pytest.raises(OneClassPoolError, match="1 intent"):
        build_training_set(_pool(30, ["shipping"]), base, INTENTS, **kwargs)
    with pytest.raises(UnknownLabelError, match="gift_cards"):
        build_training_set(_pool(30, ["shipping", "gift_cards"]), base, INTENTS, **kwargs)

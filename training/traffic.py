"""Simulated assistant traffic: raw events per session, and the flagged messages they yield.

``simulate_sessions`` builds contract events (``schemas.events``) for sessions whose
user messages are tagged by a real model (any ``predict(texts) -> [Prediction]``, e.g.
``Predictor.predict``). Users correct a wrong intent (``correction`` feedback with the
true intent) at ``correction_rate``; sessions end with an order at ``order_rate``;
``edit_rate`` of assistant answers are rewritten by the user (``edit`` feedback).
Sessions without an order get an ignored CTA, and a share of ordered sessions a
thumbs-down on an answer, so that the default rules flag them as they would in
production.

``flagged_messages`` runs the feature package (the same code as the streaming job) and
returns the contract section 5 messages of the flagged sessions: exactly what the pool
consumer reads from ``flywheel.flagged``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from schemas.flagged import FlaggedMessage
from training.synthetic import LabeledText, core_utterances, weak_slice_utterances

_ANSWERS = {
    "greeting": "Hi! How can I help you today?",
    "product_info": "Here are the product details you asked about.",
    "price": "That item costs $49.",
    "shipping": "We ship to most countries; standard delivery takes 3 to 5 days.",
    "returns": "You can return items within 30 days.",
    "discount": "Use code WELCOME5 for 5% off.",
    "order_status": "Your order is on its way.",
    "human_agent": "Connecting you to a human agent.",
}


class _Envelope:
    """Event ids numbered within a session."""

    def __init__(self, session_id: str, user_id: str) -> None:
        self.session_id, self.user_id, self.count = session_id, user_id, 0

    def __call__(self, ts_ms: int) -> dict[str, Any]:
        self.count += 1
        return {
            "event_id": f"{self.session_id}-e{self.count:03d}",
            "session_id": self.session_id,
            "user_id": self.user_id,
            "ts_ms": ts_ms,
        }


def simulate_sessions(
    predict: Callable[[list[str]], Sequence[Any]],
    *,
    model_version: str,
    seed: int = 0,
    sessions: int = 200,
    weak_share: float = 0.5,
    correction_rate: float = 0.9,
    order_rate: float = 0.5,
    thumbs_down_rate: float = 0.5,
    edit_rate: float = 0.0,
    start_ms: int = 1_767_225_600_000,
) -> list[list[Any]]:
    """Events of each simulated session (one session per list, in time order)."""
    from schemas.events import (
        AssistantMessage,
        CtaSent,
        Feedback,
        Order,
        UserMessage,
    )

    rng = random.Random(f"traffic:{seed}")
    weak = iter(weak_slice_utterances(seed, max(1, int(sessions * weak_share) + 20)))
    core = iter(core_utterances(seed, sessions * 3))
    plans: list[list[LabeledText]] = []
    for _ in range(sessions):
        turns = [next(core) for _ in range(rng.randint(0, 2))]
        if rng.random() < weak_share:
            turns.insert(rng.randint(0, len(turns)), next(weak))
        elif not turns:
            turns.append(next(core))
        plans.append(turns)
    predictions = iter(predict([t.text for turns in plans for t in turns]))
    out: list[list[Any]] = []
    for number, turns in enumerate(plans):
        session_id = f"sim-{seed}-{number:05d}"
        user_id = f"user-{seed}-{number:05d}"
        ts = start_ms + number * 3_600_000
        events: list[Any] = []
        envelope = _Envelope(session_id, user_id)
        request_ids = []
        for index, turn in enumerate(turns):
            prediction = next(predictions)
            request_id = f"{session_id}-r{index}"
            request_ids.append(request_id)
            events.append(
                UserMessage(
                    **envelope(ts),
                    text=turn.text,
                    request_id=request_id,
                    predicted_intent=prediction.intent,
                    intent_confidence=min(1.0, max(0.0, float(prediction.confidence))),
                    model_version=model_version,
                )
            )
            answer = _ANSWERS.get(prediction.intent, "Let me check that for you.")
            events.append(
                AssistantMessage(
                    **envelope(ts + 1_000),
                    text=answer,
                    request_id=request_id,
                    response_time_ms=800,
                    model_version=model_version,
                )
            )
            if prediction.intent != turn.label and rng.random() < correction_rate:
                events.append(
                    Feedback(
                        **envelope(ts + 5_000),
                        kind="correction",
                        request_id=request_id,
                        corrected_intent=turn.label,
                    )
                )
            if rng.random() < edit_rate:
                events.append(
                    Feedback(
                        **envelope(ts + 6_000),
                        kind="edit",
                        request_id=request_id,
                        corrected_text=_ANSWERS[turn.label],
                    )
                )
            ts += 60_000
        if rng.random() < order_rate:
            if rng.random() < thumbs_down_rate:
                events.append(
                    Feedback(**envelope(ts), kind="thumbs_down", request_id=rng.choice(request_ids))
                )
            events.append(Order(**envelope(ts + 10_000), order_id=f"o-{session_id}", amount=49.0))
        else:
            events.append(CtaSent(**envelope(ts), cta_id=f"cta-{session_id}", cta_type="checkout"))
        out.append(events)
    return out


def flagged_messages(
    sessions: Sequence[Sequence[Any]], *, feature_config: Any = None, rules: Any = None
) -> list[FlaggedMessage]:
    """Contract section 5 messages of the sessions the (default) rules flag."""
    from features import FeatureConfig, RuleSet, build_flagged_message, compute_features

    config = feature_config or FeatureConfig()
    rules = rules or RuleSet.default()
    messages = []
    for events in sessions:
        features = compute_features(events, config, rules)
        if features.flagged:
            messages.append(build_flagged_message(events, features))
    return messages


def flagged_session_messages(
    predict: Callable[[list[str]], Sequence[Any]], *, model_version: str, **kwargs: Any
) -> list[FlaggedMessage]:
    """``flagged_messages(simulate_sessions(...))`` in one call."""
    return flagged_messages(simulate_sessions(predict, model_version=model_version, **kwargs))


__all__ = ["flagged_messages", "flagged_session_messages", "simulate_sessions"]

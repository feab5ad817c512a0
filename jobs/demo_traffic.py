"""Synthetic sales-assistant traffic for the demo.

Each simulated user follows a persona: buyers who click and buy, browsers who
ignore the CTA and go silent, users who repeat themselves while the dialogue
state machine stalls, users who ask the delivery-time questions the v1 intent
classifier gets wrong (and correct it), and raters. Every user message is tagged
by the real model the router serves that user (stable or canary), so what the
pipeline sees, and what the retraining learns from, comes from a real model.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from training.synthetic import WEAK_SLICE, LabeledText, core_utterances, weak_slice_utterances

ANSWERS = {
    "greeting": "Hi! What can I help you find today?",
    "product_info": "Here are the details of that product.",
    "price": "That one is $49, and it is in stock.",
    "shipping": "Standard delivery takes 3 to 5 business days; express is next day.",
    "returns": "You can return it within 30 days for a full refund.",
    "discount": "Use code WELCOME5 for 5% off your first order.",
    "order_status": "Your order has shipped; here is the tracking link.",
    "human_agent": "I am connecting you with a colleague.",
}
PERSONAS = (
    ("buyer", 0.30),
    ("silent_browser", 0.15),
    ("repeater", 0.10),
    ("delivery_asker", 0.35),
    ("rater", 0.10),
)


@dataclass
class Prediction:
    """What a model said about one user message."""

    intent: str
    confidence: float


@dataclass
class TrafficStats:
    """Ground truth kept by the simulator, to score models after the run."""

    sessions: int = 0
    events: int = 0
    by_model: dict[str, dict[str, int]] = field(default_factory=dict)

    def record(self, model_version: str, turn: LabeledText, predicted: str) -> None:
        stats = self.by_model.setdefault(
            model_version, {"messages": 0, "correct": 0, "slice_messages": 0, "slice_correct": 0}
        )
        stats["messages"] += 1
        stats["correct"] += int(predicted == turn.label)
        if turn.slice == WEAK_SLICE:
            stats["slice_messages"] += 1
            stats["slice_correct"] += int(predicted == turn.label)

    def slice_accuracy(self, model_version: str) -> float | None:
        stats = self.by_model.get(model_version)
        if not stats or not stats["slice_messages"]:
            return None
        return stats["slice_correct"] / stats["slice_messages"]


class _Session:
    """Builds one session's events with a running clock."""

    def __init__(self, session_id: str, user_id: str, start_ms: int, rng: random.Random):
        self.session_id, self.user_id, self.ts_ms, self.rng = session_id, user_id, start_ms, rng
        self.events: list[dict[str, Any]] = []

    def add(self, event_type: str, after_ms: int = 0, **fields: Any) -> dict[str, Any]:
        self.ts_ms += after_ms
        event = {
            "event_id": f"{self.session_id}-{len(self.events):03d}",
            "event_type": event_type,
            "schema_version": 1,
            "session_id": self.session_id,
            "user_id": self.user_id,
            "ts_ms": self.ts_ms,
            **{k: v for k, v in fields.items() if v is not None},
        }
        self.events.append(event)
        return event

    def pause(self, low_s: float, high_s: float) -> int:
        return int(self.rng.uniform(low_s, high_s) * 1000)


def generate_sessions(
    *,
    sessions: int,
    start_ms: int,
    spacing_ms: int,
    seed: int,
    route: Callable[[str], str],
    predict: Callable[[str, Sequence[str]], Sequence[Prediction]],
    session_prefix: str,
    stats: TrafficStats,
) -> list[list[dict[str, Any]]]:
    """Events of ``sessions`` simulated sessions, each list in time order.

    ``route(user_id)`` names the model version serving the user; ``predict(version,
    texts)`` tags texts with that version.
    """
    rng = random.Random(f"demo:{seed}")
    weak = iter(weak_slice_utterances(seed, sessions * 3 + 10))
    core = iter(core_utterances(seed, sessions * 6 + 10))
    names = [name for name, _ in PERSONAS]
    weights = [w for _, w in PERSONAS]
    plans = []
    for number in range(sessions):
        persona = rng.choices(names, weights)[0]
        user_id = f"{session_prefix}-user-{number:05d}"
        if persona == "delivery_asker":
            turns = [next(weak)] + [next(core) for _ in range(rng.randint(0, 1))]
        elif persona == "repeater":
            first = next(core)
            turns = [
                first,
                first,
                LabeledText(text=first.text.upper() + "??", label=first.label, slice=first.slice),
            ]
        else:
            turns = [next(core) for _ in range(rng.randint(1, 3))]
        plans.append((number, persona, user_id, route(user_id), turns))

    # One batched prediction call per model version.
    by_version: dict[str, list[str]] = {}
    for _, _, _, version, turns in plans:
        by_version.setdefault(version, []).extend(t.text for t in turns)
    predicted = {v: iter(predict(v, texts)) for v, texts in by_version.items()}

    out = []
    for number, persona, user_id, version, turns in plans:
        session = _Session(
            f"{session_prefix}-{number:05d}", user_id, start_ms + number * spacing_ms, rng
        )
        session.add("fsm_state", to_state="greeting")
        state = "greeting"
        corrected = False
        for index, turn in enumerate(turns):
            prediction = next(predicted[version])
            stats.record(version, turn, prediction.intent)
            request_id = f"{session.session_id}-r{index}"
            session.add(
                "user_message",
                session.pause(5, 40),
                text=turn.text,
                request_id=request_id,
                predicted_intent=prediction.intent,
                intent_confidence=round(min(1.0, max(0.0, prediction.confidence)), 4),
                model_version=version,
            )
            slow = rng.random() < 0.03
            session.add(
                "assistant_message",
                session.pause(1, 3),
                text=ANSWERS.get(prediction.intent, "Let me check."),
                request_id=request_id,
                response_time_ms=rng.randint(16_000, 30_000) if slow else rng.randint(300, 2_500),
                model_version=version,
            )
            if persona != "repeater":
                target = "product" if turn.label in ("product_info", "price") else "support"
                if target != state:
                    session.add("fsm_state", 500, from_state=state, to_state=target)
                    state = target
            if prediction.intent != turn.label and rng.random() < 0.85:
                session.add(
                    "user_message",
                    session.pause(5, 20),
                    text=f"No, that's not what I asked. I meant {turn.label.replace('_', ' ')}.",
                )
                session.add(
                    "feedback",
                    1_000,
                    kind="correction",
                    request_id=request_id,
                    corrected_intent=turn.label,
                )
                session.add(
                    "assistant_message",
                    session.pause(1, 3),
                    text=ANSWERS[turn.label],
                    model_version=version,
                    response_time_ms=rng.randint(300, 2_500),
                )
                corrected = True
        if persona in ("buyer", "delivery_asker") and not corrected and rng.random() < 0.8:
            session.add("cta_sent", session.pause(1, 2), cta_id="add-to-cart", cta_type="button")
            session.add("cta_click", session.pause(5, 120), cta_id="add-to-cart")
            session.add(
                "cart_add",
                session.pause(2, 20),
                sku=f"SKU-{rng.randint(100, 999)}",
                quantity=1,
                amount=49.0,
            )
            session.add("fsm_state", 500, from_state=state, to_state="checkout")
            if rng.random() < 0.8:
                session.add(
                    "order", session.pause(30, 240), order_id=f"o-{session.session_id}", amount=49.0
                )
            if rng.random() < 0.3:
                session.add("feedback", session.pause(5, 30), kind="thumbs_up")
            elif rng.random() < 0.3:
                # Bought anyway, but disliked an answer: flagged, and (with an order and a
                # confident prediction) a medium-quality auto-label for the pool.
                session.add(
                    "feedback",
                    session.pause(5, 30),
                    kind="thumbs_down",
                    request_id=f"{session.session_id}-r0",
                )
            session.add("user_message", session.pause(5, 30), text="Thanks, that's all!")
        elif persona == "silent_browser" or (corrected and rng.random() < 0.5):
            session.add("cta_sent", session.pause(1, 2), cta_id="see-offer", cta_type="link")
            session.add(
                "assistant_message",
                session.pause(1, 2),
                text="Anything else I can help with?",
                model_version=version,
                response_time_ms=rng.randint(300, 2_500),
            )
            # ...and the user never answers: a long silence, the CTA ignored.
        elif persona == "rater" or corrected:
            rating = rng.randint(1, 2) if corrected else rng.randint(3, 5)
            session.add("feedback", session.pause(5, 30), kind="rating", rating=rating)
            session.add("user_message", session.pause(5, 30), text="ok, thank you")
        if corrected and rng.random() < 0.5:
            session.add("feedback", session.pause(2, 10), kind="thumbs_down")
        stats.sessions += 1
        stats.events += len(session.events)
        out.append(session.events)
    return out

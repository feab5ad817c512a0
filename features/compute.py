"""Per-session derived features (contract section 3)."""

from __future__ import annotations

import operator
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from features.columns import FEATURE_COLUMNS
from features.config import FeatureConfig
from features.rules import RuleSet
from features.sessions import dedup_and_order
from features.text import correction_matcher, normalize_text
from schemas.events import (
    AssistantMessage,
    CartAdd,
    CtaClick,
    CtaSent,
    Event,
    Feedback,
    FsmState,
    Order,
    UserMessage,
)

NEGATIVE_FEEDBACK_KINDS = frozenset({"thumbs_down", "edit", "correction"})
NEGATIVE_RATING_MAX = 2
POSITIVE_RATING_MIN = 4


def is_negative_feedback(kind: object, rating: object) -> bool:
    """Contract section 3: thumbs down, an edit, a correction, or a rating of 2 or less.

    The one home of the rule: the session features, the job's online counter and the
    retraining pool's labels all ask here (``rating`` may come from JSON: any number).
    """
    if kind in NEGATIVE_FEEDBACK_KINDS:
        return True
    return (
        kind == "rating"
        and isinstance(rating, int | float)
        and not isinstance(rating, bool)
        and rating <= NEGATIVE_RATING_MAX
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionFeatures:
    """One session's feature row; fields are exactly `FEATURE_COLUMNS`, in order."""

    session_id: str
    user_id: str
    session_start_ms: int
    session_end_ms: int
    event_count: int
    user_turns: int
    assistant_turns: int
    cta_sent_count: int
    cta_clicked_count: int
    cta_not_clicked_count: int
    order_count: int
    carted: bool
    no_order: bool
    no_conversion: bool
    repeated_question_count: int
    fsm_state_final: str
    fsm_transitions: int
    max_stall_turns: int
    fsm_stalled: bool
    long_silence_count: int
    low_confidence_count: int
    min_intent_confidence: float | None
    correction_count: int
    negative_feedback_count: int
    positive_feedback_count: int
    slow_response_count: int
    model_version: str
    reasons: tuple[str, ...]
    flagged: bool

    @property
    def session_key(self) -> tuple[str, int]:
        """A session is identified by (session_id, session_start_ms)."""
        return (self.session_id, self.session_start_ms)

    def to_row(self) -> dict[str, Any]:
        """Column -> value in column order (Parquet row, flagged "features"); reasons a list."""
        row = {name: getattr(self, name) for name in FEATURE_COLUMNS}
        row["reasons"] = list(self.reasons)
        return row

    def to_redis_hash(self) -> dict[str, str]:
        """Column -> string: bools "0"/"1", reasons comma-joined, null as ""."""
        out: dict[str, str] = {}
        for name in FEATURE_COLUMNS:
            value = getattr(self, name)
            if value is None:
                out[name] = ""
            elif isinstance(value, bool):
                out[name] = "1" if value else "0"
            elif isinstance(value, tuple):
                out[name] = ",".join(value)
            elif isinstance(value, float):
                out[name] = repr(value)
            else:
                out[name] = str(value)
        return out

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> SessionFeatures:
        """Inverse of `to_row` (extra keys are ignored)."""
        values = {name: row[name] for name in FEATURE_COLUMNS}
        values["reasons"] = tuple(values["reasons"])
        return cls(**values)

    @classmethod
    def from_redis_hash(cls, fields: Mapping[str, str] | Mapping[bytes, bytes]) -> SessionFeatures:
        """Inverse of `to_redis_hash` (extra fields such as status are ignored)."""
        text = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in fields.items()
        }
        values: dict[str, Any] = {}
        for name, kind in _COLUMN_KINDS.items():
            raw = text[name]
            if kind == "bool":
                values[name] = raw == "1"
            elif kind == "int64":
                values[name] = int(raw)
            elif kind == "float64":
                values[name] = float(raw) if raw != "" else None
            elif kind == "list<string>":
                values[name] = tuple(raw.split(",")) if raw else ()
            else:
                values[name] = raw
        return cls(**values)


def _column_kinds() -> dict[str, str]:
    from features.columns import COLUMN_TYPES

    return dict(COLUMN_TYPES)


_COLUMN_KINDS = _column_kinds()


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return float(sum(map(operator.mul, a, b)))
    # numpy arrays and the like: their own dot product is much faster.
    dot = getattr(a, "dot", None)
    if dot is not None:
        return float(dot(b))
    return float(sum(map(operator.mul, a, b)))


def compute_features(
    events: Iterable[Event],
    config: FeatureConfig,
    rules: RuleSet | None,
    *,
    embeddings: Mapping[str, Sequence[float]] | None = None,
    as_of_ms: int | None = None,
) -> SessionFeatures:
    """Derive one session's features from its events (any order; duplicates allowed).

    `embeddings` maps a user_message's event_id to its L2-normalized text embedding;
    None compares normalized texts only. `as_of_ms` None means the session is closed and
    every CTA window and silence gap has run out; with a value, a CTA send counts as not
    clicked, and an assistant message as a long silence, only once its window has ended
    by `as_of_ms`. `rules` None evaluates no rules (reasons empty).
    """
    ordered = dedup_and_order(events)
    if not ordered:
        raise ValueError("compute_features needs at least one event")
    first = ordered[0]
    if any(event.session_id != first.session_id for event in ordered):
        raise ValueError("compute_features got events of more than one session_id")

    markers = correction_matcher(config.correction_markers)
    recent_questions: deque[tuple[str, Sequence[float] | None]] = deque(
        maxlen=config.repeat_lookback
    )
    user_ts: list[int] = []
    assistant_ts: list[int] = []
    user_turns = assistant_turns = cta_sent_count = order_count = 0
    cart_adds = cta_clicks = 0
    repeated = low_confidence = corrections = negative = positive = slow = 0
    min_confidence: float | None = None
    fsm_state = ""
    fsm_transitions = stall = max_stall = 0
    model_version = ""
    previous_message_is_assistant = False

    for event in ordered:
        if isinstance(event, UserMessage):
            user_turns += 1
            user_ts.append(event.ts_ms)
            stall += 1
            if stall > max_stall:
                max_stall = stall
            confidence = event.intent_confidence
            if confidence is not None:
                if confidence < config.low_confidence:
                    low_confidence += 1
                if min_confidence is None or confidence < min_confidence:
                    min_confidence = confidence
            if previous_message_is_assistant and markers.matches(event.text):
                corrections += 1
            previous_message_is_assistant = False
            normalized = normalize_text(event.text)
            vector = embeddings.get(event.event_id) if embeddings is not None else None
            for previous_text, previous_vector in recent_questions:
                if previous_text == normalized or (
                    vector is not None
                    and previous_vector is not None
                    and _dot(vector, previous_vector) >= config.repeat_similarity
                ):
                    repeated += 1
                    break
            recent_questions.append((normalized, vector))
        elif isinstance(event, AssistantMessage):
            assistant_turns += 1
            assistant_ts.append(event.ts_ms)
            previous_message_is_assistant = True
            if event.response_time_ms is not None and (
                event.response_time_ms > config.slow_response_ms
            ):
                slow += 1
            if event.model_version:
                model_version = event.model_version
        elif isinstance(event, CtaSent):
            cta_sent_count += 1
        elif isinstance(event, CtaClick):
            cta_clicks += 1
        elif isinstance(event, CartAdd):
            cart_adds += 1
        elif isinstance(event, Order):
            order_count += 1
        elif isinstance(event, FsmState):
            if event.to_state != fsm_state:
                fsm_transitions += 1
                fsm_state = event.to_state
                stall = 0
        elif isinstance(event, Feedback):
            if is_negative_feedback(event.kind, event.rating):
                negative += 1
            elif event.kind == "thumbs_up" or (
                event.kind == "rating"
                and event.rating is not None
                and event.rating >= POSITIVE_RATING_MIN
            ):
                positive += 1

    cta_clicked, cta_not_clicked = _count_cta_outcomes(ordered, config.cta_window_ms, as_of_ms)
    long_silences = _count_long_silences(assistant_ts, user_ts, config.silence_gap_ms, as_of_ms)

    row: dict[str, Any] = {
        "session_id": first.session_id,
        "user_id": first.user_id,
        "session_start_ms": first.ts_ms,
        "session_end_ms": ordered[-1].ts_ms,
        "event_count": len(ordered),
        "user_turns": user_turns,
        "assistant_turns": assistant_turns,
        "cta_sent_count": cta_sent_count,
        "cta_clicked_count": cta_clicked,
        "cta_not_clicked_count": cta_not_clicked,
        "order_count": order_count,
        "carted": cart_adds > 0,
        "no_order": order_count == 0 and cart_adds == 0,
        "no_conversion": order_count == 0 and cart_adds == 0 and cta_clicks == 0,
        "repeated_question_count": repeated,
        "fsm_state_final": fsm_state,
        "fsm_transitions": fsm_transitions,
        "max_stall_turns": max_stall,
        "fsm_stalled": max_stall >= config.stall_turns,
        "long_silence_count": long_silences,
        "low_confidence_count": low_confidence,
        "min_intent_confidence": min_confidence,
        "correction_count": corrections,
        "negative_feedback_count": negative,
        "positive_feedback_count": positive,
        "slow_response_count": slow,
        "model_version": model_version,
    }
    reasons = tuple(rules.evaluate(row)) if rules is not None else ()
    return SessionFeatures(**row, reasons=reasons, flagged=bool(reasons))


def open_window_deadlines(
    events: Sequence[Event], cta_window_ms: int, silence_gap_ms: int
) -> set[int]:
    """When a window of this open session runs out and changes its values.

    A CTA send with no click within its window turns "not clicked", and an assistant
    message with no user reply within the gap turns into a long silence, the moment
    event time reaches its deadline (see ``compute_features``' ``as_of_ms``). Sends
    clicked and messages answered in time never change again and are left out.
    """
    ordered = dedup_and_order(events)
    assistant_ts = [e.ts_ms for e in ordered if isinstance(e, AssistantMessage)]
    user_ts = [e.ts_ms for e in ordered if isinstance(e, UserMessage)]
    deadlines = {d for d, clicked in _cta_deadlines(ordered, cta_window_ms) if not clicked}
    deadlines.update(_unanswered_deadlines(assistant_ts, user_ts, silence_gap_ms))
    return deadlines


def _cta_deadlines(ordered: Sequence[Event], window_ms: int) -> list[tuple[int, bool]]:
    """(window deadline, clicked within it) of every CTA send."""
    # Walking backwards, next_click_ts[cta_id] is the earliest click after the current
    # position in session order, which is the one that decides whether a send was clicked.
    next_click_ts: dict[str, int] = {}
    sends: list[tuple[int, bool]] = []
    for event in reversed(ordered):
        if isinstance(event, CtaClick):
            next_click_ts[event.cta_id] = event.ts_ms
        elif isinstance(event, CtaSent):
            deadline = event.ts_ms + window_ms
            click_ts = next_click_ts.get(event.cta_id)
            sends.append((deadline, click_ts is not None and click_ts <= deadline))
    return sends


def _unanswered_deadlines(
    assistant_ts: Sequence[int], user_ts: Sequence[int], gap_ms: int
) -> list[int]:
    """Gap deadlines of the assistant messages with no user message in (ts, ts + gap]."""
    deadlines = []
    for ts in assistant_ts:
        deadline = ts + gap_ms
        following = bisect_right(user_ts, ts)
        if following == len(user_ts) or user_ts[following] > deadline:
            deadlines.append(deadline)
    return deadlines


def _count_cta_outcomes(
    ordered: Sequence[Event], window_ms: int, as_of_ms: int | None
) -> tuple[int, int]:
    """(clicked, not clicked) CTA sends; a send awaiting its window is neither."""
    sends = _cta_deadlines(ordered, window_ms)
    clicked = sum(1 for _, was_clicked in sends if was_clicked)
    not_clicked = sum(
        1
        for deadline, was_clicked in sends
        if not was_clicked and (as_of_ms is None or as_of_ms >= deadline)
    )
    return clicked, not_clicked


def _count_long_silences(
    assistant_ts: Sequence[int], user_ts: Sequence[int], gap_ms: int, as_of_ms: int | None
) -> int:
    """Assistant messages with no user message in (ts, ts + gap], once the gap has ended."""
    return sum(
        1
        for deadline in _unanswered_deadlines(assistant_ts, user_ts, gap_ms)
        if as_of_ms is None or as_of_ms >= deadline
    )

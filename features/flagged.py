"""Flagged-session messages (contract section 5, schemas/json/flagged_session.v1.json)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from features.compute import SessionFeatures
from features.sessions import dedup_and_order
from schemas.events import AssistantMessage, Event, Feedback, UserMessage


def build_flagged_message(events: Iterable[Event], features: SessionFeatures) -> dict[str, Any]:
    """The JSON-ready message for topic flywheel.flagged.

    Only events of the session (its session_id, ts_ms within [start, end]) are used, so
    the caller may pass every event it holds for the session_id.
    """
    transcript: list[dict[str, Any]] = []
    feedback: list[dict[str, Any]] = []
    for event in dedup_and_order(events):
        if event.session_id != features.session_id or not (
            features.session_start_ms <= event.ts_ms <= features.session_end_ms
        ):
            continue
        if isinstance(event, UserMessage):
            transcript.append(
                {
                    "ts_ms": event.ts_ms,
                    "role": "user",
                    "text": event.text,
                    "request_id": event.request_id,
                    "predicted_intent": event.predicted_intent,
                    "intent_confidence": event.intent_confidence,
                }
            )
        elif isinstance(event, AssistantMessage):
            transcript.append(
                {
                    "ts_ms": event.ts_ms,
                    "role": "assistant",
                    "text": event.text,
                    "request_id": event.request_id,
                    "predicted_intent": None,
                    "intent_confidence": None,
                }
            )
        elif isinstance(event, Feedback):
            feedback.append(
                {
                    "request_id": event.request_id,
                    "kind": event.kind,
                    "rating": event.rating,
                    "corrected_text": event.corrected_text,
                    "corrected_intent": event.corrected_intent,
                }
            )
    return {
        "session_id": features.session_id,
        "user_id": features.user_id,
        "session_start_ms": features.session_start_ms,
        "session_end_ms": features.session_end_ms,
        "reasons": list(features.reasons),
        "features": features.to_row(),
        "model_version": features.model_version,
        "transcript": transcript,
        "feedback": feedback,
    }

"""The flagged-session message (contract section 5, ``json/flagged_session.v1.json``).

One typed, frozen record crosses from streaming to training: the feature job builds it
(``features.build_flagged_message``) and sends ``to_json()`` to the flagged topic; the
pool consumer reads it back with ``FlaggedMessage.from_dict`` and extracts samples from
its attributes. ``to_dict`` is the wire shape, key for key.

``from_dict`` accepts what the pool always accepted (messages from other producers may
leave optional fields out: a missing ``user_id`` is "", missing ``feedback`` is none)
and raises ``InvalidFlaggedMessage`` with a reason naming the field otherwise; feedback
entries that are not objects are skipped, as before.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class InvalidFlaggedMessage(ValueError):
    """A flagged message the pool cannot use; the text says which field and why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TranscriptEntry:
    """One message of the session, user or assistant, as it was sent (texts redacted)."""

    ts_ms: int
    role: str  # "user" | "assistant" (another producer's value is kept, and ignored)
    text: str
    request_id: str | None = None
    predicted_intent: str | None = None
    intent_confidence: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ts_ms": self.ts_ms,
            "role": self.role,
            "text": self.text,
            "request_id": self.request_id,
            "predicted_intent": self.predicted_intent,
            "intent_confidence": self.intent_confidence,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedbackEntry:
    """One feedback event of the session (thumbs, rating, correction, edit)."""

    request_id: str | None
    kind: str
    rating: int | None = None
    corrected_text: str | None = None
    corrected_intent: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "kind": self.kind,
            "rating": self.rating,
            "corrected_text": self.corrected_text,
            "corrected_intent": self.corrected_intent,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class FlaggedMessage:
    """A flagged closed session: its features, reasons, transcript and feedback."""

    session_id: str
    user_id: str
    session_start_ms: int
    session_end_ms: int
    reasons: tuple[str, ...]
    features: Mapping[str, Any]  # the session's feature row (``SessionFeatures.to_row``)
    model_version: str
    transcript: tuple[TranscriptEntry, ...] = ()
    feedback: tuple[FeedbackEntry, ...] = ()
    # Set when the message was cut to fit one Kafka record (features.fit_flagged_message).
    truncated_texts: int | None = None
    omitted_transcript_entries: int = 0
    omitted_feedback_entries: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The message as JSON-ready dict (the wire shape of the flagged topic)."""
        out: dict[str, Any] = {
            "session_id": self.session_id,
            "user_id": self.user_id,
            "session_start_ms": self.session_start_ms,
            "session_end_ms": self.session_end_ms,
            "reasons": list(self.reasons),
            "features": dict(self.features),
            "model_version": self.model_version,
            "transcript": [entry.to_dict() for entry in self.transcript],
            "feedback": [entry.to_dict() for entry in self.feedback],
        }
        if self.truncated_texts is not None:
            out["truncated_texts"] = self.truncated_texts
        if self.omitted_transcript_entries:
            out["omitted_transcript_entries"] = self.omitted_transcript_entries
        if self.omitted_feedback_entries:
            out["omitted_feedback_entries"] = self.omitted_feedback_entries
        return out

    def to_json(self) -> str:
        """Compact JSON as the job sends it (UTF-8 text, no ASCII escapes)."""
        return json.dumps(self.to_dict(), ensure_ascii=False)

    def size_bytes(self) -> int:
        """Size of ``to_json()`` in UTF-8 bytes (what one Kafka record must hold)."""
        return len(self.to_json().encode("utf-8"))

    @classmethod
    def from_dict(cls, raw: Any) -> FlaggedMessage:
        """The record of a decoded JSON message; ``InvalidFlaggedMessage`` says why not."""
        if not isinstance(raw, Mapping):
            raise InvalidFlaggedMessage("not a JSON object")
        session_id = raw.get("session_id")
        if not isinstance(session_id, str) or not session_id:
            raise InvalidFlaggedMessage("session_id missing or not a string")
        transcript = raw.get("transcript")
        if not isinstance(transcript, list):
            raise InvalidFlaggedMessage("transcript missing or not a list")
        feedback = raw.get("feedback", [])
        if not isinstance(feedback, list):
            raise InvalidFlaggedMessage("feedback is not a list")
        features = raw.get("features") or {}
        if not isinstance(features, Mapping):
            raise InvalidFlaggedMessage("features is not an object")
        return cls(
            session_id=session_id,
            user_id=_text(raw.get("user_id")),
            session_start_ms=_integer(raw.get("session_start_ms"), "session_start_ms"),
            session_end_ms=_integer(raw.get("session_end_ms"), "session_end_ms"),
            reasons=tuple(str(reason) for reason in raw.get("reasons") or ()),
            features=dict(features),
            model_version=_text(raw.get("model_version")),
            transcript=tuple(_transcript_entry(entry) for entry in transcript),
            feedback=tuple(_feedback_entry(item) for item in feedback if isinstance(item, Mapping)),
            truncated_texts=(
                None
                if raw.get("truncated_texts") is None
                else _integer(raw.get("truncated_texts"), "truncated_texts")
            ),
            omitted_transcript_entries=_integer(
                raw.get("omitted_transcript_entries"), "omitted_transcript_entries"
            ),
            omitted_feedback_entries=_integer(
                raw.get("omitted_feedback_entries"), "omitted_feedback_entries"
            ),
        )


def _text(value: Any) -> str:
    return str(value) if value else ""


def _optional_text(value: Any) -> str | None:
    return str(value) if value is not None else None


def _integer(value: Any, name: str) -> int:
    if value is None or value == "":
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidFlaggedMessage(f"{name} is not an integer")
    try:
        return int(value)
    except ValueError:
        raise InvalidFlaggedMessage(f"{name} is not an integer") from None


def _transcript_entry(entry: Any) -> TranscriptEntry:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("text", ""), str):
        raise InvalidFlaggedMessage("transcript entry is not an object with a text")
    confidence = entry.get("intent_confidence")
    return TranscriptEntry(
        ts_ms=_integer(entry.get("ts_ms"), "transcript ts_ms"),
        role=_text(entry.get("role")),
        text=entry.get("text") or "",
        request_id=_optional_text(entry.get("request_id")),
        predicted_intent=_optional_text(entry.get("predicted_intent")),
        intent_confidence=(
            float(confidence)
            if isinstance(confidence, int | float) and not isinstance(confidence, bool)
            else None
        ),
    )


def _feedback_entry(item: Mapping[str, Any]) -> FeedbackEntry:
    rating = item.get("rating")
    return FeedbackEntry(
        request_id=_optional_text(item.get("request_id")),
        kind=_text(item.get("kind")),
        rating=rating if isinstance(rating, int) and not isinstance(rating, bool) else None,
        corrected_text=_optional_text(item.get("corrected_text")),
        corrected_intent=_optional_text(item.get("corrected_intent")),
    )


__all__ = ["FeedbackEntry", "FlaggedMessage", "InvalidFlaggedMessage", "TranscriptEntry"]

"""Flagged-session messages (contract section 5, schemas/json/flagged_session.v1.json)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from features.compute import SessionFeatures
from features.redaction import DEFAULT_REDACTOR, Redactor
from features.sessions import dedup_and_order
from schemas.events import AssistantMessage, Event, Feedback, UserMessage
from schemas.flagged import FeedbackEntry, FlaggedMessage, TranscriptEntry


def build_flagged_message(
    events: Iterable[Event], features: SessionFeatures, redactor: Redactor = DEFAULT_REDACTOR
) -> FlaggedMessage:
    """The message for topic flywheel.flagged (``to_json()`` is what the job sends).

    Only events of the session (its session_id, ts_ms within [start, end]) are used, so
    the caller may pass every event it holds for the session_id. Texts are redacted
    (contract section 6); the features were computed on the texts as sent.
    """
    redact = redactor.redact
    transcript: list[TranscriptEntry] = []
    feedback: list[FeedbackEntry] = []
    for event in dedup_and_order(events):
        if event.session_id != features.session_id or not (
            features.session_start_ms <= event.ts_ms <= features.session_end_ms
        ):
            continue
        if isinstance(event, UserMessage):
            transcript.append(
                TranscriptEntry(
                    ts_ms=event.ts_ms,
                    role="user",
                    text=redact(event.text),
                    request_id=event.request_id,
                    predicted_intent=event.predicted_intent,
                    intent_confidence=event.intent_confidence,
                )
            )
        elif isinstance(event, AssistantMessage):
            transcript.append(
                TranscriptEntry(
                    ts_ms=event.ts_ms,
                    role="assistant",
                    text=redact(event.text),
                    request_id=event.request_id,
                )
            )
        elif isinstance(event, Feedback):
            feedback.append(
                FeedbackEntry(
                    request_id=event.request_id,
                    kind=event.kind,
                    rating=event.rating,
                    corrected_text=redactor.redact_optional(event.corrected_text),
                    corrected_intent=event.corrected_intent,
                )
            )
    return FlaggedMessage(
        session_id=features.session_id,
        user_id=features.user_id,
        session_start_ms=features.session_start_ms,
        session_end_ms=features.session_end_ms,
        reasons=tuple(features.reasons),
        features=features.to_row(),
        model_version=features.model_version,
        transcript=tuple(transcript),
        feedback=tuple(feedback),
    )


def redact_flagged_message(
    message: FlaggedMessage, redactor: Redactor = DEFAULT_REDACTOR
) -> FlaggedMessage:
    """``message`` with its transcript texts and corrected texts redacted (section 6).

    For copies made from a message that came from elsewhere (the pool reads the flagged
    topic); redacting an already redacted text changes nothing.
    """
    return replace(
        message,
        transcript=tuple(replace(e, text=redactor.redact(e.text)) for e in message.transcript),
        feedback=tuple(
            replace(f, corrected_text=redactor.redact_optional(f.corrected_text))
            for f in message.feedback
        ),
    )


def message_size_bytes(message: FlaggedMessage) -> int:
    """Size of ``message`` as the job serializes it (compact JSON, UTF-8, no ASCII escapes)."""
    return message.size_bytes()


def fit_flagged_message(message: FlaggedMessage, max_bytes: int) -> FlaggedMessage:
    """``message`` made to fit ``max_bytes``: one Kafka record must hold it.

    A message that fits is returned unchanged. Otherwise every transcript text and
    feedback ``corrected_text`` longer than one common cap is cut to it (the largest cap
    that fits, so short texts stay whole), and the message says so with
    ``truncated_texts`` (how many were cut). Should even empty texts not fit, only the
    latest transcript entries are kept and ``omitted_transcript_entries`` says how many
    earlier ones were left out (then, likewise, feedback: ``omitted_feedback_entries``).
    Features and reasons are never changed.
    """
    if message.size_bytes() <= max_bytes:
        return message

    def with_cap(
        cap: int, keep_last: int | None = None, keep_feedback: int | None = None
    ) -> FlaggedMessage:
        entries = message.transcript
        omitted = 0
        if keep_last is not None:
            omitted = len(entries) - keep_last
            entries = entries[omitted:]
        items = message.feedback
        omitted_feedback = 0
        if keep_feedback is not None:
            omitted_feedback = len(items) - keep_feedback
            items = items[omitted_feedback:]
        cut = 0
        transcript = []
        for entry in entries:
            if len(entry.text) > cap:
                entry = replace(entry, text=entry.text[:cap])
                cut += 1
            transcript.append(entry)
        feedback = []
        for item in items:
            text = item.corrected_text
            if text is not None and len(text) > cap:
                item = replace(item, corrected_text=text[:cap])
                cut += 1
            feedback.append(item)
        return replace(
            message,
            transcript=tuple(transcript),
            feedback=tuple(feedback),
            truncated_texts=cut,
            omitted_transcript_entries=omitted,
            omitted_feedback_entries=omitted_feedback,
        )

    longest = max(
        [len(e.text) for e in message.transcript]
        + [len(f.corrected_text or "") for f in message.feedback]
        + [0]
    )
    if with_cap(0).size_bytes() <= max_bytes:
        low, high = 0, longest  # the largest cap that fits lies in [low, high)
        while high - low > 1:
            middle = (low + high) // 2
            if with_cap(middle).size_bytes() <= max_bytes:
                low = middle
            else:
                high = middle
        return with_cap(low)
    if with_cap(0, 0).size_bytes() <= max_bytes:
        low, high = 0, len(message.transcript)  # the most entries kept that fit
        while high - low > 1:
            middle = (low + high) // 2
            if with_cap(0, middle).size_bytes() <= max_bytes:
                low = middle
            else:
                high = middle
        return with_cap(0, low)
    low, high = 0, len(message.feedback)  # thousands of feedback events: the latest
    while high - low > 1:
        middle = (low + high) // 2
        if with_cap(0, 0, middle).size_bytes() <= max_bytes:
            low = middle
        else:
            high = middle
    return with_cap(0, 0, low)

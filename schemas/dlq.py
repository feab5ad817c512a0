"""Dead-letter message construction (schemas/json/dlq_message.v1.json)."""

from __future__ import annotations

import base64
from typing import Any

from schemas.events import ParseError


def raw_as_text(raw: bytes | str) -> tuple[str, str]:
    """(text, encoding): the raw bytes as UTF-8 text, or base64 when they are not UTF-8."""
    if isinstance(raw, str):
        return raw, "utf-8"
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"


def build_dlq_message(
    error: ParseError,
    raw: bytes | str,
    *,
    source_topic: str,
    source_partition: int | None,
    source_offset: int | None,
    rejected_at_ms: int,
) -> dict[str, Any]:
    """The JSON-ready dead-letter record for a rejected raw event."""
    text, encoding = raw_as_text(raw)
    message: dict[str, Any] = {
        "reason": error.reason,
        "field": error.field,
        "message": error.message,
        "source_topic": source_topic,
        "source_partition": source_partition,
        "source_offset": source_offset,
        "raw": text,
        "rejected_at_ms": rejected_at_ms,
    }
    if encoding != "utf-8":
        message["raw_encoding"] = encoding
    if error.event_id is not None:
        message["event_id"] = error.event_id
    if error.session_id is not None:
        message["session_id"] = error.session_id
    return message


def decode_dlq_raw(message: dict[str, Any]) -> bytes:
    """The original raw bytes of a dead-letter message (inverse of `raw_as_text`)."""
    if message.get("raw_encoding") == "base64":
        return base64.b64decode(message["raw"])
    raw: str = message["raw"]
    return raw.encode("utf-8")

"""Dead-letter message construction (schemas/json/dlq_message.v1.json)."""

from __future__ import annotations

import base64
import json
from typing import Any, Final

from schemas.events import ParseError

# Longest ``raw`` a dead letter carries (a multiple of 4, so cut base64 still decodes);
# a longer one is cut and says so (``raw_truncated``, ``raw_size_bytes``). A dead letter
# must fit in one Kafka record: the DLQ producer's max.request.size is 1 MiB by default,
# and a record it cannot send fails the job, which then replays the same record
# forever. JSON escaping can grow text up to 6x, hence 128 Ki characters; the source
# topic/partition/offset still point at the whole record.
DLQ_MAX_RAW_CHARS: Final = 128 * 1024


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


def dlq_message_json(message: dict[str, Any], raw_size_bytes: int) -> str:
    """The dead-letter message as JSON, its ``raw`` cut to ``DLQ_MAX_RAW_CHARS`` if longer.

    A cut message says so with ``raw_truncated: true`` and ``raw_size_bytes`` (the size
    of the whole raw record).
    """
    if len(message["raw"]) > DLQ_MAX_RAW_CHARS:
        message = {
            **message,
            "raw": message["raw"][:DLQ_MAX_RAW_CHARS],
            "raw_truncated": True,
            "raw_size_bytes": raw_size_bytes,
        }
    return json.dumps(message, ensure_ascii=False)


def decode_dlq_raw(message: dict[str, Any]) -> bytes:
    """The original raw bytes of a dead-letter message (inverse of `raw_as_text`)."""
    if message.get("raw_encoding") == "base64":
        return base64.b64decode(message["raw"])
    raw: str = message["raw"]
    return raw.encode("utf-8")

"""The JSON Schema files, the strict validator, and dead-letter messages."""

from __future__ import annotations

import json

import pytest
from jsonschema import Draft202012Validator

import schemas
from features import FEATURE_COLUMNS, PARQUET_SCHEMA_FIELDS
from schemas import (
    ParseError,
    build_dlq_message,
    decode_dlq_raw,
    load_schema,
    parse,
    validation_errors,
)


@pytest.mark.parametrize("name", schemas.SCHEMA_NAMES)
def test_schema_files_are_valid_draft_2020_12(name: str) -> None:
    schema = load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    assert load_schema(f"{name}.json") == schema


def test_load_schema_short_name_and_copy() -> None:
    first = load_schema("event")
    first["title"] = "mutated"
    assert load_schema("event.v1")["title"] != "mutated"
    with pytest.raises(KeyError, match="unknown schema"):
        load_schema("nope")


def test_feature_row_schema_lists_the_feature_columns_in_order() -> None:
    schema = load_schema("feature_row.v1")
    assert list(schema["properties"]) == list(FEATURE_COLUMNS)
    assert schema["required"] == list(FEATURE_COLUMNS)
    assert [name for name, _ in PARQUET_SCHEMA_FIELDS] == list(FEATURE_COLUMNS)


def test_validator_integers_are_strict() -> None:
    # Plain draft 2020-12 treats 3.0 as an integer; the shipped validator does not.
    schema = load_schema("event.v1")
    assert Draft202012Validator(schema["properties"]["ts_ms"]).is_valid(1.7e12)
    assert validation_errors("event.v1", {"ts_ms": 1.7e12})  # among other problems
    assert any("ts_ms" in e for e in validation_errors("event.v1", {"ts_ms": 1.7e12}))


def test_validator_enforces_utf8_byte_limit() -> None:
    event = {
        "event_id": "e", "event_type": "user_message", "schema_version": 1,
        "session_id": "s", "user_id": "u", "ts_ms": 1_700_000_000_000, "text": "é" * 16385,
    }  # fmt: skip
    plain = Draft202012Validator(load_schema("event.v1"))
    assert plain.is_valid(event)  # maxLength counts code points only
    assert validation_errors("event.v1", event) != []


def test_dlq_message_for_utf8_raw() -> None:
    raw = b'{"event_id": "e-1", "session_id": "s-1", "event_type": "page_view"}'
    error = parse(raw)
    assert isinstance(error, ParseError)
    message = build_dlq_message(
        error,
        raw,
        source_topic="flywheel.events",
        source_partition=3,
        source_offset=41,
        rejected_at_ms=1_700_000_000_000,
    )
    assert validation_errors("dlq_message.v1", message) == []
    assert message["reason"] == "missing_field"  # schema_version is checked first
    assert message["raw"] == raw.decode()
    assert "raw_encoding" not in message
    assert (message["event_id"], message["session_id"]) == ("e-1", "s-1")
    assert decode_dlq_raw(json.loads(json.dumps(message))) == raw


def test_dlq_message_for_binary_raw_is_base64() -> None:
    raw = b"\x00\xff\xfe garbage"
    error = parse(raw)
    assert isinstance(error, ParseError) and error.reason == "invalid_json"
    message = build_dlq_message(
        error,
        raw,
        source_topic="file:///data/events.jsonl",
        source_partition=None,
        source_offset=None,
        rejected_at_ms=1,
    )
    assert validation_errors("dlq_message.v1", message) == []
    assert message["raw_encoding"] == "base64"
    assert "event_id" not in message
    assert decode_dlq_raw(message) == raw


def test_late_event_dlq_message() -> None:
    error = ParseError("late_event", None, "session closed", "e-9", "s-9")
    message = build_dlq_message(
        error, "{}", source_topic="t", source_partition=0, source_offset=0, rejected_at_ms=5
    )
    assert validation_errors("dlq_message.v1", message) == []
    assert validation_errors("dlq_message.v1", {**message, "reason": "bored"}) != []


def test_a_long_raw_is_cut_and_says_so() -> None:
    import base64

    from schemas.dlq import DLQ_MAX_RAW_CHARS, dlq_message_json

    raw = b"\xff" + bytes(range(256)) * 1_000  # not UTF-8: base64, 342,000 characters
    error = parse(raw)
    assert isinstance(error, ParseError)
    message = build_dlq_message(
        error, raw, source_topic="t", source_partition=0, source_offset=7, rejected_at_ms=1
    )
    cut = json.loads(dlq_message_json(message, len(raw)))
    assert validation_errors("dlq_message.v1", cut) == []
    assert len(cut["raw"]) == DLQ_MAX_RAW_CHARS
    assert cut["raw_truncated"] is True and cut["raw_size_bytes"] == len(raw)
    assert raw.startswith(base64.b64decode(cut["raw"]))  # the kept part still decodes
    short = json.loads(dlq_message_json({**message, "raw": "short"}, 5))
    assert "raw_truncated" not in short and short["raw"] == "short"

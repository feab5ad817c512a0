"""The session feature columns of contract section 3, in order, with their types."""

from __future__ import annotations

from typing import Final

# (name, Parquet/Arrow type name). Only min_intent_confidence is nullable.
PARQUET_SCHEMA_FIELDS: Final[tuple[tuple[str, str], ...]] = (
    ("session_id", "string"),
    ("user_id", "string"),
    ("session_start_ms", "int64"),
    ("session_end_ms", "int64"),
    ("event_count", "int64"),
    ("user_turns", "int64"),
    ("assistant_turns", "int64"),
    ("cta_sent_count", "int64"),
    ("cta_clicked_count", "int64"),
    ("cta_not_clicked_count", "int64"),
    ("order_count", "int64"),
    ("carted", "bool"),
    ("no_order", "bool"),
    ("no_conversion", "bool"),
    ("repeated_question_count", "int64"),
    ("fsm_state_final", "string"),
    ("fsm_transitions", "int64"),
    ("max_stall_turns", "int64"),
    ("fsm_stalled", "bool"),
    ("long_silence_count", "int64"),
    ("low_confidence_count", "int64"),
    ("min_intent_confidence", "float64"),
    ("correction_count", "int64"),
    ("negative_feedback_count", "int64"),
    ("positive_feedback_count", "int64"),
    ("slow_response_count", "int64"),
    ("model_version", "string"),
    ("reasons", "list<string>"),
    ("flagged", "bool"),
)
NULLABLE_COLUMNS: Final = frozenset({"min_intent_confidence"})
FEATURE_COLUMNS: Final[tuple[str, ...]] = tuple(name for name, _ in PARQUET_SCHEMA_FIELDS)
COLUMN_TYPES: Final[dict[str, str]] = dict(PARQUET_SCHEMA_FIELDS)
# Rules decide `reasons` and `flagged`, so they cannot refer to them.
RULE_OUTPUT_COLUMNS: Final = frozenset({"reasons", "flagged"})

# --- the flagged record (contract section 5): the flagged message's fields as columns ---
#
# A type is a scalar type name above, or a nested one: ``Struct(fields)`` or
# ``ListOf(element)``. The flagged topic's JSON message and the backfill's
# ``flagged_sessions/`` Parquet hold the same fields; jobs/row_types.py derives the Flink
# SQL and DataStream types from this one list.


class Struct(tuple[tuple[str, "ColumnType"], ...]):
    """A struct type: its (name, type) fields in order."""


class ListOf(tuple["ColumnType"]):
    """A list type of one element type."""

    @property
    def element(self) -> ColumnType:
        return self[0]


ColumnType = str | Struct | ListOf

TRANSCRIPT_ENTRY_FIELDS: Final = Struct(
    (
        ("ts_ms", "int64"),
        ("role", "string"),
        ("text", "string"),
        ("request_id", "string"),
        ("predicted_intent", "string"),
        ("intent_confidence", "float64"),
    )
)
FEEDBACK_ENTRY_FIELDS: Final = Struct(
    (
        ("request_id", "string"),
        ("kind", "string"),
        ("rating", "int64"),
        ("corrected_text", "string"),
        ("corrected_intent", "string"),
    )
)
FLAGGED_PARQUET_FIELDS: Final[tuple[tuple[str, ColumnType], ...]] = (
    ("session_id", "string"),
    ("user_id", "string"),
    ("session_start_ms", "int64"),
    ("session_end_ms", "int64"),
    ("reasons", "list<string>"),
    ("features", Struct(PARQUET_SCHEMA_FIELDS)),
    ("model_version", "string"),
    ("transcript", ListOf((TRANSCRIPT_ENTRY_FIELDS,))),
    ("feedback", ListOf((FEEDBACK_ENTRY_FIELDS,))),
    # Set only on a message cut to fit one Kafka record (features.flagged.fit_flagged_message).
    ("truncated_texts", "int64"),
    ("omitted_transcript_entries", "int64"),
    ("omitted_feedback_entries", "int64"),
)

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

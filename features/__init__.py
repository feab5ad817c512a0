"""Flywheel features: sessions, derived session features, rules, flagged messages.

Pure Python: no PyFlink, no I/O (except reading a rule file on request).
"""

from features.columns import (
    COLUMN_TYPES,
    FEATURE_COLUMNS,
    NULLABLE_COLUMNS,
    PARQUET_SCHEMA_FIELDS,
)
from features.compute import SessionFeatures, compute_features, is_negative_feedback
from features.config import DEFAULT_CORRECTION_MARKERS, FeatureConfig
from features.flagged import (
    build_flagged_message,
    fit_flagged_message,
    message_size_bytes,
    redact_flagged_message,
)
from features.redaction import DEFAULT_REDACTOR, PLACEHOLDERS, Finding, Redactor
from features.rules import Rule, RuleError, RuleSet
from features.sessions import dedup_and_order, order_key, split_ordered, split_sessions
from features.text import (
    CorrectionMatcher,
    has_correction_marker,
    model_cannot_read,
    normalize_text,
)

__all__ = [
    "COLUMN_TYPES",
    "DEFAULT_CORRECTION_MARKERS",
    "DEFAULT_REDACTOR",
    "FEATURE_COLUMNS",
    "NULLABLE_COLUMNS",
    "PARQUET_SCHEMA_FIELDS",
    "PLACEHOLDERS",
    "CorrectionMatcher",
    "FeatureConfig",
    "Finding",
    "Redactor",
    "Rule",
    "RuleError",
    "RuleSet",
    "SessionFeatures",
    "build_flagged_message",
    "fit_flagged_message",
    "compute_features",
    "is_negative_feedback",
    "dedup_and_order",
    "has_correction_marker",
    "message_size_bytes",
    "model_cannot_read",
    "normalize_text",
    "order_key",
    "redact_flagged_message",
    "split_ordered",
    "split_sessions",
]

"""Feature computation settings (contract defaults). Times are integer milliseconds."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_CORRECTION_MARKERS: tuple[str, ...] = (
    "wrong",
    "incorrect",
    "not right",
    "actually",
    "i meant",
    "i said",
    "that's not",
    "that is not",
    "不对",
    "错了",
    "应该是",
    "实际上",
    "其实",
    "你看错了",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class FeatureConfig:
    """Parameters of sessionization and the derived features (contract sections 2-3)."""

    session_gap_ms: int = 1_800_000
    max_out_of_order_ms: int = 10_000
    idle_timeout_ms: int = 60_000
    cta_window_ms: int = 600_000
    silence_gap_ms: int = 300_000
    stall_turns: int = 3
    repeat_lookback: int = 3
    repeat_similarity: float = 0.85
    low_confidence: float = 0.6
    slow_response_ms: int = 15_000
    correction_markers: tuple[str, ...] = DEFAULT_CORRECTION_MARKERS

    def __post_init__(self) -> None:
        positive = ("session_gap_ms", "idle_timeout_ms", "stall_turns")
        for name in positive:
            value = getattr(self, name)
            if type(value) is not int or value <= 0:
                raise ValueError(f"FeatureConfig.{name} must be a positive integer, got {value!r}")
        non_negative = (
            "max_out_of_order_ms",
            "cta_window_ms",
            "silence_gap_ms",
            "repeat_lookback",
            "slow_response_ms",
        )
        for name in non_negative:
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"FeatureConfig.{name} must be an integer >= 0, got {value!r}")
        for name in ("repeat_similarity", "low_confidence"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"FeatureConfig.{name} must be a number, got {value!r}")
        if not isinstance(self.correction_markers, tuple) or not all(
            isinstance(m, str) and m.strip() for m in self.correction_markers
        ):
            raise ValueError(
                "FeatureConfig.correction_markers must be a tuple of non-empty strings"
            )

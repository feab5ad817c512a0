"""When to retrain.

A retrain starts when any of these holds:

* ``on_demand``: ``flywheel retrain --force``;
* ``new_samples``: the pool holds at least ``min_new_samples`` labeled samples (high or
  medium) that no trained version has seen (neither trained on nor held out for its gate);
* ``flagged_rate``: since the last trained version, at least ``min_sessions`` sessions
  closed and the share of them flagged reached ``flagged_rate_threshold``
  (from Redis ``fw:stats:total`` fields ``sessions_closed`` / ``sessions_flagged``; the
  totals at training time are stored in the version's manifest, so one high-rate period
  triggers one retrain, not one per run). This trigger also needs at least one new
  labeled sample: a flagged rate alone gives the trainer nothing new to learn from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from training.online import read_hash_ints, stats_total_key
from training.settings import RetrainConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class FlagStats:
    sessions_closed: int = 0
    sessions_flagged: int = 0

    def since(self, earlier: FlagStats) -> FlagStats:
        # A Redis reset makes the totals smaller than the snapshot: count from zero then.
        if self.sessions_closed < earlier.sessions_closed:
            return self
        return FlagStats(
            sessions_closed=self.sessions_closed - earlier.sessions_closed,
            sessions_flagged=max(0, self.sessions_flagged - earlier.sessions_flagged),
        )

    @property
    def flagged_rate(self) -> float:
        return self.sessions_flagged / self.sessions_closed if self.sessions_closed else 0.0


def read_flag_stats(redis: Any, prefix: str = "fw:") -> FlagStats:
    """Totals from ``fw:stats:total`` (zeros without Redis)."""
    if redis is None:
        return FlagStats()
    values = read_hash_ints(redis, stats_total_key(prefix), ("sessions_closed", "sessions_flagged"))
    return FlagStats(**values)


@dataclass(frozen=True, slots=True, kw_only=True)
class TriggerDecision:
    fire: bool
    reasons: list[str] = field(default_factory=list)
    new_labeled_samples: int = 0
    window: FlagStats = FlagStats()
    explanation: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["window"]["flagged_rate"] = round(self.window.flagged_rate, 6)
        return out


def check_triggers(
    *,
    new_labeled_samples: int,
    stats_now: FlagStats,
    stats_at_last_training: FlagStats,
    config: RetrainConfig,
    force: bool = False,
) -> TriggerDecision:
    """Which triggers hold (pure)."""
    window = stats_now.since(stats_at_last_training)
    reasons = []
    notes = []
    if force:
        reasons.append("on_demand")
    if new_labeled_samples >= config.min_new_samples:
        reasons.append("new_samples")
    else:
        notes.append(f"{new_labeled_samples} new labeled samples < {config.min_new_samples}")
    rate_high = (
        window.sessions_closed >= config.min_sessions
        and window.flagged_rate >= config.flagged_rate_threshold
    )
    if rate_high and new_labeled_samples > 0:
        reasons.append("flagged_rate")
    elif rate_high:
        notes.append(
            f"flagged rate {window.flagged_rate:.3f} over {window.sessions_closed} sessions "
            "is high, "
            "but the pool has no new labeled samples: label the review queue"
        )
    else:
        notes.append(
            f"flagged rate {window.flagged_rate:.3f} over {window.sessions_closed} sessions "
            f"(needs >= {config.flagged_rate_threshold} over >= {config.min_sessions})"
        )
    return TriggerDecision(
        fire=bool(reasons),
        reasons=reasons,
        new_labeled_samples=new_labeled_samples,
        window=window,
        explanation="; ".join(notes) if not reasons else "triggered by " + ", ".join(reasons),
    )


__all__ = ["FlagStats", "TriggerDecision", "check_triggers", "read_flag_stats"]

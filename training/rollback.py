"""Automatic canary rollback from online session outcomes.

The feature job counts, per closed session, under the session's ``model_version``:
``fw:model:<version>`` hash fields ``sessions`` and ``negative_sessions``. Here the
canary's negative-session rate is compared with stable's:

* fewer than ``min_canary_sessions`` canary sessions -> ``wait`` (not enough evidence);
* ``canary_rate - stable_rate > negative_rate_margin`` -> ``rollback``: the canary
  pointer is cleared (all traffic back on stable) and the decision is logged to the
  registry's S3 log and the ``fw:registry:log`` Redis list;
* otherwise -> ``keep``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from training.online import model_key, read_hash_ints
from training.settings import RollbackConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelOutcomes:
    """Closed sessions served by one version, and how many had negative feedback."""

    version: str
    sessions: int
    negative_sessions: int

    @property
    def negative_rate(self) -> float:
        return self.negative_sessions / self.sessions if self.sessions else 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RollbackDecision:
    action: str  # "rollback" | "keep" | "wait" | "no_canary"
    reason: str
    stable: ModelOutcomes | None = None
    canary: ModelOutcomes | None = None
    margin: float = 0.0
    min_canary_sessions: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for role in ("stable", "canary"):
            outcome = getattr(self, role)
            if outcome is not None:
                out[role]["negative_rate"] = round(outcome.negative_rate, 6)
        return out


def read_outcomes(redis: Any, prefix: str, version: str) -> ModelOutcomes:
    """``fw:model:<version>`` as numbers (a missing hash reads as zero sessions)."""
    values = read_hash_ints(redis, model_key(prefix, version), ("sessions", "negative_sessions"))
    return ModelOutcomes(
        version=version, sessions=values["sessions"], negative_sessions=values["negative_sessions"]
    )


def decide(
    stable: ModelOutcomes, canary: ModelOutcomes, config: RollbackConfig
) -> RollbackDecision:
    """Pure rule: roll back, keep, or wait for more canary sessions."""
    common = {
        "stable": stable,
        "canary": canary,
        "margin": config.negative_rate_margin,
        "min_canary_sessions": config.min_canary_sessions,
    }
    if canary.sessions < config.min_canary_sessions:
        return RollbackDecision(
            action="wait",
            reason=(
                f"canary {canary.version} has {canary.sessions} closed sessions, "
                f"fewer than {config.min_canary_sessions}"
            ),
            **common,
        )
    excess = canary.negative_rate - stable.negative_rate
    if excess > config.negative_rate_margin:
        return RollbackDecision(
            action="rollback",
            reason=(
                f"canary {canary.version} negative-session rate {canary.negative_rate:.3f} "
                f"exceeds stable {stable.version} {stable.negative_rate:.3f} by {excess:.3f} "
                f"> {config.negative_rate_margin}"
            ),
            **common,
        )
    return RollbackDecision(
        action="keep",
        reason=(
            f"canary {canary.version} negative-session rate {canary.negative_rate:.3f} vs stable "
            f"{stable.negative_rate:.3f}: within {config.negative_rate_margin}"
        ),
        **common,
    )


def check_canary(
    registry: Any, redis: Any, config: RollbackConfig, prefix: str = "fw:"
) -> RollbackDecision:
    """Read the outcomes of stable and canary; roll the canary back when it is worse."""
    pointers = registry.pointers(validate=True)
    if not pointers.canary or not pointers.stable:
        return RollbackDecision(action="no_canary", reason="no canary is being served")
    decision = decide(
        read_outcomes(redis, prefix, pointers.stable),
        read_outcomes(redis, prefix, pointers.canary),
        config,
    )
    if decision.action == "rollback":
        registry.rollback("canary", reason="auto: " + decision.reason)
        registry.log_decision(
            {**decision.to_dict(), "action": "auto_rollback", "version": pointers.canary}
        )
    return decision


__all__ = ["ModelOutcomes", "RollbackDecision", "check_canary", "decide", "read_outcomes"]

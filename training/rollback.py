"""Automatic canary rollback from online session outcomes, with a sequential test.

The feature job counts, per closed session, under the session's ``model_version``:
``fw:model:<version>`` hash fields ``sessions`` and ``negative_sessions`` (exact across
restarts). Canary and stable are compared over the same window: the canary's sessions
(it starts at zero) against stable's sessions since the canary started (the registry
keeps stable's counters at that moment with the canary pointer, ``canary_since``).

The test is an always-valid one-sided mixture sequential probability ratio test
(mSPRT) on the difference of the two negative-session rates, with the normal
approximation: under "the canary is no worse" the statistic is a martingale, so the
chance that it ever crosses ``1 / false_alarm_rate`` stays below ``false_alarm_rate``
however often the check runs (Ville's inequality; the plug-in variance makes that
approximate). ``min_difference`` is the scale of the mixture: the difference worth
catching quickly.

* fewer than ``min_canary_sessions`` canary sessions -> ``wait``;
* statistic >= 1 / ``false_alarm_rate`` -> ``rollback``: the canary pointer is cleared
  (all traffic back on stable) and the decision, with its numbers, is logged to the
  registry's S3 log and the ``fw:registry:log`` Redis list;
* otherwise -> ``keep``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from training.online import canary_check_key, model_key, read_hash_ints
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

    def since(self, start: Mapping[str, int] | None) -> ModelOutcomes:
        """These outcomes minus the counters as they were at ``start`` (None: all of them)."""
        if not start:
            return self
        return ModelOutcomes(
            version=self.version,
            sessions=max(0, self.sessions - int(start.get("sessions", 0))),
            negative_sessions=max(
                0, self.negative_sessions - int(start.get("negative_sessions", 0))
            ),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SequentialTest:
    """The numbers behind one look: difference, its variance, log statistic, threshold."""

    difference: float  # canary rate - stable rate
    variance: float
    log_statistic: float  # log of the one-sided mixture likelihood ratio
    log_threshold: float  # log(1 / false_alarm_rate)

    @property
    def rejects(self) -> bool:
        """Whether the canary is worse, with the configured false-alarm rate."""
        return self.log_statistic >= self.log_threshold


def sequential_test(
    stable: ModelOutcomes, canary: ModelOutcomes, config: RollbackConfig
) -> SequentialTest:
    """One look of the one-sided normal-mixture SPRT for canary rate > stable rate.

    With d the observed difference, v its variance under the null (pooled rate) and
    tau = ``min_difference``, the
    mixture over a half-normal prior on the true difference is
    2 sqrt(v / (v + tau^2)) exp(tau^2 d^2 / (2 v (v + tau^2))) Phi(tau d / sqrt(v (v + tau^2))).
    """
    p_canary, p_stable = canary.negative_rate, stable.negative_rate
    n_c, n_s = max(canary.sessions, 1), max(stable.sessions, 1)
    # The variance of the difference under the null (one rate for both, pooled), as the
    # two-proportion z-test has it; half a session either way keeps it above zero.
    pooled = (canary.negative_sessions + stable.negative_sessions) / (n_c + n_s)
    pooled = min(max(pooled, 0.5 / (n_c + n_s)), 1 - 0.5 / (n_c + n_s))
    variance = pooled * (1 - pooled) * (1 / n_c + 1 / n_s)
    tau2 = config.min_difference**2
    d = p_canary - p_stable
    z = math.sqrt(tau2) * d / math.sqrt(variance * (variance + tau2))
    phi = 0.5 * math.erfc(-z / math.sqrt(2))
    log_statistic = (
        math.log(2)
        + 0.5 * math.log(variance / (variance + tau2))
        + tau2 * d * d / (2 * variance * (variance + tau2))
        + (math.log(phi) if phi > 0 else -math.inf)
    )
    return SequentialTest(
        difference=d,
        variance=variance,
        log_statistic=log_statistic,
        log_threshold=math.log(1 / config.false_alarm_rate),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RollbackDecision:
    action: str  # "rollback" | "keep" | "wait" | "no_canary"
    reason: str
    stable: ModelOutcomes | None = None
    canary: ModelOutcomes | None = None
    test: SequentialTest | None = None
    false_alarm_rate: float = 0.0
    min_difference: float = 0.0
    min_canary_sessions: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for role in ("stable", "canary"):
            outcome = getattr(self, role)
            if outcome is not None:
                out[role]["negative_rate"] = round(outcome.negative_rate, 6)
        if self.test is not None:
            out["test"] = {k: round(v, 6) for k, v in out["test"].items()}
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
    """Pure rule: roll back, keep, or wait for more canary sessions (same window each)."""
    common: dict[str, Any] = {
        "stable": stable,
        "canary": canary,
        "false_alarm_rate": config.false_alarm_rate,
        "min_difference": config.min_difference,
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
    test = sequential_test(stable, canary, config)
    rates = (
        f"canary {canary.version} negative-session rate {canary.negative_rate:.3f} "
        f"({canary.sessions} sessions) vs stable {stable.version} {stable.negative_rate:.3f} "
        f"({stable.sessions} since the canary started): log statistic "
        f"{test.log_statistic:.2f}, threshold {test.log_threshold:.2f}"
    )
    if test.rejects:
        return RollbackDecision(action="rollback", reason=rates + ": worse", test=test, **common)
    return RollbackDecision(action="keep", reason=rates, test=test, **common)


def check_canary(
    registry: Any, redis: Any, config: RollbackConfig, prefix: str = "fw:"
) -> RollbackDecision:
    """Read the outcomes of stable and canary; roll the canary back when it is worse."""
    pointers = registry.pointers(validate=True)
    if not pointers.canary or not pointers.stable:
        return RollbackDecision(action="no_canary", reason="no canary is being served")
    stable = read_outcomes(redis, prefix, pointers.stable).since(pointers.canary_since)
    decision = decide(stable, read_outcomes(redis, prefix, pointers.canary), config)
    # Every look is recorded, not only a rollback: the dashboard shows how close the
    # canary is to the threshold.
    redis.set(
        canary_check_key(prefix, registry.model_name),
        json.dumps({**decision.to_dict(), "at_ms": int(time.time() * 1000)}),
    )
    if decision.action == "rollback":
        registry.rollback("canary", reason="auto: " + decision.reason)
        registry.log_decision(
            {**decision.to_dict(), "action": "auto_rollback", "version": pointers.canary}
        )
    return decision


__all__ = [
    "ModelOutcomes",
    "RollbackDecision",
    "SequentialTest",
    "check_canary",
    "decide",
    "read_outcomes",
    "sequential_test",
]

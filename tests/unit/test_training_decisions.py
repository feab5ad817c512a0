"""The pure decision rules: gate, retrain triggers, router buckets, canary rollback."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from training.errors import RegistryPointerError
from training.evaluate import EvalSets, accuracy_report, evaluate_model, gate
from training.registry import BUCKETS, Pointers, route, user_bucket
from training.rollback import ModelOutcomes, decide
from training.settings import GateConfig, RetrainConfig, RollbackConfig
from training.synthetic import LabeledText
from training.triggers import FlagStats, check_triggers


def _eval(version: str, overall: float, core: float, slice_acc: float, n_slice: int = 40) -> Any:
    return {
        "version": version,
        "overall_accuracy": overall,
        "core_accuracy": core,
        "slice_accuracy": slice_acc,
        "failure_slice": {"n": n_slice, "accuracy": slice_acc},
    }


def test_gate_passes_a_slice_gain_without_regressions() -> None:
    decision = gate(_eval("v2", 0.97, 0.995, 0.9), _eval("v1", 0.83, 1.0, 0.1), GateConfig())
    assert decision.passed, decision.reasons
    assert {c.name: c.passed for c in decision.checks} == {
        "slice_examples": True,
        "slice_gain": True,
        "overall_drop": True,
        "core_drop": True,
    }


@pytest.mark.parametrize(
    ("candidate", "failed"),
    [
        (_eval("v2", 0.84, 1.0, 0.12), "slice_gain"),  # not enough gain on the slice
        (_eval("v2", 0.80, 0.995, 0.9), "overall_drop"),  # lost 3 points overall
        (_eval("v2", 0.95, 0.985, 0.9), "core_drop"),  # slice gain hides a core regression
        (_eval("v2", 0.95, 1.0, 0.9, n_slice=3), "slice_examples"),  # too little evidence
    ],
)
def test_gate_rejects_and_names_the_failed_check(candidate: Any, failed: str) -> None:
    decision = gate(candidate, _eval("v1", 0.83, 1.0, 0.1), GateConfig())
    assert not decision.passed
    assert [c.name for c in decision.checks if not c.passed] == [failed]
    assert decision.reasons[0].startswith(failed)


def test_gate_margins_are_configurable() -> None:
    candidate, current = _eval("v2", 0.82, 0.98, 0.2), _eval("v1", 0.83, 1.0, 0.1)
    assert not gate(candidate, current, GateConfig()).passed
    assert gate(candidate, current, GateConfig(min_slice_gain=0.1, max_overall_drop=0.05)).passed


class _Fixed:
    version = "fixed"

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers

    def predict(self, texts: list[str]) -> list[Any]:
        from training.classifier import Prediction

        return [Prediction(self.answers[t], 0.8) for t in texts]


def test_accuracy_report_per_slice_and_label() -> None:
    rows = [
        LabeledText(text="a", label="x"),
        LabeledText(text="b", label="y"),
        LabeledText(text="c", label="y", slice="weak"),
    ]
    report = accuracy_report(_Fixed({"a": "x", "b": "y", "c": "x"}), rows)
    assert report["accuracy"] == pytest.approx(2 / 3)
    assert report["per_slice"] == {
        "core": {"n": 2, "accuracy": 1.0},
        "weak": {"n": 1, "accuracy": 0.0},
    }
    assert report["confusion"]["y"] == {"x": 1, "y": 1}
    metrics = evaluate_model(
        _Fixed({"a": "x", "b": "y", "c": "x"}), EvalSets(heldout=rows, failure_slice=rows[2:])
    )
    assert (metrics["core_accuracy"], metrics["slice_accuracy"]) == (1.0, 0.0)


def test_triggers() -> None:
    config = RetrainConfig(min_new_samples=100, flagged_rate_threshold=0.15, min_sessions=200)
    quiet = check_triggers(
        new_labeled_samples=10,
        stats_now=FlagStats(sessions_closed=1000, sessions_flagged=100),
        stats_at_last_training=FlagStats(),
        config=config,
    )
    assert not quiet.fire and "10 new labeled samples" in quiet.explanation
    assert check_triggers(
        new_labeled_samples=100,
        stats_now=FlagStats(),
        stats_at_last_training=FlagStats(),
        config=config,
    ).reasons == ["new_samples"]
    rate = check_triggers(
        new_labeled_samples=5,
        stats_now=FlagStats(sessions_closed=1300, sessions_flagged=250),
        stats_at_last_training=FlagStats(sessions_closed=1000, sessions_flagged=200),
        config=config,
    )
    assert rate.reasons == ["flagged_rate"]  # 50 of 300 since last training = 16.7 %
    assert rate.window == FlagStats(sessions_closed=300, sessions_flagged=50)
    too_few = check_triggers(
        new_labeled_samples=5,
        stats_now=FlagStats(sessions_closed=1100, sessions_flagged=200),
        stats_at_last_training=FlagStats(sessions_closed=1000, sessions_flagged=100),
        config=config,
    )
    assert not too_few.fire  # 100 % flagged, but only 100 sessions
    nothing_new = check_triggers(
        new_labeled_samples=0,
        stats_now=FlagStats(sessions_closed=500, sessions_flagged=400),
        stats_at_last_training=FlagStats(),
        config=config,
    )
    assert not nothing_new.fire and "label the review queue" in nothing_new.explanation
    assert check_triggers(
        new_labeled_samples=0,
        stats_now=FlagStats(),
        stats_at_last_training=FlagStats(),
        config=config,
        force=True,
    ).reasons == ["on_demand"]
    reset = FlagStats(sessions_closed=300, sessions_flagged=60).since(
        FlagStats(sessions_closed=5000, sessions_flagged=100)
    )
    assert reset == FlagStats(sessions_closed=300, sessions_flagged=60)


def test_router_buckets_are_deterministic_and_match_the_share() -> None:
    assert user_bucket("alice") == user_bucket("alice")
    import hashlib

    assert user_bucket("alice") == int(hashlib.sha256(b"alice").hexdigest(), 16) % 10_000
    assert all(0 <= user_bucket(f"u{i}") < BUCKETS for i in range(1000))
    pointers = Pointers(stable="intent-v1", canary="intent-v2", canary_share=0.10)
    served = Counter(route(f"user-{i}", pointers) for i in range(20_000))
    assert 0.09 < served["intent-v2"] / 20_000 < 0.11
    # Growing the share keeps every canary user on the canary (buckets are nested).
    wider = Pointers(stable="intent-v1", canary="intent-v2", canary_share=0.5)
    assert all(
        route(f"user-{i}", wider) == "intent-v2"
        for i in range(5000)
        if route(f"user-{i}", pointers) == "intent-v2"
    )
    assert route("x", Pointers(stable="intent-v1")) == "intent-v1"
    assert (
        route("x", Pointers(stable="intent-v1", canary="intent-v2", canary_share=1.0))
        == "intent-v2"
    )
    with pytest.raises(RegistryPointerError):
        route("x", Pointers())


def test_rollback_rule() -> None:
    config = RollbackConfig(min_canary_sessions=100)
    stable = ModelOutcomes(version="intent-v1", sessions=5000, negative_sessions=500)  # 10 %
    worse = ModelOutcomes(version="intent-v2", sessions=200, negative_sessions=40)  # 20 %
    fine = ModelOutcomes(version="intent-v2", sessions=200, negative_sessions=28)  # 14 %
    early = ModelOutcomes(version="intent-v2", sessions=50, negative_sessions=40)
    assert decide(stable, worse, config).action == "rollback"
    assert decide(stable, fine, config).action == "keep"
    assert decide(stable, early, config).action == "wait"
    # A stricter false-alarm rate needs more evidence than 200 sessions at 20 % vs 10 %.
    strict = RollbackConfig(false_alarm_rate=1e-12, min_canary_sessions=100)
    assert decide(stable, worse, strict).action == "keep"
    logged = decide(stable, worse, config).to_dict()
    assert logged["canary"]["negative_rate"] == 0.2
    assert logged["test"]["log_statistic"] >= logged["test"]["log_threshold"] > 0
    assert logged["test"]["difference"] == pytest.approx(0.1)


def _simulate(p_stable: float, p_canary: float, canary_sessions: int, seed: int) -> int | None:
    """Canary sessions at the first rollback (None: never), checked every 20 of them."""
    import numpy as np

    rng = np.random.default_rng(seed)
    config = RollbackConfig()  # the defaults: false-alarm rate 5 %, min_canary_sessions 100
    stable_n = stable_x = canary_n = canary_x = 0
    while canary_n < canary_sessions:
        # A 10 % canary share: 180 stable sessions for every 20 on the canary.
        stable_n, stable_x = stable_n + 180, stable_x + int(rng.binomial(180, p_stable))
        canary_n, canary_x = canary_n + 20, canary_x + int(rng.binomial(20, p_canary))
        decision = decide(
            ModelOutcomes(version="s", sessions=stable_n, negative_sessions=stable_x),
            ModelOutcomes(version="c", sessions=canary_n, negative_sessions=canary_x),
            config,
        )
        if decision.action == "rollback":
            return canary_n
    return None


def test_a_canary_ten_points_worse_is_rolled_back_within_400_sessions() -> None:
    runs = [_simulate(0.20, 0.30, 400, seed) for seed in range(400)]
    caught = sum(r is not None for r in runs) / len(runs)
    assert caught >= 0.95, caught


def test_an_equal_canary_checked_every_20_sessions_is_rarely_rolled_back() -> None:
    runs = [_simulate(0.20, 0.20, 2_000, 10_000 + seed) for seed in range(400)]
    false_alarms = sum(r is not None for r in runs) / len(runs)
    assert false_alarms <= 0.05, false_alarms

"""Automatic canary rollback from real Redis ``fw:model:<version>`` hashes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from training.classifier import train_intent_adapter
from training.data import base_examples
from training.online import canary_check_key, model_key, registry_key, registry_log_key
from training.registry import CANARY, STABLE, Registry
from training.rollback import check_canary, read_outcomes
from training.settings import RegistryConfig, RollbackConfig, TrainerConfig
from training.synthetic import INTENTS, base_dataset
from training.testing import tiny_bert

pytestmark = pytest.mark.integration

CONFIG = RollbackConfig(min_canary_sessions=100)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rollback")
    config = TrainerConfig(base_model_path=tiny_bert(root / "tiny"), epochs=1, device="cpu")
    return train_intent_adapter(
        base_examples(base_dataset(0, per_intent=4)), root / "a", labels=INTENTS, config=config
    ).adapter_dir


@pytest.fixture
def setup(
    s3_settings: Any,
    s3_bucket: str,
    redis_settings: Any,
    redis_prefix: str,
    adapter: Path,
    tmp_path: Path,
) -> tuple[Registry, Any]:
    redis = redis_settings.client()
    registry = Registry(
        s3_settings.model_copy(update={"bucket": s3_bucket}),
        RegistryConfig(cache_dir=tmp_path),
        redis=redis,
        redis_prefix=redis_prefix,
    )
    v1, v2 = registry.register(adapter), registry.register(adapter)
    registry.promote(v1, STABLE)
    registry.promote(v2, CANARY)
    return registry, redis


def _outcomes(redis: Any, prefix: str, version: str, sessions: int, negative: int) -> None:
    # The shape the feature job writes: integer counters in a hash per model version.
    redis.hset(
        model_key(prefix, version),
        mapping={
            "sessions": sessions,
            "negative_sessions": negative,
            "flagged_sessions": negative + 3,
        },
    )


def test_worse_canary_is_rolled_back_and_logged(
    setup: tuple[Registry, Any], redis_prefix: str
) -> None:
    registry, redis = setup
    _outcomes(redis, redis_prefix, "intent-v1", 4000, 400)  # 10 %
    _outcomes(redis, redis_prefix, "intent-v2", 150, 33)  # 22 %
    assert read_outcomes(redis, redis_prefix, "intent-v2").negative_rate == pytest.approx(0.22)
    decision = check_canary(registry, redis, CONFIG, redis_prefix)
    assert decision.action == "rollback"
    pointers = registry.pointers()
    assert (pointers.stable, pointers.canary) == ("intent-v1", None)
    assert redis.hget(registry_key(redis_prefix), "canary") == ""
    log = [json.loads(x) for x in redis.lrange(registry_log_key(redis_prefix), 0, -1)]
    assert [e["action"] for e in log][-2:] == ["rollback_canary", "auto_rollback"]
    assert log[-1]["canary"]["negative_rate"] == pytest.approx(0.22)
    assert log[-1]["version"] == "intent-v2"
    assert [d["action"] for d in registry.decisions()][-2:] == ["rollback_canary", "auto_rollback"]
    # Nothing left to roll back.
    assert check_canary(registry, redis, CONFIG, redis_prefix).action == "no_canary"


@pytest.mark.parametrize(
    ("canary", "action"),
    [((150, 20), "keep"), ((60, 50), "wait"), ((0, 0), "wait")],
)
def test_canary_within_margin_or_too_young_is_kept(
    setup: tuple[Registry, Any], redis_prefix: str, canary: tuple[int, int], action: str
) -> None:
    registry, redis = setup
    _outcomes(redis, redis_prefix, "intent-v1", 4000, 400)
    if canary[0]:
        _outcomes(redis, redis_prefix, "intent-v2", *canary)
    assert check_canary(registry, redis, CONFIG, redis_prefix).action == action
    assert registry.pointers().canary == "intent-v2"
    assert not any(e["action"] == "auto_rollback" for e in registry.decisions())
    # Every look is recorded for the dashboard, with its numbers.
    check = json.loads(redis.get(canary_check_key(redis_prefix)))
    assert check["action"] == action and check["canary"]["sessions"] == canary[0]
    assert check["at_ms"] > 0
    if action == "keep":
        assert check["test"]["log_statistic"] < check["test"]["log_threshold"]


def test_malformed_counters_read_as_zero(setup: tuple[Registry, Any], redis_prefix: str) -> None:
    registry, redis = setup
    redis.hset(
        model_key(redis_prefix, "intent-v2"), mapping={"sessions": "lots", "negative_sessions": ""}
    )
    assert read_outcomes(redis, redis_prefix, "intent-v2").sessions == 0
    assert check_canary(registry, redis, CONFIG, redis_prefix).action == "wait"

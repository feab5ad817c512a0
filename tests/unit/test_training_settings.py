"""TrainingSettings: nested sections from the environment, bad values named."""

from __future__ import annotations

import pytest

from connectors.settings import ConfigError
from training.settings import TrainingSettings


def test_nested_sections_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_TRAINING_GATE__MIN_SLICE_GAIN", "0.2")
    monkeypatch.setenv("FLYWHEEL_TRAINING_TRAINER__TARGET_MODULES", '["query", "key", "value"]')
    monkeypatch.setenv("FLYWHEEL_TRAINING_REGISTRY__CANARY_SHARE", "0.25")
    settings = TrainingSettings.load()
    assert settings.gate.min_slice_gain == 0.2
    assert settings.trainer.target_modules == ("query", "key", "value")
    assert settings.registry.canary_share == 0.25
    assert settings.retrain.flagged_rate_threshold == 0.15 and settings.retrain.min_sessions == 200


@pytest.mark.parametrize(
    ("env", "value", "field"),
    [
        ("FLYWHEEL_TRAINING_BOGUS", "1", "FLYWHEEL_TRAINING_BOGUS"),
        ("FLYWHEEL_TRAINING_GATE__MIN_SLICE_GAIN", "2", "gate.min_slice_gain"),
        ("FLYWHEEL_TRAINING_REGISTRY__CANARY_SHARE", "-0.1", "registry.canary_share"),
        ("FLYWHEEL_TRAINING_TRAINER__LABELS", '["a", "a"]', "trainer.labels"),
        ("FLYWHEEL_TRAINING_POOL__NOPE", "1", "pool.nope"),
    ],
)
def test_bad_settings_name_the_field(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, field: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as error:
        TrainingSettings.load()
    assert field in str(error.value)

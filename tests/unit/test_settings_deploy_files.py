"""The FLYWHEEL_* variables in deploy/compose.yaml and deploy/k8s/ name real settings.

Those files are not run here (no Docker engine, no cluster), so a renamed field
would only show up in production; these tests catch it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

import deploy.settings  # noqa: F401 - registers StackSettings
import jobs.settings  # noqa: F401 - registers FeatureJobSettings
from connectors.settings import FlywheelSettings, KafkaSettings, RedisSettings, S3Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# Not a section field: the shared download cache of deploy.settings.
PROJECT_WIDE = {"FLYWHEEL_CACHE_DIR"}


def _sections() -> dict[str, type[FlywheelSettings]]:
    found: dict[str, type[FlywheelSettings]] = {}
    pending = list(FlywheelSettings.__subclasses__())
    while pending:
        cls = pending.pop()
        if cls.env_prefix() != "FLYWHEEL_":
            found[cls.env_prefix().upper()] = cls
        pending.extend(cls.__subclasses__())
    return found


def _compose_env() -> dict[str, str]:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    env: dict[str, str] = {}
    for service in compose["services"].values():
        values = service.get("environment") or {}
        if isinstance(values, dict):
            env.update({k: str(v) for k, v in values.items()})
    return env


def _k8s_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for name in ("configmap.yaml", "secret.example.yaml"):
        for doc in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()):
            env.update({k: str(v) for k, v in (doc.get("data") or doc.get("stringData")).items()})
    return env


def _flywheel_keys(env: dict[str, str]) -> list[str]:
    return sorted(k for k in env if k.startswith("FLYWHEEL_") and k not in PROJECT_WIDE)


@pytest.mark.parametrize("source", [_compose_env, _k8s_env], ids=["compose", "k8s"])
def test_every_flywheel_variable_names_a_settings_field(source: Any) -> None:
    sections = _sections()
    unknown = []
    for key in _flywheel_keys(source()):
        prefix = max((p for p in sections if key.startswith(p)), key=len, default=None)
        if prefix is None or key[len(prefix) :].lower() not in sections[prefix].model_fields:
            unknown.append(key)

    assert unknown == []


@pytest.mark.parametrize("source", [_compose_env, _k8s_env], ids=["compose", "k8s"])
def test_the_values_load(source: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("FLYWHEEL_"):
            monkeypatch.delenv(key)
    for key, value in source().items():
        if key.startswith("FLYWHEEL_") and "${" not in value:
            monkeypatch.setenv(key, value)

    for section in (KafkaSettings, RedisSettings, S3Settings, jobs.settings.FeatureJobSettings):
        section.load()  # raises ConfigError naming the field on a bad value


def test_k8s_job_entry_is_in_the_image_layout() -> None:
    deployment = yaml.safe_load((DEPLOY / "k8s" / "flinkdeployment.yaml").read_text())
    args = deployment["spec"]["job"]["args"]
    entry = args[args.index("-py") + 1]

    assert entry.startswith("/opt/flywheel/")  # deploy/Dockerfile copies the repo there
    assert deployment["spec"]["flinkVersion"] == "v1_20"

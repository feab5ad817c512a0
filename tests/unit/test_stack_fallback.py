"""The command line's one fallback to the running local stack, per service."""

from __future__ import annotations

from typing import Any

import pytest

from deploy import stack
from deploy.stack import StackEndpoints, use_running_stack_for_unset_endpoints

LOCAL = StackEndpoints(
    kafka_bootstrap="127.0.0.1:39092",
    redis_url="redis://127.0.0.1:36379/0",
    s3_endpoint_url="http://127.0.0.1:39000",
)


@pytest.fixture
def running(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack, "running_endpoints", lambda state_dir=None: LOCAL)


def test_unset_services_come_from_the_stack(running: None) -> None:
    env: dict[str, str] = {}
    assert use_running_stack_for_unset_endpoints(env) is LOCAL
    assert env == LOCAL.to_env()


def test_an_explicit_service_is_never_mixed_with_the_stacks(running: None) -> None:
    env = {
        "FLYWHEEL_KAFKA_BOOTSTRAP_SERVERS": "broker:9092",
        "FLYWHEEL_S3_ENDPOINT_URL": "https://s3",
    }
    use_running_stack_for_unset_endpoints(env)
    assert env["FLYWHEEL_KAFKA_BOOTSTRAP_SERVERS"] == "broker:9092"
    assert env["FLYWHEEL_S3_ENDPOINT_URL"] == "https://s3"
    assert "FLYWHEEL_S3_ACCESS_KEY_ID" not in env and "FLYWHEEL_S3_BUCKET" not in env
    assert env["FLYWHEEL_REDIS_URL"] == LOCAL.redis_url


def test_a_setting_given_for_a_stack_service_is_kept(running: None) -> None:
    env = {"FLYWHEEL_S3_BUCKET": "my-bucket"}
    use_running_stack_for_unset_endpoints(env)
    assert env["FLYWHEEL_S3_BUCKET"] == "my-bucket"
    assert env["FLYWHEEL_S3_ENDPOINT_URL"] == LOCAL.s3_endpoint_url


def test_no_stack_or_a_broken_state_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    env: dict[str, str] = {}
    monkeypatch.setattr(stack, "running_endpoints", lambda state_dir=None: None)
    assert use_running_stack_for_unset_endpoints(env) is None and env == {}

    def broken(state_dir: Any = None) -> None:
        raise ValueError("state file is not JSON")

    monkeypatch.setattr(stack, "running_endpoints", broken)
    assert use_running_stack_for_unset_endpoints(env) is None and env == {}


def test_connectors_do_not_import_deploy() -> None:
    """No import cycle: the fallback lives at the entry point, not in connectors/."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "connectors"
    assert not [p.name for p in root.glob("*.py") if "from deploy" in p.read_text()]

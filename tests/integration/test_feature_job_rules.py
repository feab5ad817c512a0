"""A bad rule file stops the job at start, naming the rule; nothing of it is ever executed.

Both entry points a user has: ``jobs.streaming.load_context`` (library) and the
``flywheel run`` command (subprocess, settings from ``--set`` and from the environment).
No Flink job is started: the rule file is checked before anything runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.flink]

UNKNOWN_COLUMN = """
rules:
  - {id: explicit_negative, expression: negative_feedback_count > 0}
  - {id: bad_column, expression: cart_value > 100 and no_order}
"""


def forbidden(marker: Path) -> str:
    return f"""
rules:
  - id: sneaky
    expression: "__import__('os').system('touch {marker}') == 0"
"""


ATTRIBUTE = """
rules:
  - {id: attr_access, expression: event_count.__class__ > 0}
"""


@pytest.fixture
def stack_env(stack_endpoints: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    env.update(stack_endpoints.to_env())
    return env


def _flywheel(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("flywheel")), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )


@pytest.mark.parametrize(
    ("text", "rule_id"), [(UNKNOWN_COLUMN, "bad_column"), (ATTRIBUTE, "attr_access")]
)
def test_load_context_names_the_bad_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stack_endpoints: Any, text: str, rule_id: str
) -> None:
    from features.rules import RuleError
    from jobs.streaming import load_context

    for key, value in stack_endpoints.to_env().items():
        monkeypatch.setenv(key, value)
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(RuleError) as raised:
        load_context(rules_path=str(path))
    assert raised.value.rule_id == rule_id
    assert rule_id in str(raised.value)


def test_flywheel_run_refuses_an_unknown_column(tmp_path: Path, stack_env: dict[str, str]) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(UNKNOWN_COLUMN)

    result = _flywheel("run", "--stop-when-idle", "5", "--set", f"rules_path={path}", env=stack_env)

    assert result.returncode != 0
    assert "bad_column" in result.stderr and "cart_value" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_flywheel_run_never_executes_a_rule(tmp_path: Path, stack_env: dict[str, str]) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "rules.yaml"
    path.write_text(forbidden(marker))

    result = _flywheel("run", env={**stack_env, "FLYWHEEL_JOB_RULES_PATH": str(path)})

    assert result.returncode != 0
    assert "sneaky" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()


def test_flywheel_backfill_refuses_a_bad_rule_file_before_reading(
    tmp_path: Path, stack_env: dict[str, str]
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(UNKNOWN_COLUMN)
    out = tmp_path / "out"

    result = _flywheel(
        "backfill",
        "--events",
        str(tmp_path / "missing.jsonl"),
        "--out",
        str(out),
        "--set",
        f"rules_path={path}",
        env=stack_env,
    )

    assert result.returncode != 0
    assert "bad_column" in result.stderr, result.stderr
    assert not out.exists()

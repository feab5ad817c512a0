"""Dashboard settings and the ``flywheel dashboard`` command line (no Redis needed)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from click.testing import CliRunner

from connectors.settings import ConfigError
from jobs.dashboard import dashboard, load_settings
from jobs.dashboard.app import redacted_url
from jobs.dashboard.settings import DashboardSettings


def test_defaults() -> None:
    settings = DashboardSettings.load()
    assert (settings.host, settings.port) == ("127.0.0.1", 8050)
    assert settings.refresh == timedelta(seconds=5)
    assert settings.history_minutes == 60


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_DASHBOARD_PORT", "9000")
    monkeypatch.setenv("FLYWHEEL_DASHBOARD_REFRESH", "PT2S")
    settings = DashboardSettings.load()
    assert settings.port == 9000 and settings.refresh == timedelta(seconds=2)


@pytest.mark.parametrize(
    ("env", "value", "field"),
    [
        ("FLYWHEEL_DASHBOARD_PORT", "70000", "PORT"),
        ("FLYWHEEL_DASHBOARD_REFRESH", "0.1", "REFRESH"),
        ("FLYWHEEL_DASHBOARD_HISTORY_MINUTES", "0", "HISTORY_MINUTES"),
        ("FLYWHEEL_DASHBOARD_COLOUR", "blue", "FLYWHEEL_DASHBOARD_COLOUR"),
    ],
)
def test_bad_settings_name_the_field(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, field: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as error:
        DashboardSettings.load()
    assert field in str(error.value)


def test_redis_url_option_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_REDIS_URL", "redis://127.0.0.1:1111/0")
    redis_settings, _ = load_settings(redis_url="redis://127.0.0.1:2222/0")
    assert redis_settings.url == "redis://127.0.0.1:2222/0"


def test_cli_reports_bad_settings_as_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_DASHBOARD_PORT", "not-a-port")
    result = CliRunner().invoke(dashboard, [])
    assert result.exit_code == 2
    assert "FLYWHEEL_DASHBOARD_PORT" in result.output


def test_cli_help_lists_options() -> None:
    result = CliRunner().invoke(dashboard, ["--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--redis-url"):
        assert option in result.output


def test_redacted_url_hides_the_password() -> None:
    assert redacted_url("redis://user:pw@host:6379/0") == "redis://user:***@host:6379/0"
    assert redacted_url("redis://host:6379/0") == "redis://host:6379/0"

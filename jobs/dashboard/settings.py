"""Settings of the dashboard web app (``FLYWHEEL_DASHBOARD_*``)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from connectors.settings import FlywheelSettings


class DashboardSettings(FlywheelSettings):
    """Where the dashboard listens and how often the page polls."""

    model_config = SettingsConfigDict(
        env_prefix="FLYWHEEL_DASHBOARD_", extra="forbid", frozen=True, validate_default=True
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8050, ge=0, le=65535)
    # How often the page asks the API for fresh figures.
    refresh: timedelta = timedelta(seconds=5)
    # How many minutes of per-minute history the charts show.
    history_minutes: int = Field(default=60, ge=1, le=2880)

    @field_validator("refresh")
    @classmethod
    def _sensible_refresh(cls, value: timedelta) -> timedelta:
        if value < timedelta(milliseconds=500):
            raise ValueError("refresh must be at least 0.5 s (the page polls Redis each time)")
        return value

"""``flywheel dashboard``: a small web page showing the flywheel's health from Redis.

The app reads only the Redis keys documented in ``jobs/dashboard/README.md``;
it needs no front-end build step (plain HTML, CSS and JavaScript with
hand-drawn SVG charts, nothing fetched at run time).
"""

from __future__ import annotations

from typing import Any

import click

from connectors.settings import ConfigError, RedisSettings

__all__ = ["dashboard", "load_settings"]


def load_settings(
    host: str | None = None, port: int | None = None, redis_url: str | None = None
) -> tuple[RedisSettings, Any]:
    """Redis and dashboard settings: options, then FLYWHEEL_* env (which the CLI entry
    point fills in from a running local stack)."""
    from jobs.dashboard.settings import DashboardSettings

    redis_overrides: dict[str, Any] = {}
    if redis_url:
        redis_overrides["url"] = redis_url
    dashboard_overrides = {
        name: value for name, value in (("host", host), ("port", port)) if value is not None
    }
    return RedisSettings.load(**redis_overrides), DashboardSettings.load(**dashboard_overrides)


@click.command("dashboard")
@click.option("--host", default=None, help="Interface to listen on [FLYWHEEL_DASHBOARD_HOST].")
@click.option("--port", type=int, default=None, help="Port to listen on [FLYWHEEL_DASHBOARD_PORT].")
@click.option(
    "--redis-url",
    default=None,
    help="Redis to read [FLYWHEEL_REDIS_URL; default: the running local stack's].",
)
def dashboard(host: str | None, port: int | None, redis_url: str | None) -> None:
    """Serve the flywheel dashboard (signals, flagged rates, pool, models, sessions)."""
    import uvicorn

    from jobs.dashboard.app import create_app, redacted_url

    try:
        redis_settings, dashboard_settings = load_settings(host, port, redis_url)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    app = create_app(redis_settings, dashboard_settings)
    click.echo(
        f"Flywheel dashboard on http://{dashboard_settings.host}:{dashboard_settings.port}/ "
        f"reading {redacted_url(redis_settings.url)} (keys {redis_settings.key_prefix}*)"
    )
    uvicorn.run(
        app, host=dashboard_settings.host, port=dashboard_settings.port, log_level="warning"
    )

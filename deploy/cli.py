"""``flywheel stack``: start, stop and inspect the local stack."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import click

from connectors.settings import ConfigError

_STATE_DIR_HELP = (
    "State directory (pid files, logs, data, stack.json). "
    "Default: $FLYWHEEL_STACK_STATE_DIR or <repo>/.flywheel."
)


def _progress(message: str) -> None:
    click.echo(message, err=True)


def _settings(state_dir: Path | None, **overrides: Any) -> Any:
    from deploy.settings import StackSettings

    values = {key: value for key, value in overrides.items() if value is not None}
    if state_dir is not None:
        values["state_dir"] = state_dir
    try:
        return StackSettings.load(**values)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=_STATE_DIR_HELP,
)


@click.group()
def stack() -> None:
    """Start, stop and inspect the local stack (Kafka, Redis, S3, optional Flink).

    Every service listens on 127.0.0.1 only; ports are picked free unless given.
    Downloads are cached in $FLYWHEEL_CACHE_DIR (default ~/.cache/flywheel).
    """


@stack.command()
@state_dir_option
@click.option(
    "--kafka-port", type=int, default=None, help="Kafka broker port (0 = pick a free one)."
)
@click.option(
    "--kafka-controller-port", type=int, default=None, help="KRaft controller port (0 = pick)."
)
@click.option("--redis-port", type=int, default=None, help="Redis port (0 = pick).")
@click.option("--s3-port", type=int, default=None, help="S3 (S3Proxy) port (0 = pick).")
@click.option(
    "--flink-cluster/--no-flink-cluster",
    default=None,
    help="Also start a standalone Flink JobManager + TaskManager.",
)
@click.option(
    "--flink-rest-port", type=int, default=None, help="Flink REST/web UI port (0 = pick)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the endpoints as JSON.")
def up(
    state_dir: Path | None,
    kafka_port: int | None,
    kafka_controller_port: int | None,
    redis_port: int | None,
    s3_port: int | None,
    flink_cluster: bool | None,
    flink_rest_port: int | None,
    as_json: bool,
) -> None:
    """Start the stack, or reuse the services that already run healthy."""
    from deploy.jars import JarDownloadError
    from deploy.stack import Stack, StackError

    settings = _settings(
        state_dir,
        kafka_port=kafka_port,
        kafka_controller_port=kafka_controller_port,
        redis_port=redis_port,
        s3_port=s3_port,
        flink_rest_port=flink_rest_port,
    )
    started = time.monotonic()
    try:
        endpoints = Stack(settings).up(flink_cluster=flink_cluster, progress=_progress)
    except (StackError, JarDownloadError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(endpoints.__dict__, indent=2))
        return
    click.echo(f"stack up in {time.monotonic() - started:.1f}s (state: {settings.state_dir})")
    click.echo(f"  kafka   {endpoints.kafka_bootstrap}")
    click.echo(f"  redis   {endpoints.redis_url}")
    click.echo(f"  s3      {endpoints.s3_endpoint_url}  (bucket {endpoints.s3_bucket})")
    if endpoints.flink_rest_url:
        click.echo(f"  flink   {endpoints.flink_rest_url}")
    click.echo('Point the pipeline at it with:  eval "$(flywheel stack env)"')


@stack.command()
@state_dir_option
@click.option("--purge", is_flag=True, help="Also delete the state directory (all data).")
def down(state_dir: Path | None, purge: bool) -> None:
    """Stop every service of the state directory; fail if a process or port is left."""
    from deploy.stack import Stack, StackError

    try:
        Stack(_settings(state_dir)).down(purge=purge, progress=_progress)
    except StackError as exc:
        raise click.ClickException(str(exc)) from None


@stack.command()
@state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option("--no-health", is_flag=True, help="Only check processes, do not call the services.")
def status(state_dir: Path | None, as_json: bool, no_health: bool) -> None:
    """Show what runs where. Exit status: 0 all healthy, 1 unhealthy, 3 not running."""
    from deploy.stack import Stack

    current = Stack(_settings(state_dir))
    services = current.status(check_health=not no_health)
    endpoints = current.running_endpoints()
    if as_json:
        payload = {
            "state_dir": str(current.state_dir),
            "running": endpoints is not None,
            "endpoints": endpoints.__dict__ if endpoints else None,
            "services": [s.__dict__ for s in services],
        }
        click.echo(json.dumps(payload, indent=2))
    else:
        click.echo(f"state dir: {current.state_dir}")
        for service in services:
            if not service.running:
                state = "stopped"
            elif service.healthy is False:
                state = "UNHEALTHY"
            else:
                state = "running" if service.healthy is None else "healthy"
            ports = " ".join(f"{role}={port}" for role, port in service.ports.items()) or "-"
            pid = service.pid if service.pid is not None else "-"
            click.echo(f"  {service.name:<18} {state:<9} pid={pid:<8} {ports}")
            if service.detail:
                click.echo(f"  {'':<18} {service.detail}")
        if endpoints:
            click.echo(
                f"kafka {endpoints.kafka_bootstrap}  redis {endpoints.redis_url}  "
                f"s3 {endpoints.s3_endpoint_url}"
            )
    if endpoints is None:
        sys.exit(3)
    if any(s.running and s.healthy is False for s in services):
        sys.exit(1)


@stack.command()
@state_dir_option
def env(state_dir: Path | None) -> None:
    """Print `export FLYWHEEL_...=...` lines for the running stack (use with eval)."""
    from deploy.stack import Stack

    endpoints = Stack(_settings(state_dir)).running_endpoints()
    if endpoints is None:
        raise click.ClickException("the stack is not running; start it with `flywheel stack up`")
    for key, value in endpoints.to_env().items():
        click.echo(f"export {key}={shlex.quote(value)}")


@stack.command()
@click.option("--json", "as_json", is_flag=True, help="Print paths as JSON.")
def fetch(as_json: bool) -> None:
    """Download the Kafka and Flink connector jars into the cache (no services started)."""
    from deploy import jars

    settings = _settings(None)
    try:
        timings = jars.fetch_all(settings)
    except jars.JarDownloadError as exc:
        raise click.ClickException(str(exc)) from None
    info = {
        "cache_dir": str(settings.cache_dir),
        "kafka_libs": str(jars.ensure_kafka_libs(settings)),
        "flink_jars": [str(p) for p in jars.flink_jar_paths(settings)],
        "flink_plugins_dir": str(jars.flink_plugins_dir(settings)),
        "seconds": timings,
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"cache: {info['cache_dir']}")
    click.echo(f"kafka libs: {info['kafka_libs']}")
    click.echo(f"flink plugins: {info['flink_plugins_dir']}")
    for path in info["flink_jars"]:
        click.echo(f"flink jar: {path}")


__all__ = ["stack"]

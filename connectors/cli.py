"""``flywheel topics``, ``flywheel produce`` and ``flywheel ingest`` commands."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import click

from connectors.settings import ConfigError, KafkaSettings


class Duration(click.ParamType):  # type: ignore[type-arg]
    """A duration such as ``7d``, ``12h``, ``30m``, ``45s``, ``500ms`` or ISO ``P7D``."""

    name = "duration"
    _units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, timedelta):
            return value
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*", str(value))
        if match:
            return timedelta(seconds=float(match.group(1)) * self._units[match.group(2)])
        from pydantic import TypeAdapter, ValidationError

        try:
            return TypeAdapter(timedelta).validate_python(str(value))
        except ValidationError:
            self.fail(f"{value!r} is not a duration (try 7d, 12h, 30m or P7D)", param, ctx)


def _kafka_settings() -> KafkaSettings:
    """Kafka settings from FLYWHEEL_KAFKA_* (the CLI entry point fills them in from a
    running local stack)."""
    return KafkaSettings.load()


def _fail_config(exc: ConfigError) -> None:
    raise click.ClickException(str(exc))


# --------------------------------------------------------------------------- topics


@click.group()
def topics() -> None:
    """Create and list the pipeline's Kafka topics.

    Kafka comes from FLYWHEEL_KAFKA_* (or the running local stack); the layout from
    FLYWHEEL_TOPICS_* and the options below.
    """


@topics.command("create")
@click.option("--events-partitions", type=click.IntRange(min=1), help="Default 6.")
@click.option("--flagged-partitions", type=click.IntRange(min=1), help="Default 3.")
@click.option("--dlq-partitions", type=click.IntRange(min=1), help="Default 3.")
@click.option("--replication-factor", type=click.IntRange(min=1), help="Default 1.")
@click.option("--min-insync-replicas", type=click.IntRange(min=1), help="Broker default if unset.")
@click.option("--events-retention", type=Duration(), help="Default 7d.")
@click.option("--flagged-retention", type=Duration(), help="Default 30d.")
@click.option("--dlq-retention", type=Duration(), help="Default 30d.")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds.")
def topics_create(timeout: float, **layout: Any) -> None:
    """Create flywheel.events, flywheel.flagged and flywheel.dlq (safe to re-run).

    Existing topics are reported and left unchanged.
    """
    from connectors.topics import TopicError, TopicSettings, ensure_topics

    overrides = {key: value for key, value in layout.items() if value is not None}
    try:
        kafka = _kafka_settings()
        settings = TopicSettings.load(kafka=kafka, **overrides)
    except ConfigError as exc:
        _fail_config(exc)
        return
    try:
        results = ensure_topics(kafka, settings.specs(), timeout=timeout)
    except TopicError as exc:
        raise click.ClickException(str(exc)) from exc
    for result in results:
        click.echo(str(result))


@topics.command("list")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds.")
def topics_list(timeout: float) -> None:
    """List topics and their partition counts."""
    from connectors.topics import TopicError, list_topics

    try:
        found = list_topics(_kafka_settings(), timeout=timeout)
    except ConfigError as exc:
        _fail_config(exc)
        return
    except TopicError as exc:
        raise click.ClickException(str(exc)) from exc
    for name, partitions in found.items():
        click.echo(f"{name}\t{partitions}")


# --------------------------------------------------------------------------- produce


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.option("--topic", help="Topic to write to (default: FLYWHEEL_KAFKA_EVENTS_TOPIC).")
@click.option(
    "--rejects",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write rejected lines here as JSON Lines (default: listed on stderr).",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
def produce(file: Path, topic: str | None, rejects: Path | None, progress: bool) -> None:
    """Send a JSON Lines FILE of events to Kafka ('-' reads stdin).

    Each line is validated before it is sent; invalid lines are rejected with line
    number, field and reason and are not sent. Exits 1 when Kafka did not
    acknowledge every valid line.
    """
    from tqdm import tqdm

    from connectors.producer import (
        DeliveryError,
        EventProducer,
        InvalidEventError,
        ProducerSettings,
    )

    try:
        settings = ProducerSettings.load(kafka=_kafka_settings())
    except ConfigError as exc:
        _fail_config(exc)
        return
    reject_file = open(rejects, "w", encoding="utf-8") if rejects else None  # noqa: SIM115
    enqueued = rejected = 0
    failure: DeliveryError | None = None
    size = None if str(file) == "-" else file.stat().st_size
    try:
        # Leaving the block flushes; DeliveryError then lists every event Kafka refused.
        with EventProducer(settings, topic=topic) as producer, tqdm(
            total=size, unit="B", unit_scale=True, disable=not progress, file=sys.stderr,
            desc="produce",
        ) as bar:  # fmt: skip
            for number, raw in _lines(file):
                bar.update(len(raw))
                line = raw.strip()
                if not line:
                    continue
                try:
                    producer.send(line)
                    enqueued += 1
                except InvalidEventError as exc:
                    rejected += 1
                    if reject_file is not None:
                        _report_reject(reject_file, True, number, exc, line)
                    else:  # through tqdm, so the progress bar does not garble the lines
                        bar.write(_reject_line(number, exc), file=sys.stderr)
    except DeliveryError as exc:
        failure = exc
    finally:
        if reject_file is not None:
            reject_file.close()
    failed = 0
    if failure is not None:
        failed = len(failure.failures) + failure.not_flushed
        for item in failure.failures[:20]:
            click.echo(f"not delivered: {item}", err=True)
        if failure.not_flushed:
            click.echo(f"{failure.not_flushed} event(s) unacknowledged at the timeout", err=True)
    click.echo(
        f"sent {enqueued - failed}, rejected {rejected}, failed {failed}"
        + (f" (rejects in {rejects})" if rejects and rejected else ""),
        err=True,
    )
    if failed:
        sys.exit(1)


def _lines(file: Path) -> Iterator[tuple[int, bytes]]:
    if str(file) == "-":
        for number, raw in enumerate(sys.stdin.buffer, start=1):
            yield number, raw
        return
    with open(file, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            yield number, raw


def _report_reject(out: IO[str], as_json: bool, number: int, exc: Any, line: bytes) -> None:
    if not as_json:
        out.write(_reject_line(number, exc) + "\n")
        return
    record = {
        "line": number,
        "field": exc.field,
        "reason": exc.reason,
        "message": exc.error.message,
        "raw": line.decode("utf-8", "replace"),
    }
    out.write(json.dumps(record, ensure_ascii=False) + "\n")


def _reject_line(number: int, exc: Any) -> str:
    return f"line {number}: {exc.field or '<line>'}: {exc.reason}: {exc.error.message}"


# --------------------------------------------------------------------------- ingest


@click.group()
def ingest() -> None:
    """HTTP ingestion service (FLYWHEEL_INGEST_* settings)."""


@ingest.command("serve")
@click.option("--host", help="Interface to bind (default FLYWHEEL_INGEST_HOST or 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default 8080).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))  # fmt: skip
def ingest_serve(host: str | None, port: int | None, log_level: str) -> None:
    """Serve POST /events, POST /feedback and GET /healthz with uvicorn."""
    from connectors.ingest import IngestSettings, serve
    from connectors.producer import ProducerSettings

    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    try:
        producer = ProducerSettings.load(kafka=_kafka_settings())
        settings = IngestSettings.load(producer=producer, **overrides)
    except ConfigError as exc:
        _fail_config(exc)
        return
    serve(settings, log_level=log_level)


__all__ = ["ingest", "produce", "topics"]

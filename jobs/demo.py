"""``flywheel demo``: the whole flywheel, end to end, on the local stack.

stack -> topics -> v1 model -> traffic (v1) -> feature job -> flagged sessions
-> sample pool -> retrain -> gate -> canary -> fresh traffic (stable + canary)
-> feature job -> automatic-rollback check -> summary
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from schemas.redis_layout import RedisKeys

DEMO_JOB_SETTINGS = {
    # Resume where the last run stopped: committed offsets, plus its savepoint when known.
    "starting_offsets": "committed",
    "checkpoint_interval": "PT3S",
}


_STARTED = time.monotonic()


def _step(message: str) -> None:
    click.secho(f"\n==> [{time.monotonic() - _STARTED:5.0f} s] {message}", fg="cyan", bold=True)


def _info(message: str) -> None:
    click.echo(f"    {message}")


def _rate(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "n/a"


def _on_terminal() -> bool:
    """Progress bars update one line in place on a terminal; piped output gets plain lines."""
    return sys.stderr.isatty()


def _produce(events: list[dict[str, Any]], label: str) -> None:
    from tqdm import tqdm

    from connectors.producer import EventProducer

    started = time.monotonic()
    with (
        EventProducer() as producer,
        tqdm(
            total=len(events),
            desc=f"    {label}",
            unit="ev",
            leave=True,
            disable=not _on_terminal(),
        ) as bar,
    ):
        for event in events:
            producer.send(event)
            bar.update(1)
    if not _on_terminal():
        _info(f"{label}: {len(events)} events sent in {time.monotonic() - started:.1f} s")


def _run_phase(
    ctx: Any, sessions: list[list[dict[str, Any]]], label: str, savepoint: str | None, idle_s: float
) -> str:
    """Start the feature job, play the traffic, wait until every session closed."""
    from tqdm import tqdm

    from jobs.commands import StaleStateError, start_running, stop_when_idle

    _info("starting the streaming feature job (embedded Flink MiniCluster)")
    try:
        client = start_running(ctx, savepoint=savepoint)
    except StaleStateError:
        if savepoint is None:
            raise
        # The demo's last savepoint came from an older version of the job (other
        # operators): the demo goes on without it, from the committed offsets.
        _info(f"the last demo savepoint ({savepoint}) is from an older job; starting without it")
        client = start_running(ctx, savepoint=None)
    events = sorted((e for s in sessions for e in s), key=lambda e: (e["ts_ms"], e["event_id"]))
    _produce(events, label)
    if not _on_terminal():
        _info(f"waiting for the job to catch up (until its input is idle {idle_s:.0f} s)")
    with tqdm(
        total=idle_s,
        desc="    waiting for the job to catch up",
        unit="s",
        bar_format="{desc}: idle {n:.0f}/{total:.0f} s",
        disable=not _on_terminal(),
    ) as bar:

        def progress(idle: float) -> None:
            bar.n = min(idle, idle_s)
            bar.refresh()

        final = stop_when_idle(ctx, client, idle_s=idle_s, drain=True, progress=progress)
    _info(f"job stopped with a final savepoint (every open session closed): {final}")
    return final


def _model_counts(redis: Any, prefix: str, version: str) -> dict[str, int]:
    raw = redis.hgetall(RedisKeys(prefix).model(version))
    return {k: int(v) for k, v in raw.items()}


@click.command("demo")
@click.option("--sessions", default=1000, show_default=True, help="Sessions of v1 traffic.")
@click.option(
    "--fresh-sessions",
    default=600,
    show_default=True,
    help="Sessions replayed after the canary is out.",
)
@click.option(
    "--canary-share",
    default=0.5,
    show_default=True,
    type=float,
    help="Traffic share of the canary during the replay (the registry default is 0.10).",
)
@click.option("--seed", default=7, show_default=True)
@click.option(
    "--idle",
    "idle_s",
    default=8.0,
    show_default=True,
    help="Seconds of idle input before a phase's job stops.",
)
@click.option("--stop-stack", is_flag=True, help="Stop the local stack at the end.")
def demo(
    sessions: int,
    fresh_sessions: int,
    canary_share: float,
    seed: int,
    idle_s: float,
    stop_stack: bool,
) -> None:
    """Run the whole flywheel end to end on the local stack and summarise it."""
    global _STARTED
    started = _STARTED = time.monotonic()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    _step("1/8 local stack: Kafka (KRaft), Redis, S3")
    from deploy.stack import ensure_up, use_running_stack_for_unset_endpoints

    endpoints = ensure_up(progress=_info)
    use_running_stack_for_unset_endpoints()  # now that it runs (the CLI looked before)
    _info(
        f"Kafka {endpoints.kafka_bootstrap} | Redis {endpoints.redis_url} | "
        f"S3 {endpoints.s3_endpoint_url}"
    )

    _step("2/8 topics")
    from connectors.settings import KafkaSettings, RedisSettings, S3Settings
    from connectors.topics import ensure_topics

    kafka = KafkaSettings.load()
    for result in ensure_topics(kafka):
        _info(f"{result.name}: {getattr(result, 'status', 'ok')}")

    from training.loop import bootstrap, run_loop
    from training.predictor import Predictor
    from training.registry import ModelRouter, Registry, route
    from training.rollback import check_canary
    from training.settings import TrainingSettings

    redis_settings = RedisSettings.load()
    redis = redis_settings.client()
    prefix = redis_settings.key_prefix
    s3 = S3Settings.load()
    training = TrainingSettings.load()
    registry = Registry(s3, training.registry, redis=redis, redis_prefix=prefix)

    _step("3/8 the current model")
    pointers = registry.pointers(validate=True)
    if not pointers.stable:
        _info("no stable model yet: training v1 on the synthetic base dataset (LoRA on MiniLM)")
        stable = bootstrap(training, registry, redis=redis, redis_prefix=prefix)
        _info(f"{stable} registered and promoted to stable")
    else:
        stable = pointers.stable
        if pointers.canary:
            registry.rollback("canary", reason="demo: start from the stable model only")
        _info(f"stable model: {stable}")

    predictors: dict[str, Any] = {}

    def predict(version: str, texts: list[str]) -> list[Any]:
        from jobs.demo_traffic import Prediction

        if version not in predictors:
            predictors[version] = Predictor.from_registry(registry, version)
        return [Prediction(p.intent, p.confidence) for p in predictors[version].predict(texts)]

    from jobs.demo_traffic import TrafficStats, generate_sessions
    from jobs.streaming import load_context

    run_id = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    state_dir = (
        Path(endpoints.state_dir) if getattr(endpoints, "state_dir", None) else Path(".flywheel")
    )
    demo_dir = state_dir / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    savepoint_file = demo_dir / "last-savepoint"
    savepoint = savepoint_file.read_text().strip() if savepoint_file.exists() else None
    ctx = load_context(
        **DEMO_JOB_SETTINGS, checkpoint_dir=(demo_dir / "checkpoints").resolve().as_uri()
    )
    now_ms = int(time.time() * 1000)

    _step(f"4/8 traffic served by {stable}: {sessions} sessions through the producer SDK")
    before = TrafficStats()
    phase1 = generate_sessions(
        sessions=sessions,
        start_ms=now_ms - 8 * 3600 * 1000,
        spacing_ms=15_000,
        seed=seed,
        route=lambda user: stable,
        predict=predict,
        session_prefix=f"demo{run_id}a",
        stats=before,
    )
    totals_before = {k: int(v) for k, v in redis.hgetall(RedisKeys(prefix).stats_total).items()}
    model_before = _model_counts(redis, prefix, stable)
    savepoint = _run_phase(ctx, phase1, "events", savepoint, idle_s)
    savepoint_file.write_text(savepoint)
    totals = {k: int(v) for k, v in redis.hgetall(RedisKeys(prefix).stats_total).items()}
    closed_1 = totals.get("sessions_closed", 0) - totals_before.get("sessions_closed", 0)
    flagged_1 = totals.get("sessions_flagged", 0) - totals_before.get("sessions_flagged", 0)
    reasons_1 = {
        k.split(":", 1)[1]: v - totals_before.get(k, 0)
        for k, v in totals.items()
        if k.startswith("flagged:")
    }
    _info(f"{closed_1} sessions closed, {flagged_1} flagged ({_rate(flagged_1, closed_1)})")
    _info("by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons_1.items()) if v))

    _step("5/8 retraining: flagged sessions -> sample pool -> LoRA -> evaluation gate")
    report = run_loop(training, s3=s3, kafka=kafka, redis=redis, redis_prefix=prefix)
    report_dict = report.to_dict() if hasattr(report, "to_dict") else dict(vars(report))
    consumed = report_dict.get("consumed") or {}
    _info(f"pool: {json.dumps(consumed, default=str)[:300]}")
    _info(f"trigger: {json.dumps(report_dict.get('trigger'), default=str)[:300]}")
    _info(
        f"result: {report_dict.get('action')} {report_dict.get('version') or ''} "
        f"{(report_dict.get('gate') or {}).get('summary', '')}"
    )
    candidate = (
        report_dict.get("version") if report_dict.get("action") == "promoted_canary" else None
    )

    if candidate:
        _step(f"6/8 canary {candidate} at {canary_share:.0%} of users")
        registry.set_canary_share(canary_share)
        router = ModelRouter(registry, refresh_s=0)
        pointers = router.pointers()
        route_user = lambda user: route(user, pointers)  # noqa: E731
    else:
        _step("6/8 no candidate passed the gate: the replay runs on stable only")
        route_user = lambda user: stable  # noqa: E731

    _step(f"7/8 fresh traffic: {fresh_sessions} sessions, routed by user")
    after = TrafficStats()
    phase2 = generate_sessions(
        sessions=fresh_sessions,
        start_ms=now_ms - 4 * 3600 * 1000,
        spacing_ms=10_000,
        seed=seed + 1,
        route=route_user,
        predict=predict,
        session_prefix=f"demo{run_id}b",
        stats=after,
    )
    savepoint = _run_phase(ctx, phase2, "fresh events", savepoint, idle_s)
    savepoint_file.write_text(savepoint)
    decision = check_canary(registry, redis, training.rollback, prefix)
    _info(f"automatic rollback check: {decision.action} ({decision.reason})")

    _step("8/8 summary")
    stable_after = _model_counts(redis, prefix, stable)
    rows = [("phase", "model", "sessions", "flagged rate", "weak-slice accuracy (in-distribution)")]
    s1 = model_before
    d_sessions = stable_after.get("sessions", 0) - s1.get("sessions", 0)
    rows.append(
        (
            "before",
            stable,
            str(closed_1),
            _rate(flagged_1, closed_1),
            _pct(before.slice_accuracy(stable)),
        )
    )
    if candidate:
        canary_counts = _model_counts(redis, prefix, candidate)
        stable_p2 = {
            k: stable_after.get(k, 0) - s1.get(k, 0) - _phase1_share(k, closed_1, flagged_1)
            for k in ("sessions", "flagged_sessions")
        }
        rows.append(
            (
                "after",
                f"{stable} (stable)",
                str(stable_p2["sessions"]),
                _rate(stable_p2["flagged_sessions"], stable_p2["sessions"]),
                _pct(after.slice_accuracy(stable)),
            )
        )
        rows.append(
            (
                "after",
                f"{candidate} (canary)",
                str(canary_counts.get("sessions", 0)),
                _rate(canary_counts.get("flagged_sessions", 0), canary_counts.get("sessions", 0)),
                _pct(after.slice_accuracy(candidate)),
            )
        )
    else:
        rows.append(("after", stable, str(d_sessions), "", _pct(after.slice_accuracy(stable))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("    " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    handwritten = (report_dict.get("gate") or {}).get("handwritten")
    if handwritten and candidate:
        _info("held-out accuracy on hand-written questions (no template, never trained on):")
        table = [("slice", f"{stable} (stable)", f"{candidate} (candidate)")]
        names = {
            "delivery_time/en": "weak slice, English",
            "delivery_time/zh": "weak slice, Chinese",
            "core/en": "other intents, English",
            "core/zh": "other intents, Chinese",
        }
        for key, name in names.items():
            current, new = handwritten["current"].get(key), handwritten["candidate"].get(key)
            if current and new:
                table.append(
                    (f"{name} (n={new['n']})", _pct(current["accuracy"]), _pct(new["accuracy"]))
                )
        widths = [max(len(r[i]) for r in table) for i in range(3)]
        for row in table:
            click.echo("    " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    gate = (report_dict.get("gate") or {}).get("summary")
    if gate:
        _info(f"evaluation gate on held-out data: {gate}")
    _info(f"registry: {json.dumps(registry.pointers().to_dict())}")
    _info(
        f"offline features: {ctx.job.output_base or f's3://{s3.bucket}/flywheel'}/session_features/"
    )
    _info("explore: .venv/bin/flywheel dashboard  (http://127.0.0.1:8050)")
    _info(f"took {time.monotonic() - started:.0f} s")
    if stop_stack:
        from deploy.stack import stop_stack as stop

        stop()
        _info("local stack stopped")
    else:
        _info("the local stack keeps running: .venv/bin/flywheel stack down to stop it")


def _phase1_share(key: str, closed_1: int, flagged_1: int) -> int:
    """Phase-1 sessions counted under the stable model (all of phase 1 ran on it)."""
    return closed_1 if key == "sessions" else flagged_1


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"

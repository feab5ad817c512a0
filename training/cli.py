"""``flywheel pool | label | train | model | retrain``.

Settings: FLYWHEEL_TRAINING_* (training/settings.py), FLYWHEEL_KAFKA_*, FLYWHEEL_REDIS_*,
FLYWHEEL_S3_*; where a service's variables are unset, the running local stack
(``flywheel stack up``) is used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from connectors.settings import ConfigError, KafkaSettings, RedisSettings, S3Settings
from training.errors import TrainingError


class Env:
    """Settings and clients of one command invocation."""

    def __init__(self) -> None:
        from training.settings import TrainingSettings

        try:
            self.settings = TrainingSettings.load()
            self.kafka = KafkaSettings.load()
            self.s3 = S3Settings.load()
            self.redis_settings = RedisSettings.load() if self.settings.use_redis else None
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        self._redis: Any = None

    @property
    def redis(self) -> Any:
        if self.redis_settings is not None and self._redis is None:
            self._redis = self.redis_settings.client()
        return self._redis

    @property
    def redis_prefix(self) -> str:
        return self.redis_settings.key_prefix if self.redis_settings is not None else "fw:"

    def registry(self, model_name: str | None = None) -> Any:
        from training.registry import Registry

        config = self.settings.registry
        if model_name:
            config = config.model_copy(update={"model_name": model_name})
        return Registry(self.s3, config, redis=self.redis, redis_prefix=self.redis_prefix)

    def store(self) -> Any:
        from training.pool import PoolStore

        return PoolStore(
            self.s3,
            self.settings.pool.prefix,
            max_corrections_per_user=self.settings.pool.max_corrections_per_user,
            redact_patterns=self.settings.pool.redact_patterns,
        )


def _echo_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, sort_keys=True, default=str))


def _run(action: Any) -> Any:
    """Turn the loop's own errors into a clean CLI failure (exit 1, message on stderr)."""
    try:
        return action()
    except (TrainingError, ConfigError) as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None


# ------------------------------------------------------------------ pool


@click.group()
def pool() -> None:
    """The labeled sample pool built from flagged sessions (Parquet on S3)."""


@pool.command("consume")
@click.option(
    "--max-messages", type=click.IntRange(min=1), default=None, help="Stop after N messages."
)
@click.option(
    "--idle-timeout-s",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Stop when no message arrived for this long.",
)
@click.option(
    "--topic", default=None, help="Flagged-sessions topic (default FLYWHEEL_KAFKA_FLAGGED_TOPIC)."
)
def pool_consume(max_messages: int | None, idle_timeout_s: float, topic: str | None) -> None:
    """Read flywheel.flagged (read-committed) into the pool; commit after each write."""
    from training.pool import ensure_bucket
    from training.pool_consumer import PoolConsumer

    env = Env()

    def act() -> Any:
        ensure_bucket(env.s3)
        consumer = PoolConsumer(
            kafka=env.kafka,
            store=env.store(),
            config=env.settings.pool,
            labels=env.settings.trainer.labels,
            topic=topic,
            redis=env.redis,
            redis_prefix=env.redis_prefix,
        )
        return consumer.run(max_messages=max_messages, idle_timeout_s=idle_timeout_s)

    _echo_json(_run(act).to_dict())


@pool.command("status")
def pool_status() -> None:
    """Counts of the pool: total, labeled high/medium, review queue."""
    env = Env()
    _echo_json(_run(lambda: env.store().counts()))


# ------------------------------------------------------------------ label


@click.group()
def label() -> None:
    """Export the review queue to Label Studio and import the annotations back."""


@label.command("export")
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Tasks file: .jsonl (one task per line) or .json (a JSON list).",
)
@click.option(
    "--all",
    "include_labeled",
    is_flag=True,
    help="Export labeled samples too, not only the review queue.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="At most N tasks (lowest confidence first).",
)
def label_export(out_path: Path, include_labeled: bool, limit: int | None) -> None:
    """Write Label Studio tasks (data.text, meta ids, the model's prediction)."""
    from training.labelstudio import export_tasks, write_tasks

    env = Env()
    samples = _run(lambda: env.store().read_samples().samples)
    samples = sorted(
        samples, key=lambda s: (s.confidence if s.confidence is not None else 0.0, s.key)
    )
    tasks = export_tasks(samples, include_labeled=include_labeled, redactor=env.store().redactor)[
        :limit
    ]
    write_tasks(tasks, out_path)
    click.echo(f"wrote {len(tasks)} task(s) to {out_path}")


@label.command("import")
@click.argument("export_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def label_import(export_file: Path) -> None:
    """Read a Label Studio JSON export; labels become quality high / source human."""
    from training.labelstudio import parse_export, read_export
    from training.online import write_pool_counts

    env = Env()

    def act() -> Any:
        store = env.store()
        known = store.sample_keys()
        result = parse_export(read_export(export_file), env.settings.trainer.labels, known)
        key = store.write_human_labels(result.labels) if result.labels else None
        write_pool_counts(env.redis, env.redis_prefix, store.counts())
        return {
            "imported": len(result.labels),
            "skipped_unlabeled": result.skipped_unlabeled,
            "object": key,
        }

    _echo_json(_run(act))


@label.command("config")
def label_config() -> None:
    """Print the Label Studio labeling config (XML) for the intent task."""
    from training.labelstudio import labeling_config

    click.echo(labeling_config(Env().settings.trainer.labels), nl=False)


# ------------------------------------------------------------------ train


@click.command()
@click.option(
    "--base-only", is_flag=True, help="Train the first version from the base dataset alone."
)
@click.option(
    "--task", type=click.Choice(["intent", "response"]), default="intent", show_default=True
)
@click.option(
    "--model",
    "model_path",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Local Hugging Face base model directory (default: the offline MiniLM package).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write the adapter here and do not register it.",
)
@click.option(
    "--promote/--no-promote",
    default=True,
    show_default=True,
    help="Promote a version that passed the gate to canary (a first version to stable).",
)
@click.option(
    "--shuffle-labels",
    is_flag=True,
    help="Permute training labels: a deliberately bad candidate (demos).",
)
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override trainer.epochs.")
def train(
    base_only: bool,
    task: str,
    model_path: Path | None,
    out_dir: Path | None,
    promote: bool,
    shuffle_labels: bool,
    epochs: int | None,
) -> None:
    """Train a LoRA adapter (intent classifier, or a causal LM on edits)."""
    env = Env()
    settings = env.settings
    if model_path is not None or epochs is not None:
        section = "causal" if task == "response" else "trainer"
        updates: dict[str, Any] = {}
        if model_path is not None:
            updates["base_model_path"] = model_path
        if epochs is not None:
            updates["epochs"] = epochs
        settings = settings.model_copy(
            update={section: getattr(settings, section).model_copy(update=updates)}
        )
    if task == "response":
        _echo_json(_run(lambda: _train_response(env, settings, out_dir, promote)))
        return
    if base_only:
        _echo_json(_run(lambda: _train_base(env, settings, out_dir, promote)))
        return

    def act() -> Any:
        from training.loop import train_candidate, train_gate_register

        snapshot = env.store().read_samples()
        if out_dir is not None:
            registry = env.registry()
            stable = registry.pointers(validate=True).stable
            parent = registry.download(stable) if stable else None
            result = train_candidate(
                snapshot, settings, out_dir, parent_dir=parent, shuffle_labels=shuffle_labels
            )
            return {
                "adapter_dir": str(result.result.adapter_dir),
                "stats": result.result.training_config["stats"],
            }
        return train_gate_register(
            settings, env.registry(), snapshot, promote=promote, shuffle_labels=shuffle_labels
        ).to_dict()

    _echo_json(_run(act))


def _train_base(env: Env, settings: Any, out_dir: Path | None, promote: bool) -> Any:
    from training.loop import bootstrap, train_base_version

    if out_dir is not None:
        result = train_base_version(settings, out_dir)
        return {"adapter_dir": str(result.adapter_dir), "stats": result.training_config["stats"]}
    registry = env.registry()
    if promote and registry.pointers(validate=True).stable is None:
        version = bootstrap(settings, registry, redis=env.redis, redis_prefix=env.redis_prefix)
        return {"version": version, "promoted": "stable", "pointers": registry.pointers().to_dict()}
    version = registry.next_version()
    result = train_base_version(
        settings, Path(settings.retrain.work_dir) / version, version=version
    )
    registry.register(result.adapter_dir, status="base", version=version)
    return {"version": version, "promoted": None, "pointers": registry.pointers().to_dict()}


def _train_response(env: Env, settings: Any, out_dir: Path | None, promote: bool) -> Any:
    from training.causal import train_response_adapter

    store = env.store()
    pairs, refs = store.read_edits()
    registry = env.registry("response")
    version = registry.next_version()
    target = out_dir or Path(settings.retrain.work_dir) / version
    result = train_response_adapter(
        pairs,
        target,
        config=settings.causal,
        version=version,
        data_sources=[{"kind": "pool_edits", "uri": r.uri, "sha256": r.sha256} for r in refs],
        redactor=store.redactor,
    )
    summary = {
        "adapter_dir": str(result.adapter_dir),
        "train_pairs": result.train_pairs,
        "eval_pairs": result.eval_pairs,
        "eval_loss_before": result.eval_loss_before,
        "eval_loss_after": result.eval_loss_after,
    }
    if out_dir is None:
        improved = result.eval_loss_after < result.eval_loss_before
        registry.register(
            result.adapter_dir, status="accepted" if improved else "rejected", version=version
        )
        summary["version"] = version
        if improved and promote:
            stable = registry.pointers().stable
            registry.promote(version, "canary" if stable else "stable", reason="eval loss improved")
        summary["pointers"] = registry.pointers().to_dict()
    return summary


# ------------------------------------------------------------------ model


@click.group()
@click.option(
    "--name", "model_name", default=None, help="Model name in the registry (default: intent)."
)
@click.pass_context
def model(ctx: click.Context, model_name: str | None) -> None:
    """The model registry on S3: status, promote, rollback, canary checks."""
    ctx.obj = model_name


@model.command("status")
@click.pass_obj
def model_status(model_name: str | None) -> None:
    """Pointers (stable, canary, share) and every version with its gate summary."""
    env = Env()
    _echo_json(_run(lambda: env.registry(model_name).status()))


@model.command("promote")
@click.argument("version")
@click.option(
    "--to", "target", type=click.Choice(["canary", "stable"]), default="canary", show_default=True
)
@click.option("--reason", default="manual", show_default=True)
@click.pass_obj
def model_promote(model_name: str | None, version: str, target: str, reason: str) -> None:
    """Point canary or stable at VERSION."""
    env = Env()
    _echo_json(
        _run(lambda: env.registry(model_name).promote(version, target, reason=reason).to_dict())
    )


@model.command("rollback")
@click.option("--stable", "which", flag_value="stable", help="Restore the previous stable version.")
@click.option(
    "--canary", "which", flag_value="canary", default=True, help="Stop the canary (default)."
)
@click.option("--reason", default="manual", show_default=True)
@click.pass_obj
def model_rollback(model_name: str | None, which: str, reason: str) -> None:
    """Roll back the canary, or the stable version to the previous one."""
    env = Env()
    _echo_json(_run(lambda: env.registry(model_name).rollback(which, reason=reason).to_dict()))


@model.command("share")
@click.argument("share", type=click.FloatRange(0.0, 1.0))
@click.pass_obj
def model_share(model_name: str | None, share: float) -> None:
    """Set the canary's traffic share (0..1)."""
    env = Env()
    _echo_json(_run(lambda: env.registry(model_name).set_canary_share(share).to_dict()))


@model.command("check-canary")
@click.pass_obj
def model_check_canary(model_name: str | None) -> None:
    """Roll the canary back if its negative-session rate is worse than stable's."""
    from training.rollback import check_canary

    env = Env()
    if env.redis is None:
        raise click.ClickException(
            "automatic rollback reads Redis: set FLYWHEEL_TRAINING_USE_REDIS=true"
        )
    _echo_json(
        _run(
            lambda: check_canary(
                env.registry(model_name), env.redis, env.settings.rollback, env.redis_prefix
            ).to_dict()
        )
    )


@model.command("route")
@click.argument("user_ids", nargs=-1, required=True)
@click.pass_obj
def model_route(model_name: str | None, user_ids: tuple[str, ...]) -> None:
    """Which version each USER_ID is served (the ModelRouter's answer)."""
    from training.registry import ModelRouter, user_bucket

    env = Env()
    router = ModelRouter(env.registry(model_name))
    _echo_json(
        _run(
            lambda: {
                u: {"version": router.adapter_for(u), "bucket": user_bucket(u)} for u in user_ids
            }
        )
    )


# ------------------------------------------------------------------ retrain


@click.command()
@click.option("--force", is_flag=True, help="Train even when no trigger holds.")
@click.option("--no-consume", is_flag=True, help="Skip reading new flagged sessions first.")
@click.option(
    "--max-messages", type=click.IntRange(min=1), default=None, help="Bound the consume step."
)
def retrain(force: bool, no_consume: bool, max_messages: int | None) -> None:
    """The loop: consume pool -> check trigger -> train -> gate -> register -> canary."""
    from training.loop import run_loop
    from training.pool import ensure_bucket

    env = Env()

    def act() -> Any:
        ensure_bucket(env.s3)
        return run_loop(
            env.settings,
            s3=env.s3,
            kafka=env.kafka,
            redis=env.redis,
            redis_prefix=env.redis_prefix,
            force=force,
            consume=not no_consume,
            max_messages=max_messages,
        ).to_dict()

    report = _run(act)
    _echo_json(report)
    if report.get("action") == "rejected":
        click.echo("candidate rejected by the gate; stable and canary unchanged", err=True)


__all__ = ["label", "model", "pool", "retrain", "train"]

"""The retraining loop: consume -> trigger -> train -> gate -> register -> canary.

The functions here are the steps; ``run_loop`` chains them. Each step raises its own
error before it changes anything, so a failed run never moves the ``stable`` pointer.

* ``train_base_version``: v1 from the synthetic base dataset alone (the bootstrap).
* ``train_candidate``: pool (labeled, minus held-out sessions) + base replay, starting
  from the parent adapter.
* ``evaluate_candidate``: candidate vs current on the held-out set and the failure
  slice, with the gate's decision (the JSON report saved with the version).
* ``run_loop``: everything, as ``flywheel retrain`` runs it.
"""

from __future__ import annotations

import io
import logging
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from connectors.settings import KafkaSettings, S3Settings
from features.redaction import Redactor
from training.classifier import TrainResult, read_label_map, train_intent_adapter
from training.data import (
    TrainingExample,
    TrainingSet,
    base_examples,
    build_training_set,
    dataset_sha256,
    labeled,
)
from training.evaluate import (
    EvalSets,
    evaluate_model,
    gate,
    gate_report,
    handwritten_dataset,
    load_heldout,
)
from training.pool import PoolSnapshot, PoolStore
from training.pool_consumer import PoolConsumer
from training.predictor import Predictor
from training.registry import CANARY, STABLE, Registry
from training.settings import TrainingSettings
from training.synthetic import LabeledText, base_dataset
from training.triggers import FlagStats, check_triggers, read_flag_stats

log = logging.getLogger(__name__)


def base_data(settings: TrainingSettings) -> tuple[list[LabeledText], dict[str, Any]]:
    """The synthetic base dataset and a reference that pins it exactly."""
    trainer = settings.trainer
    rows = base_dataset(trainer.seed, per_intent=trainer.base_per_intent)
    ref = {
        "kind": "synthetic",
        "function": "training.synthetic.base_dataset",
        "seed": trainer.seed,
        "per_intent": trainer.base_per_intent,
        "rows": len(rows),
        "sha256": dataset_sha256(
            {"text": r.text, "label": r.label, "slice": r.slice} for r in rows
        ),
    }
    return rows, ref


def train_base_version(
    settings: TrainingSettings, out_dir: Path | str, *, version: str = ""
) -> TrainResult:
    """v1: LoRA on the base dataset alone."""
    rows, ref = base_data(settings)
    return train_intent_adapter(
        base_examples(rows),
        out_dir,
        labels=list(settings.trainer.labels),
        config=settings.trainer,
        data_sources=[ref],
        version=version,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    result: TrainResult
    training_set: TrainingSet
    parent_dir: Path | None


def train_candidate(
    samples: PoolSnapshot,
    settings: TrainingSettings,
    out_dir: Path | str,
    *,
    parent_dir: Path | None,
    version: str = "",
    shuffle_labels: bool = False,
) -> Candidate:
    """Train on the labeled pool plus base replay, continuing from the parent adapter.

    ``shuffle_labels`` permutes the training labels: a deliberately bad candidate for
    demonstrating the gate.
    """
    trainer = settings.trainer
    labels = read_label_map(parent_dir) if parent_dir is not None else list(trainer.labels)
    base, base_ref = base_data(settings)
    training_set = build_training_set(
        samples.samples,
        base,
        labels,
        replay_ratio=trainer.replay_ratio,
        min_replay=trainer.min_replay,
        eval_share=settings.pool.eval_share,
        min_pool_classes=trainer.min_pool_classes,
        seed=trainer.seed,
        max_corrections_per_user=settings.pool.max_corrections_per_user,
    )
    if training_set.sent_to_review:
        log.info(
            "%d untrusted correction(s) sent to review instead of training",
            len(training_set.sent_to_review),
        )
    examples: Sequence[TrainingExample] = training_set.train
    if shuffle_labels:
        permuted = [e.label for e in examples]
        random.Random(f"bad:{trainer.seed}").shuffle(permuted)
        examples = [replace(e, label=label) for e, label in zip(examples, permuted, strict=True)]
    eval_rows = [row for row in training_set.rows() if row["split"] == "eval"]
    result = train_intent_adapter(
        examples,
        out_dir,
        labels=labels,
        config=trainer,
        parent_adapter=parent_dir,
        data_sources=samples.sources() + [base_ref],
        source_offsets=training_set.source_offsets,
        extra_rows=eval_rows,
        version=version,
        redactor=Redactor(settings.pool.redact_patterns),
    )
    return Candidate(result=result, training_set=training_set, parent_dir=parent_dir)


def evaluate_candidate(
    candidate: Predictor, current: Predictor | None, sets: EvalSets, settings: TrainingSettings
) -> dict[str, Any]:
    """The gate report: both models' metrics and the decision."""
    candidate_eval = evaluate_model(candidate, sets)
    current_eval = evaluate_model(current, sets) if current is not None else None
    decision = gate(candidate_eval, current_eval, settings.gate)
    return gate_report(candidate_eval, current_eval, decision, settings.gate)


@dataclass(slots=True)
class LoopReport:
    """What one ``run_loop`` did, step by step."""

    consumed: dict[str, Any] | None = None
    action: str = "none"  # bootstrap | skipped | rejected | promoted_canary
    trigger: dict[str, Any] | None = None
    version: str | None = None
    parent: str | None = None
    gate: dict[str, Any] | None = None
    pointers: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def trained_keys(registry: Registry, version: str) -> set[tuple[str, str]]:
    """Pool keys a version trained on or held out (from its training_data.parquet)."""
    import pyarrow.parquet as pq

    body = registry._get(f"{registry.version_prefix(version)}/adapter/training_data.parquet")
    if body is None:
        return set()
    table = pq.read_table(io.BytesIO(body), columns=["session_id", "request_id"])
    return {
        (s, r)
        for s, r in zip(
            table["session_id"].to_pylist(), table["request_id"].to_pylist(), strict=True
        )
        if s
    }


def _flag_stats_of(manifest: dict[str, Any]) -> FlagStats:
    stats = manifest.get("flag_stats") or {}
    return FlagStats(
        sessions_closed=int(stats.get("sessions_closed", 0)),
        sessions_flagged=int(stats.get("sessions_flagged", 0)),
    )


def bootstrap(
    settings: TrainingSettings, registry: Registry, *, redis: Any = None, redis_prefix: str = "fw:"
) -> str:
    """Train, evaluate and register v1, and make it stable."""
    version = registry.next_version()
    out_dir = Path(settings.retrain.work_dir) / version
    result = train_base_version(settings, out_dir, version=version)
    heldout = load_heldout(settings.gate)
    report = {
        "decision": "bootstrap",
        "candidate": evaluate_model(
            Predictor(result.adapter_dir, version=version),
            EvalSets(heldout=heldout, failure_slice=[], handwritten=handwritten_dataset()),
        ),
        "current": None,
    }
    registry.register(
        result.adapter_dir,
        eval_report=report,
        status="bootstrap",
        version=version,
        extra={"flag_stats": asdict(read_flag_stats(redis, redis_prefix))},
    )
    registry.promote(
        version, STABLE, reason="bootstrap: first version, trained on the base dataset"
    )
    return version


def train_gate_register(
    settings: TrainingSettings,
    registry: Registry,
    snapshot: PoolSnapshot,
    *,
    promote: bool = True,
    shuffle_labels: bool = False,
    extra: dict[str, Any] | None = None,
    heldout: list[LabeledText] | None = None,
) -> LoopReport:
    """Train a candidate from the stable version, gate it, register it, canary it if it passed."""
    pointers = registry.pointers(validate=True)
    if not pointers.stable:
        from training.errors import RegistryPointerError

        raise RegistryPointerError(
            "no stable version to improve on: run `flywheel train --base-only` first"
        )
    parent_dir = registry.download(pointers.stable)
    version = registry.next_version()
    out_dir = Path(settings.retrain.work_dir) / version
    candidate = train_candidate(
        snapshot,
        settings,
        out_dir,
        parent_dir=parent_dir,
        version=version,
        shuffle_labels=shuffle_labels,
    )
    sets = EvalSets(
        heldout=heldout if heldout is not None else load_heldout(settings.gate),
        failure_slice=candidate.training_set.failure_slice,
        handwritten=handwritten_dataset(),
    )
    report = evaluate_candidate(
        Predictor(candidate.result.adapter_dir, version=version),
        Predictor(parent_dir, version=pointers.stable),
        sets,
        settings,
    )
    passed = report["decision"] == "promote"
    registry.register(
        candidate.result.adapter_dir,
        parent=pointers.stable,
        eval_report=report,
        status="accepted" if passed else "rejected",
        version=version,
        extra=extra,
    )
    action = "rejected"
    if passed and promote:
        registry.promote(version, CANARY, reason="gate passed: " + _gate_summary(report))
        action = "promoted_canary"
    elif passed:
        action = "accepted"
    else:
        registry.log_decision(
            {"action": "gate_reject", "version": version, "reasons": report["gate"]["reasons"]}
        )
    return LoopReport(
        action=action,
        version=version,
        parent=pointers.stable,
        gate={
            "decision": report["decision"],
            "reasons": report["gate"]["reasons"],
            "summary": _gate_summary(report),
            "handwritten": {
                side: (report.get(side) or {}).get("handwritten", {}).get("per_slice", {})
                for side in ("current", "candidate")
            },
        },
        pointers=registry.pointers().to_dict(),
        training={
            "rows": len(candidate.training_set.train),
            "pool_rows": sum(1 for e in candidate.training_set.train if e.origin == "pool"),
            "failure_slice": len(candidate.training_set.failure_slice),
            "samples_per_s": round(candidate.result.stats.samples_per_s, 2),
            "wall_s": round(candidate.result.stats.wall_s, 2),
        },
    )


def _gate_summary(report: dict[str, Any]) -> str:
    cand, cur = report["candidate"], report.get("current") or {}
    return (
        f"slice {cur.get('slice_accuracy', 0):.3f}->{cand['slice_accuracy']:.3f}, "
        f"overall {cur.get('overall_accuracy', 0):.3f}->{cand['overall_accuracy']:.3f}, "
        f"core {cur.get('core_accuracy', 0):.3f}->{cand['core_accuracy']:.3f}"
    )


def run_loop(
    settings: TrainingSettings,
    *,
    s3: S3Settings,
    kafka: KafkaSettings | None = None,
    redis: Any = None,
    redis_prefix: str = "fw:",
    force: bool = False,
    consume: bool = True,
    max_messages: int | None = None,
    idle_timeout_s: float | None = None,
    flagged_topic: str | None = None,
    heldout: list[LabeledText] | None = None,
) -> LoopReport:
    """consume pool -> check trigger -> train -> gate -> register -> promote to canary."""
    registry = Registry(s3, settings.registry, redis=redis, redis_prefix=redis_prefix)
    store = PoolStore(
        s3,
        settings.pool.prefix,
        max_corrections_per_user=settings.pool.max_corrections_per_user,
        redact_patterns=settings.pool.redact_patterns,
    )
    report = LoopReport()
    if consume and kafka is not None:
        consumer = PoolConsumer(
            kafka=kafka,
            store=store,
            config=settings.pool,
            labels=settings.trainer.labels,
            topic=flagged_topic,
            redis=redis,
            redis_prefix=redis_prefix,
        )
        idle = (
            settings.retrain.consume_idle_timeout.total_seconds()
            if idle_timeout_s is None
            else idle_timeout_s
        )
        report.consumed = consumer.run(max_messages=max_messages, idle_timeout_s=idle).to_dict()
    pointers = registry.pointers(validate=True)
    if not pointers.stable:
        report.version = bootstrap(settings, registry, redis=redis, redis_prefix=redis_prefix)
        report.action = "bootstrap"
        report.pointers = registry.pointers().to_dict()
        return report
    snapshot = store.read_samples()
    latest = registry.latest()
    seen = trained_keys(registry, latest) if latest else set()
    new_labeled = sum(1 for s in labeled(snapshot.samples) if s.key not in seen)
    stats_now = read_flag_stats(redis, redis_prefix)
    stats_then = _flag_stats_of(registry.manifest(latest)) if latest else FlagStats()
    decision = check_triggers(
        new_labeled_samples=new_labeled,
        stats_now=stats_now,
        stats_at_last_training=stats_then,
        config=settings.retrain,
        force=force,
    )
    report.trigger = decision.to_dict()
    if not decision.fire:
        report.action = "skipped"
        report.pointers = pointers.to_dict()
        return report
    trained = train_gate_register(
        settings,
        registry,
        snapshot,
        extra={"flag_stats": asdict(stats_now), "trigger": decision.to_dict()},
        heldout=heldout,
    )
    trained.consumed = report.consumed
    trained.trigger = report.trigger
    return trained


__all__ = [
    "Candidate",
    "LoopReport",
    "base_data",
    "bootstrap",
    "evaluate_candidate",
    "run_loop",
    "train_base_version",
    "train_candidate",
    "train_gate_register",
    "trained_keys",
]

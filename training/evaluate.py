"""Evaluation and the promotion gate.

A model is evaluated on two sets the trainer never saw:

* the **held-out set** (default: ``training.synthetic.heldout_dataset``; or a JSONL file
  of ``{"text", "label", "slice"?}``), reported overall, per slice tag and per label;
* the **failure slice**: the labeled pool samples of the sessions held out of training
  (``pool.eval_share``), i.e. fresh examples of what users flagged;
* the **hand-written set** (``training/handwritten_eval.jsonl``, ``handwritten_dataset``):
  212 questions written by hand in phrasings no template produces, English and Chinese,
  the weak slice and the other intents, never used for training. It is reported per
  slice and language (``delivery_time/en``, ``delivery_time/zh``, ``core/en``,
  ``core/zh``) beside the in-distribution figures; ``tests/unit/test_handwritten_eval.py``
  checks that no template of ``training.synthetic`` can produce any of its texts.

The gate compares a candidate with the current model and passes only when

* ``slice_gain``   = candidate - current accuracy on the failure slice >= ``min_slice_gain``,
* ``overall_drop`` = current - candidate accuracy on the held-out set <= ``max_overall_drop``,
* ``core_drop``    = the same on the held-out rows tagged ``core`` (ordinary traffic,
  so a slice gain cannot hide a regression elsewhere) <= ``max_overall_drop``,
* the failure slice has at least ``min_slice_examples`` examples.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from training.settings import GateConfig
from training.synthetic import CORE_SLICE, LabeledText, heldout_dataset


class _Predicts(Protocol):
    version: str

    def predict(self, texts: Sequence[str]) -> Sequence[Any]: ...


def accuracy_report(predictor: _Predicts, examples: Sequence[LabeledText]) -> dict[str, Any]:
    """Accuracy overall, per slice tag and per label, and a confusion table."""
    predictions = predictor.predict([e.text for e in examples]) if examples else []
    by_slice: dict[str, list[bool]] = defaultdict(list)
    by_label: dict[str, list[bool]] = defaultdict(list)
    confusion: dict[str, Counter[str]] = defaultdict(Counter)
    confidences: list[float] = []
    hits: list[bool] = []
    for example, prediction in zip(examples, predictions, strict=True):
        hit = prediction.intent == example.label
        hits.append(hit)
        by_slice[example.slice].append(hit)
        by_label[example.label].append(hit)
        confusion[example.label][prediction.intent] += 1
        confidences.append(float(prediction.confidence))
    return {
        "n": len(examples),
        "accuracy": _mean(hits),
        "mean_confidence": _mean(confidences),
        "per_slice": {k: {"n": len(v), "accuracy": _mean(v)} for k, v in sorted(by_slice.items())},
        "per_label": {k: {"n": len(v), "accuracy": _mean(v)} for k, v in sorted(by_label.items())},
        "confusion": {k: dict(sorted(v.items())) for k, v in sorted(confusion.items())},
    }


def _mean(values: Sequence[float | bool]) -> float:
    return round(sum(float(v) for v in values) / len(values), 6) if values else 0.0


HANDWRITTEN_PATH = Path(__file__).with_name("handwritten_eval.jsonl")


def handwritten_dataset(path: Path = HANDWRITTEN_PATH) -> list[LabeledText]:
    """The hand-written evaluation set; each row's slice is ``<slice>/<language>``."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            item = json.loads(line)
            slice_name = f"{item['slice']}/{item['lang']}"
            rows.append(LabeledText(text=item["text"], label=item["label"], slice=slice_name))
    return rows


@dataclass(frozen=True, slots=True, kw_only=True)
class EvalSets:
    """The held-out set and the failure slice a model is judged on (and reported on)."""

    heldout: list[LabeledText]
    failure_slice: list[LabeledText]
    # Reported, not (yet) a gate check: see handwritten_dataset.
    handwritten: list[LabeledText] = field(default_factory=list)


def evaluate_model(predictor: _Predicts, sets: EvalSets) -> dict[str, Any]:
    """The metrics the gate reads, for one model."""
    heldout = accuracy_report(predictor, sets.heldout)
    failure_slice = accuracy_report(predictor, sets.failure_slice)
    core = heldout["per_slice"].get(CORE_SLICE, {"n": 0, "accuracy": heldout["accuracy"]})
    return {
        "version": predictor.version,
        "heldout": heldout,
        "failure_slice": failure_slice,
        "handwritten": accuracy_report(predictor, sets.handwritten),
        "overall_accuracy": heldout["accuracy"],
        "core_accuracy": core["accuracy"],
        "slice_accuracy": failure_slice["accuracy"],
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class GateCheck:
    name: str
    value: float
    threshold: float
    passed: bool
    rule: str


@dataclass(frozen=True, slots=True, kw_only=True)
class GateDecision:
    """Whether the candidate may be promoted, and why."""

    passed: bool
    candidate: str
    current: str | None
    checks: list[GateCheck] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gate(
    candidate: dict[str, Any], current: dict[str, Any] | None, config: GateConfig
) -> GateDecision:
    """Compare two ``evaluate_model`` results under the gate's margins."""
    slice_n = candidate["failure_slice"]["n"]
    cand_slice = candidate["failure_slice"]["accuracy"]
    cur_slice = current["failure_slice"]["accuracy"] if current else 0.0
    cur_overall = current["overall_accuracy"] if current else 0.0
    cur_core = current["core_accuracy"] if current else 0.0
    checks = [
        GateCheck(
            name="slice_examples",
            value=float(slice_n),
            threshold=float(config.min_slice_examples),
            passed=slice_n >= config.min_slice_examples,
            rule="failure-slice examples >= min_slice_examples",
        ),
        GateCheck(
            name="slice_gain",
            value=round(cand_slice - cur_slice, 6),
            threshold=config.min_slice_gain,
            passed=cand_slice - cur_slice >= config.min_slice_gain - 1e-9,
            rule="candidate - current accuracy on the failure slice >= min_slice_gain",
        ),
        GateCheck(
            name="overall_drop",
            value=round(cur_overall - candidate["overall_accuracy"], 6),
            threshold=config.max_overall_drop,
            passed=cur_overall - candidate["overall_accuracy"] <= config.max_overall_drop + 1e-9,
            rule="current - candidate accuracy on the held-out set <= max_overall_drop",
        ),
        GateCheck(
            name="core_drop",
            value=round(cur_core - candidate["core_accuracy"], 6),
            threshold=config.max_overall_drop,
            passed=cur_core - candidate["core_accuracy"] <= config.max_overall_drop + 1e-9,
            rule="current - candidate accuracy on held-out core traffic <= max_overall_drop",
        ),
    ]
    reasons = [
        f"{c.name}: {c.value:.4f} fails '{c.rule}' ({c.threshold})" for c in checks if not c.passed
    ]
    return GateDecision(
        passed=not reasons,
        candidate=candidate["version"],
        current=current["version"] if current else None,
        checks=checks,
        reasons=reasons,
    )


def gate_report(
    candidate: dict[str, Any],
    current: dict[str, Any] | None,
    decision: GateDecision,
    config: GateConfig,
) -> dict[str, Any]:
    """The JSON report saved with the candidate version."""
    return {
        "decision": "promote" if decision.passed else "reject",
        "gate": decision.to_dict(),
        "config": config.model_dump(mode="json"),
        "candidate": candidate,
        "current": current,
    }


def load_heldout(config: GateConfig) -> list[LabeledText]:
    """The held-out set named by the gate config."""
    if config.heldout == "synthetic":
        return heldout_dataset(config.heldout_seed)
    path = Path(config.heldout)
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            rows.append(
                LabeledText(
                    text=item["text"], label=item["label"], slice=item.get("slice", CORE_SLICE)
                )
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{path}:{number}: expected {{'text', 'label', 'slice'?}} ({exc})"
            ) from exc
    return rows


__all__ = [
    "EvalSets",
    "GateCheck",
    "GateDecision",
    "accuracy_report",
    "evaluate_model",
    "gate",
    "gate_report",
    "handwritten_dataset",
    "load_heldout",
]

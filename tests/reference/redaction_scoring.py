"""Scoring a redactor against the labeled set ``redaction_eval.jsonl``.

A labeled entity is found when a finding of the same kind overlaps it; a finding that
overlaps no labeled entity of its kind is a false positive. Shared by the unit test (which
holds the goals of issue #13) and ``tests/benchmarks/bench_redaction.py`` (which prints
the table).
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EVAL_SET = Path(__file__).with_name("redaction_eval.jsonl")
# A second set, written apart from the redactor and the first set, never used to tune.
HOLDOUT_SET = Path(__file__).with_name("redaction_holdout.jsonl")
KINDS = ("EMAIL", "PHONE", "CARD", "ID", "URL_SECRET", "IP")


def load_eval_set(path: Path = EVAL_SET) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def gold_spans(row: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(kind, start, end) of each labeled value: the first occurrence not yet taken."""
    text = row["text"]
    spans: list[tuple[str, int, int]] = []
    for entity in row["entities"]:
        taken = {start for _, start, _ in spans}
        start = text.find(entity["value"])
        while start in taken:
            start = text.find(entity["value"], start + 1)
        assert start >= 0, f"eval row {row['id']}: {entity['value']!r} not in its text"
        spans.append((entity["kind"], start, start + len(entity["value"])))
    return spans


@dataclass
class Score:
    true_positives: collections.Counter[str] = field(default_factory=collections.Counter)
    false_negatives: collections.Counter[str] = field(default_factory=collections.Counter)
    false_positives: collections.Counter[str] = field(default_factory=collections.Counter)
    misses: list[str] = field(default_factory=list)
    false_alarms: list[str] = field(default_factory=list)

    def precision(self, kind: str | None = None) -> float:
        tp = self._sum(self.true_positives, kind)
        return tp / max(1, tp + self._sum(self.false_positives, kind))

    def recall(self, kind: str | None = None) -> float:
        tp = self._sum(self.true_positives, kind)
        return tp / max(1, tp + self._sum(self.false_negatives, kind))

    def f2(self, kind: str | None = None) -> float:
        p, r = self.precision(kind), self.recall(kind)
        return 5 * p * r / (4 * p + r) if p + r else 0.0

    @staticmethod
    def _sum(counter: collections.Counter[str], kind: str | None) -> int:
        return sum(counter.values()) if kind is None else counter[kind]


def score(redactor: Any, rows: list[dict[str, Any]]) -> Score:
    result = Score()
    for row in rows:
        text = row["text"]
        gold = gold_spans(row)
        found = redactor.find(text)
        for kind, start, end in gold:
            if any(f.kind == kind and f.start < end and start < f.end for f in found):
                result.true_positives[kind] += 1
            else:
                result.false_negatives[kind] += 1
                result.misses.append(f"{kind} {text[start:end]!r} in {text!r}")
        for f in found:
            if not any(
                f.kind == kind and f.start < end and start < f.end for kind, start, end in gold
            ):
                result.false_positives[f.kind] += 1
                result.false_alarms.append(f"{f.kind} {text[f.start : f.end]!r} in {text!r}")
    return result

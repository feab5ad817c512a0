"""Redaction (contract section 6): quality on the labeled set, speed on one core.

Prints precision, recall and F2 per kind on ``tests/reference/redaction_eval.jsonl``
(400+ hand-written English and Chinese texts, 40% with hard negatives only), then texts/s
on one core for (a) the labeled set, dense with numbers, and (b) every user and assistant
text of the realistic benchmark stream plus its corrections (mixed English and Chinese,
long tail of lengths, repeated texts), against a baseline in the same run: phonenumbers'
own matcher (``PhoneNumberMatcher``, region CN), which finds phones only.

Run: .venv/bin/python tests/benchmarks/bench_redaction.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import phonenumbers  # noqa: E402
from reference.redaction_scoring import (  # noqa: E402
    HOLDOUT_SET,
    KINDS,
    load_eval_set,
    score,
)

from features.redaction import DEFAULT_REDACTOR  # noqa: E402


def rate(function: Any, texts: list[str], min_seconds: float = 2.0) -> float:
    done, started = 0, time.perf_counter()
    while True:
        for text in texts:
            function(text)
        done += len(texts)
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return done / elapsed


def baseline_phones(text: str) -> list[Any]:
    return list(phonenumbers.PhoneNumberMatcher(text, "CN"))


class _PhoneMatcherRedactor:
    """The baseline as a redactor, for scoring PHONE."""

    def find(self, text: str) -> list[Any]:
        from features.redaction import Finding

        return [Finding("PHONE", m.start, m.end) for m in baseline_phones(text)]


def table(name: str, rows: list[dict[str, Any]]) -> None:
    result = score(DEFAULT_REDACTOR, rows)
    print(f"\n{name}: {len(rows)} texts, {sum(len(r['entities']) for r in rows)} entities, "
          f"{sum(not r['entities'] for r in rows)} texts with none")  # fmt: skip
    print(f"{'kind':<11} {'entities':>8} {'found':>6} {'missed':>6} {'false+':>6} "
          f"{'precision':>9} {'recall':>7} {'F2':>6}")  # fmt: skip
    for kind in (*KINDS, None):
        tp, fn = result.true_positives, result.false_negatives
        count = (tp[kind] + fn[kind]) if kind else sum(tp.values()) + sum(fn.values())
        found = tp[kind] if kind else sum(tp.values())
        missed = fn[kind] if kind else sum(fn.values())
        false = result.false_positives[kind] if kind else sum(result.false_positives.values())
        print(f"{kind or 'all':<11} {count:>8} {found:>6} {missed:>6} {false:>6} "
              f"{result.precision(kind):>9.3f} {result.recall(kind):>7.3f} "
              f"{result.f2(kind):>6.3f}")  # fmt: skip
    for line in result.misses + result.false_alarms:
        print("  " + line)


def main() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    rows = load_eval_set()
    table("labeled set (redaction_eval.jsonl)", rows)
    # Written separately, by someone who saw neither the redactor nor the first set, and
    # never used to tune the redactor.
    table("held-out set (redaction_holdout.jsonl)", load_eval_set(HOLDOUT_SET))
    phones = score(_PhoneMatcherRedactor(), rows)
    print(f"baseline PhoneNumberMatcher(CN) on PHONE: precision {phones.precision('PHONE'):.3f}, "
          f"recall {phones.recall('PHONE'):.3f}, F2 {phones.f2('PHONE'):.3f}")  # fmt: skip

    from benchmarks.realistic_traffic import generate

    stream = generate(2_000)
    traffic = [
        text
        for event in stream.events
        for text in (event.get("text"), event.get("corrected_text"))
        if isinstance(text, str)
    ]
    labeled = [r["text"] for r in rows]
    print(f"\nspeed on one core ({len(traffic)} realistic traffic texts, "
          f"{len(set(traffic))} distinct; {len(labeled)} labeled texts)")  # fmt: skip
    for name, texts in (("realistic traffic", traffic), ("labeled set", labeled)):
        ours = rate(DEFAULT_REDACTOR.redact, texts)
        base = rate(baseline_phones, texts)
        print(f"  {name:<18} redactor {ours:>10,.0f} texts/s   "
              f"baseline (phones only) {base:>9,.0f} texts/s   "
              f"ratio {ours / base:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()

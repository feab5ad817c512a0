"""The hand-written evaluation set is held out: no template can produce any of its texts."""

from __future__ import annotations

import re
from collections import Counter

from training import synthetic
from training.evaluate import handwritten_dataset
from training.synthetic import INTENTS, normalize


def _template_patterns() -> list[re.Pattern[str]]:
    """Each template (with every prefix and suffix the generator adds) as a regex over
    normalized text; a slot matches any words."""
    prefixes = sorted({normalize(p) for p in synthetic._PREFIXES} - {""})
    suffixes = sorted({normalize(s) for s in synthetic._SUFFIXES} - {""})
    around = (
        "^(?:(?:" + "|".join(map(re.escape, prefixes)) + ") )?{}"
        "(?: (?:" + "|".join(map(re.escape, suffixes)) + "))?$"
    )
    templates = [t for group in synthetic._TEMPLATES.values() for t in group]
    templates += list(synthetic._WEAK_SLICE_TEMPLATES)
    patterns = []
    for template in templates:
        pieces = re.split(r"\{[a-z_]+\}", template)
        body = ".+".join(re.escape(normalize(piece)) if piece.strip() else "" for piece in pieces)
        patterns.append(re.compile(around.format(body)))
    return patterns


def test_the_set_is_large_enough_in_both_languages() -> None:
    rows = handwritten_dataset()
    counts = Counter(row.slice for row in rows)
    assert counts["delivery_time/en"] + counts["delivery_time/zh"] >= 100
    assert counts["delivery_time/zh"] >= 40 and counts["delivery_time/en"] >= 60
    assert counts["core/en"] >= 80 and counts["core/zh"] >= 20
    assert {row.label for row in rows} <= set(INTENTS)
    assert {row.label for row in rows if row.slice.startswith("delivery_time")} == {"shipping"}
    assert len({normalize(row.text) for row in rows}) == len(rows)


def test_no_template_produces_a_handwritten_text() -> None:
    patterns = _template_patterns()
    # The patterns do match what the generator makes (else this test could not fail).
    generated = synthetic.base_dataset(0, per_intent=40) + synthetic.weak_slice_utterances(0, 60)
    unmatched = [r.text for r in generated if not any(p.match(normalize(r.text)) for p in patterns)]
    assert not unmatched, unmatched[:5]
    produced = [
        row.text
        for row in handwritten_dataset()
        if any(p.match(normalize(row.text)) for p in patterns)
    ]
    assert not produced, produced


def test_no_generated_training_text_is_in_the_set() -> None:
    handwritten = {normalize(row.text) for row in handwritten_dataset()}
    for seed in range(3):
        rows = synthetic.base_dataset(seed) + synthetic.weak_slice_utterances(seed, 200)
        rows += synthetic.core_utterances(seed, 400)
        assert not handwritten & {normalize(row.text) for row in rows}

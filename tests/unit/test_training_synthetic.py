"""Synthetic intent data: deterministic, balanced, and train/held-out disjoint."""

from __future__ import annotations

from collections import Counter

import jsonschema
import pytest

from schemas import load_schema
from training.synthetic import (
    CORE_SLICE,
    INTENTS,
    WEAK_SLICE,
    WEAK_SLICE_INTENT,
    base_dataset,
    core_utterances,
    heldout_dataset,
    is_heldout_text,
    normalize,
    shuffled_labels,
    weak_slice_utterances,
)
from training.traffic import flagged_messages, simulate_sessions


def test_generation_is_deterministic_per_seed() -> None:
    assert base_dataset(3) == base_dataset(3)
    assert heldout_dataset(3) == heldout_dataset(3)
    assert weak_slice_utterances(3, 50) == weak_slice_utterances(3, 50)
    assert base_dataset(3) != base_dataset(4)


def test_base_dataset_is_balanced_over_eight_intents_without_the_weak_slice() -> None:
    rows = base_dataset(0)
    assert len(INTENTS) == 8
    assert Counter(r.label for r in rows) == {intent: 100 for intent in INTENTS}
    assert {r.slice for r in rows} == {CORE_SLICE}
    assert len({normalize(r.text) for r in rows}) == len(rows)  # no duplicates


def test_weak_slice_is_shipping_delivery_time_questions() -> None:
    rows = weak_slice_utterances(0, 60)
    assert len(rows) == 60
    assert {r.label for r in rows} == {WEAK_SLICE_INTENT}
    assert {r.slice for r in rows} == {WEAK_SLICE}
    vocabulary = ("deliver", "arrive", "days", "how long", "get to", "gets to", "fast", "quick")
    assert all(any(word in r.text.lower() for word in vocabulary) for r in rows)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_heldout_never_overlaps_training_generators(seed: int) -> None:
    heldout = heldout_dataset(seed)
    train_texts = {
        normalize(r.text)
        for r in base_dataset(seed) + weak_slice_utterances(seed, 300) + core_utterances(seed, 800)
    }
    assert not train_texts & {normalize(r.text) for r in heldout}
    assert all(is_heldout_text(r.text) for r in heldout)
    counts = Counter((r.label, r.slice) for r in heldout)
    assert counts[(WEAK_SLICE_INTENT, WEAK_SLICE)] == 80
    assert all(counts[(intent, CORE_SLICE)] == 40 for intent in INTENTS)


def test_shuffled_labels_keep_texts_and_label_counts() -> None:
    rows = base_dataset(0)
    bad = shuffled_labels(rows, seed=1)
    assert [r.text for r in bad] == [r.text for r in rows]
    assert Counter(r.label for r in bad) == Counter(r.label for r in rows)
    assert sum(a.label != b.label for a, b in zip(rows, bad, strict=True)) > len(rows) // 2


class _Oracle:
    """Predicts order_status for every delivery-time question, the truth otherwise."""

    def __init__(self) -> None:
        # The same draws simulate_sessions(seed=5, sessions=60, weak_share=0.5) makes.
        self.truth = {r.text: r.label for r in weak_slice_utterances(5, 50)}
        self.truth.update({r.text: r.label for r in core_utterances(5, 180)})

    def predict(self, texts: list[str]) -> list[object]:
        from training.classifier import Prediction

        out = []
        for text in texts:
            label = self.truth[text]
            out.append(
                Prediction("order_status", 0.62)
                if label == "shipping" and "arriv" in text
                else Prediction(label, 0.95)
            )
        return out


def test_simulated_traffic_yields_contract_flagged_messages() -> None:
    sessions = simulate_sessions(
        _Oracle().predict, model_version="intent-v1", seed=5, sessions=60, edit_rate=0.2
    )
    messages = [m.to_dict() for m in flagged_messages(sessions)]
    assert 0 < len(messages) <= 60
    schema = load_schema("flagged_session.v1")
    registry_schema = load_schema("feature_row.v1")
    from referencing import Registry, Resource

    refs = Registry().with_resource(
        "https://flywheel.local/schemas/feature_row.v1.json",
        Resource.from_contents(registry_schema),
    )
    validator = jsonschema.Draft202012Validator(schema, registry=refs)
    for message in messages:
        validator.validate(message)
    corrections = [f for m in messages for f in m["feedback"] if f["kind"] == "correction"]
    assert corrections and all(f["corrected_intent"] == "shipping" for f in corrections)

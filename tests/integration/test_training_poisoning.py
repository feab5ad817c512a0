"""Label poisoning: one user posting 200 wrong corrections barely moves the next candidate.

An honest round (simulated traffic served by v1, flagged, read into pool samples the way
the pool consumer does) trains one candidate; the same round plus 200 corrections from
one user ("mallory"), each relabelling a delivery-time question as ``order_status``
(the confusion v1 already makes), trains another. Half of them copy texts honest users
corrected, half are new phrasings of them. Untrusted labels pass ``trust_user_labels``:
a label that contradicts other users' for the same text goes to review, a user caught
doing so twice is untrusted for the round, and anyone counts at most
``max_corrections_per_user`` (20). The poisoned candidate must lose at most 1 point of
held-out accuracy against the honest one, and the gate must decide the same for both.

Real training (tiny LoRA rounds on the packaged base model, one torch thread); no
services are needed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from training.classifier import Predictor
from training.data import PoolSample, extract_samples
from training.evaluate import EvalSets, load_heldout
from training.loop import evaluate_candidate, train_base_version, train_candidate
from training.pool import PoolSnapshot
from training.settings import TrainingSettings
from training.synthetic import WEAK_SLICE_CONFUSED_WITH, WEAK_SLICE_INTENT
from training.traffic import flagged_session_messages

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POISON = 200
WRONG_LABEL = WEAK_SLICE_CONFUSED_WITH  # the mistake v1 already makes


def _honest_samples(settings: TrainingSettings, v1: Predictor) -> list[PoolSample]:
    messages = flagged_session_messages(
        v1.predict, model_version="intent-v1", seed=11, sessions=200
    )
    labels = list(settings.trainer.labels)
    samples: list[PoolSample] = []
    for message in messages:
        samples += extract_samples(message, settings.pool, labels).samples
    return samples


def _mallory(honest: list[PoolSample]) -> list[PoolSample]:
    """200 wrong corrections from one user: delivery questions relabelled, some of them
    texts honest users corrected too (contradictions), the rest new phrasings."""
    weak = [s for s in honest if s.label == WEAK_SLICE_INTENT]
    assert weak, "the honest round corrected delivery-time questions"
    poison = []
    for n in range(POISON):
        source = weak[n % len(weak)]
        text = source.text if n % 2 == 0 else f"{source.text} pls answer {n}"
        poison.append(
            replace(
                source,
                session_id=f"mallory-{n:03d}",
                request_id=f"m{n}",
                text=text,
                label=WRONG_LABEL,
                label_source="correction",
                quality="high",
                user_id="mallory",
                ts_ms=source.ts_ms + n,
            )
        )
    return poison


@pytest.fixture(scope="module")
def rounds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("poisoning")
    settings = TrainingSettings.load(
        retrain={"work_dir": tmp / "work"}, trainer={"torch_threads": 1}
    )
    v1_dir = train_base_version(settings, tmp / "v1", version="intent-v1").adapter_dir
    v1 = Predictor(v1_dir, version="intent-v1")
    honest = _honest_samples(settings, v1)
    heldout = load_heldout(settings.gate)
    out: dict[str, Any] = {"settings": settings}
    for name, samples in (("honest", honest), ("poisoned", honest + _mallory(honest))):
        candidate = train_candidate(
            PoolSnapshot(samples=samples, objects=[]),
            settings,
            tmp / name,
            parent_dir=v1_dir,
            version=f"intent-v2-{name}",
        )
        report = evaluate_candidate(
            Predictor(candidate.result.adapter_dir, version=f"intent-v2-{name}"),
            v1,
            EvalSets(heldout=heldout, failure_slice=candidate.training_set.failure_slice),
            settings,
        )
        out[name] = {"candidate": candidate, "report": report}
    return out


def test_the_poisoner_counts_at_most_the_cap(rounds: dict[str, Any]) -> None:
    cap = rounds["settings"].pool.max_corrections_per_user
    training_set = rounds["poisoned"]["candidate"].training_set
    trained = [e for e in training_set.train if e.session_id.startswith("mallory-")]
    in_eval = [k for k in training_set.eval_keys if k[0].startswith("mallory-")]
    assert len(trained) + len(in_eval) <= cap
    reviewed = [s for s in training_set.sent_to_review if s.user_id == "mallory"]
    assert len(reviewed) >= POISON - cap


def test_poisoning_costs_at_most_one_point_of_heldout_accuracy(rounds: dict[str, Any]) -> None:
    honest = rounds["honest"]["report"]["candidate"]["overall_accuracy"]
    poisoned = rounds["poisoned"]["report"]["candidate"]["overall_accuracy"]
    print(f"\nheld-out accuracy: honest {honest:.3f}, poisoned {poisoned:.3f}")
    assert poisoned >= honest - 0.01


def test_the_gate_decides_as_without_the_poison(rounds: dict[str, Any]) -> None:
    assert rounds["poisoned"]["report"]["decision"] == rounds["honest"]["report"]["decision"]

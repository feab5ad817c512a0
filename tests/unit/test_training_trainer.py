"""The LoRA trainer and Predictor on a tiny local BERT: artifacts, seeding, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from training.classifier import (
    DATA_REF_FILE,
    LABEL_MAP_FILE,
    SOURCE_OFFSETS_FILE,
    TRAINING_CONFIG_FILE,
    TRAINING_DATA_FILE,
    Predictor,
    check_adapter_dir,
    train_intent_adapter,
)
from training.data import TrainingExample, base_examples, dataset_sha256
from training.errors import AdapterError, EmptyPoolError, OneClassPoolError, UnknownLabelError
from training.settings import TrainerConfig
from training.synthetic import INTENTS, base_dataset
from training.testing import tiny_bert

OFFSETS = [{"topic": "flywheel.flagged", "partition": 0, "first_offset": 3, "last_offset": 9}]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def config(tiny_base: Path) -> TrainerConfig:
    return TrainerConfig(base_model_path=tiny_base, epochs=1, batch_size=16, device="cpu")


@pytest.fixture(scope="module")
def examples() -> list[TrainingExample]:
    return base_examples(base_dataset(0, per_intent=8))


@pytest.fixture(scope="module")
def adapter(
    tmp_path_factory: pytest.TempPathFactory, config: TrainerConfig, examples: list[TrainingExample]
) -> Path:
    out = tmp_path_factory.mktemp("adapter") / "intent-v1"
    train_intent_adapter(
        examples,
        out,
        labels=INTENTS,
        config=config,
        data_sources=[{"kind": "synthetic", "seed": 0}],
        source_offsets=OFFSETS,
        version="intent-v1",
    )
    return out


def test_adapter_dir_holds_weights_config_labels_data_ref_and_offsets(
    adapter: Path, examples: list[TrainingExample], tiny_base: Path
) -> None:
    import pyarrow.parquet as pq

    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        LABEL_MAP_FILE,
        TRAINING_CONFIG_FILE,
        DATA_REF_FILE,
        SOURCE_OFFSETS_FILE,
        TRAINING_DATA_FILE,
    ):
        assert (adapter / name).is_file(), name
    assert json.loads((adapter / LABEL_MAP_FILE).read_text()) == {"labels": list(INTENTS)}
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert sorted(adapter_config["target_modules"]) == ["query", "value"]
    assert "classifier" in adapter_config["modules_to_save"]
    training_config = json.loads((adapter / TRAINING_CONFIG_FILE).read_text())
    assert training_config["task"] == "intent" and training_config["version"] == "intent-v1"
    assert training_config["base_model"]["path"] == str(tiny_base)
    assert training_config["trainer"]["seed"] == 0
    assert training_config["stats"]["samples"] == len(examples)
    assert json.loads((adapter / SOURCE_OFFSETS_FILE).read_text()) == OFFSETS
    data_ref = json.loads((adapter / DATA_REF_FILE).read_text())
    rows = pq.read_table(adapter / TRAINING_DATA_FILE).to_pylist()
    assert data_ref["rows"] == len(rows) == len(examples)
    assert data_ref["sha256"] == dataset_sha256(rows)  # the fingerprint pins the exact rows
    assert [r["text"] for r in rows] == [e.text for e in examples]
    assert data_ref["sources"] == [{"kind": "synthetic", "seed": 0}]


def test_same_seed_gives_identical_weights(
    tmp_path: Path, adapter: Path, config: TrainerConfig, examples: list[TrainingExample]
) -> None:
    from safetensors.torch import load_file

    train_intent_adapter(examples, tmp_path / "again", labels=INTENTS, config=config)
    first = load_file(str(adapter / "adapter_model.safetensors"))
    second = load_file(str(tmp_path / "again" / "adapter_model.safetensors"))
    assert first.keys() == second.keys()
    assert all((first[k] == second[k]).all() for k in first)
    train_intent_adapter(
        examples, tmp_path / "other", labels=INTENTS, config=config.model_copy(update={"seed": 1})
    )
    third = load_file(str(tmp_path / "other" / "adapter_model.safetensors"))
    assert any(not (first[k] == third[k]).all() for k in first)


def test_predictor_predicts_known_intents_in_any_batch_size(adapter: Path) -> None:
    texts = [r.text for r in base_dataset(1, per_intent=5)]
    big = Predictor(adapter, batch_size=64).predict(texts)
    small = Predictor(adapter, batch_size=7).predict(texts)
    assert len(big) == len(texts)
    assert [p.intent for p in big] == [p.intent for p in small]
    assert all(p.intent in INTENTS and 0.0 <= p.confidence <= 1.0 for p in big)
    assert [p.confidence for p in big] == pytest.approx([p.confidence for p in small], abs=1e-4)
    assert Predictor(adapter).version == "intent-v1"
    assert Predictor(adapter).predict([]) == []


def test_continuing_from_a_parent_needs_the_same_label_map(
    tmp_path: Path, adapter: Path, config: TrainerConfig, examples: list[TrainingExample]
) -> None:
    result = train_intent_adapter(
        examples[:32], tmp_path / "child", labels=INTENTS, config=config, parent_adapter=adapter
    )
    assert json.loads((result.adapter_dir / TRAINING_CONFIG_FILE).read_text())[
        "parent_adapter"
    ] == str(adapter)
    with pytest.raises(AdapterError, match="label map"):
        train_intent_adapter(
            examples[:32],
            tmp_path / "x",
            labels=list(reversed(INTENTS)),
            config=config,
            parent_adapter=adapter,
        )


def test_bad_training_input_fails_before_anything_is_written(
    tmp_path: Path, config: TrainerConfig, examples: list[TrainingExample]
) -> None:
    out = tmp_path / "never"
    bad = [*examples, TrainingExample(text="gift card?", label="gift_cards", origin="pool")]
    with pytest.raises(UnknownLabelError, match="gift_cards"):
        train_intent_adapter(bad, out, labels=INTENTS, config=config)
    one_class = [e for e in examples if e.label == "price"]
    with pytest.raises(OneClassPoolError):
        train_intent_adapter(one_class, out, labels=INTENTS, config=config)
    with pytest.raises(EmptyPoolError):
        train_intent_adapter([], out, labels=INTENTS, config=config)
    assert not out.exists()


def _copy(adapter: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(adapter, target)
    return target


def test_missing_or_corrupt_adapters_raise_adapter_error(tmp_path: Path, adapter: Path) -> None:
    with pytest.raises(AdapterError, match="does not exist"):
        Predictor(tmp_path / "nowhere")
    broken = _copy(adapter, tmp_path)
    (broken / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match="missing adapter_model.safetensors"):
        Predictor(broken)
    shutil.rmtree(broken)
    truncated = _copy(adapter, tmp_path)
    weights = truncated / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(AdapterError):
        Predictor(truncated)
    shutil.rmtree(truncated)
    bad_json = _copy(adapter, tmp_path)
    (bad_json / LABEL_MAP_FILE).write_text("{labels: oops")
    with pytest.raises(AdapterError, match=LABEL_MAP_FILE):
        check_adapter_dir(bad_json)
    shutil.rmtree(bad_json)
    empty = _copy(adapter, tmp_path)
    import torch
    from safetensors.torch import save_file

    save_file({"unrelated": torch.zeros(1)}, str(empty / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match="no LoRA"):
        Predictor(empty)

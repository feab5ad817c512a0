"""Second task: causal-LM LoRA on (prompt, corrected response) pairs, on a tiny local GPT-2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.causal import generate, train_response_adapter
from training.data import EditPair
from training.errors import AdapterError, EmptyPoolError
from training.settings import CausalTrainerConfig
from training.testing import tiny_causal_lm

ANSWERS = {
    "do you ship to Norway?": "Yes , we ship to Norway in 3 to 5 days .",
    "can I return shoes?": "Yes , returns are free within 30 days .",
    "any discount today?": "Use code WELCOME5 for 5 % off .",
    "where is my order?": "Your order left our warehouse today .",
}


def _pairs(n: int) -> list[EditPair]:
    questions = list(ANSWERS)
    return [
        EditPair(
            session_id=f"sess-{i}",
            request_id=f"r{i}",
            prompt=f"User: {questions[i % 4]}\nAssistant:",
            response="I do not know .",
            corrected_response=ANSWERS[questions[i % 4]],
            source_topic="flywheel.flagged",
            source_partition=0,
            source_offset=i,
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Pretrained on the original (uncorrected) answers: the adapter must change its mind.
    pairs = _pairs(4)
    corpus = [p.prompt + " " + p.response for p in pairs] + [p.corrected_response for p in pairs]
    return tiny_causal_lm(tmp_path_factory.mktemp("tiny-gpt2"), corpus, pretrain_steps=60)


def test_response_adapter_learns_the_corrected_responses(tmp_path: Path, tiny_lm: Path) -> None:
    config = CausalTrainerConfig(
        base_model_path=tiny_lm,
        epochs=5,
        batch_size=8,
        learning_rate=1e-2,
        device="cpu",
        eval_share=0.25,
    )
    result = train_response_adapter(
        _pairs(40), tmp_path / "response-v1", config=config, version="response-v1"
    )
    assert result.train_pairs + result.eval_pairs == 40 and result.eval_pairs > 0
    # Loss on held-out sessions' corrected responses, before vs after the adapter.
    assert result.eval_loss_after < result.eval_loss_before * 0.6
    out = result.adapter_dir
    training_config = json.loads((out / "training_config.json").read_text())
    assert training_config["task"] == "response"
    assert training_config["stats"]["eval_loss_after"] == pytest.approx(
        result.eval_loss_after, abs=1e-5
    )
    assert json.loads((out / "adapter_config.json").read_text())["target_modules"] == ["c_attn"]
    assert json.loads((out / "source_offsets.json").read_text())[0]["last_offset"] == 39
    assert json.loads((out / "data_ref.json").read_text())["rows"] == 40
    text = generate(out, "User: can I return shoes?\nAssistant:", max_new_tokens=8)
    assert isinstance(text, str)


def test_response_task_bad_input(tmp_path: Path, tiny_lm: Path) -> None:
    config = CausalTrainerConfig(base_model_path=tiny_lm, epochs=1, device="cpu")
    empty = [p for p in _pairs(4) if False]
    with pytest.raises(EmptyPoolError):
        train_response_adapter(empty, tmp_path / "x", config=config)
    with pytest.raises(AdapterError, match="causal LM"):
        train_response_adapter(_pairs(4), tmp_path / "x", config=CausalTrainerConfig())
    assert not (tmp_path / "x").exists()


def test_stored_training_rows_are_redacted(tmp_path: Path, tiny_lm: Path) -> None:
    import dataclasses

    import pyarrow.parquet as pq

    from features.redaction import Redactor

    pairs = [
        dataclasses.replace(
            p,
            prompt=p.prompt + " mail li.wei88@example.com",
            corrected_response=p.corrected_response + " Member VIP-204811, call 13812345678.",
        )
        for p in _pairs(8)
    ]
    config = CausalTrainerConfig(base_model_path=tiny_lm, epochs=1, device="cpu")
    result = train_response_adapter(
        pairs, tmp_path / "r", config=config, redactor=Redactor((r"VIP-\d{6}",))
    )
    stored = json.dumps(pq.read_table(result.adapter_dir / "training_data.parquet").to_pylist())
    for raw in ("li.wei88@example.com", "VIP-204811", "13812345678"):
        assert raw not in stored
    assert "<EMAIL>" in stored and "<ID>" in stored and "<PHONE>" in stored

"""Second task: LoRA on a causal LM from (prompt, corrected response) pairs.

The pairs come from ``edit`` feedback: the user rewrote an assistant response
(``corrected_text``); the prompt is the dialogue before it (``training.data.format_prompt``).
The recipe mirrors the classifier's::

    seed -> data (split by session: train / eval) -> model (any local causal LM + LoRA)
    -> train (loss on the response tokens only) -> evaluate (eval loss before/after)
    -> save (adapter + training_config.json + data_ref.json + training_data.parquet)
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from features.redaction import DEFAULT_REDACTOR, Redactor
from training.classifier import (
    DATA_REF_FILE,
    SOURCE_OFFSETS_FILE,
    TRAINING_CONFIG_FILE,
    TRAINING_DATA_FILE,
    _library_versions,
    _quiet_hf,
    _write_json,
    resolve_base_model,
    resolve_device,
    seed_everything,
    set_threads,
)
from training.data import EditPair, dataset_sha256, is_eval_session
from training.errors import AdapterError, EmptyPoolError
from training.settings import CausalTrainerConfig

IGNORE_INDEX = -100


@dataclass(frozen=True, slots=True, kw_only=True)
class CausalTrainResult:
    adapter_dir: Path
    train_pairs: int
    eval_pairs: int
    eval_loss_before: float
    eval_loss_after: float
    samples_per_s: float
    wall_s: float


def _encode(tokenizer: Any, pair: EditPair, max_length: int) -> dict[str, list[int]]:
    """Prompt tokens are masked out of the loss; the corrected response is learned."""
    prompt_ids = tokenizer(pair.prompt + " ", add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(pair.corrected_response, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        answer_ids = answer_ids + [tokenizer.eos_token_id]
    # Keep the end of the prompt (the latest turns) when the pair is too long.
    room = max(1, max_length - len(answer_ids))
    prompt_ids = prompt_ids[-room:]
    input_ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + answer_ids)[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def _collate(rows: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        ids[i, :n] = torch.tensor(row["input_ids"])
        labels[i, :n] = torch.tensor(row["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _mean_loss(
    model: Any, rows: Sequence[dict[str, list[int]]], batch_size: int, pad_id: int, device: Any
) -> float:
    import torch

    if not rows:
        return math.nan
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            batch = {
                k: v.to(device)
                for k, v in _collate(rows[start : start + batch_size], pad_id).items()
            }
            tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            total += float(model(**batch).loss) * tokens
            count += tokens
    model.train()
    return total / count if count else math.nan


def train_response_adapter(
    pairs: Sequence[EditPair],
    out_dir: Path | str,
    *,
    config: CausalTrainerConfig,
    version: str = "",
    data_sources: Sequence[dict[str, Any]] = (),
    redactor: Redactor | None = None,
) -> CausalTrainResult:
    """Train a LoRA adapter that rewrites responses the way users corrected them.

    The stored training rows are redacted once more on their way out (contract section
    6; ``redactor`` defaults to its kinds): pool texts already are.
    """
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # seed
    seed_everything(config.seed)
    set_threads(config.torch_threads)
    # data
    usable = [p for p in pairs if p.corrected_response.strip()]
    if not usable:
        raise EmptyPoolError("no edit pairs with a corrected response in the pool")
    eval_pairs = [p for p in usable if is_eval_session(p.session_id, config.eval_share)]
    train_pairs = [p for p in usable if not is_eval_session(p.session_id, config.eval_share)]
    if not train_pairs:
        raise EmptyPoolError(f"all {len(usable)} edit pairs fall in held-out sessions")
    # model
    if config.base_model_path is None:
        raise AdapterError(
            "the response task needs a local causal LM: set causal.base_model_path or --model"
        )
    base_model = resolve_base_model(config.base_model_path)
    device = resolve_device(config.device)
    with _quiet_hf():
        tokenizer = AutoTokenizer.from_pretrained(base_model)
        model: Any = AutoModelForCausalLM.from_pretrained(base_model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    lora = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules) if config.target_modules else None,
    )
    with _quiet_hf():
        model = get_peft_model(model, lora).to(device)
    train_rows = [_encode(tokenizer, p, config.max_length) for p in train_pairs]
    eval_rows = [_encode(tokenizer, p, config.max_length) for p in (eval_pairs or train_pairs)]
    before = _mean_loss(model, eval_rows, config.batch_size, pad_id, device)
    # train
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.learning_rate
    )
    order_rng = torch.Generator().manual_seed(config.seed)
    model.train()
    seen = 0
    started = time.perf_counter()
    for _ in range(config.epochs):
        order = torch.randperm(len(train_rows), generator=order_rng).tolist()
        for start in range(0, len(order), config.batch_size):
            chunk = [train_rows[i] for i in order[start : start + config.batch_size]]
            batch = {k: v.to(device) for k, v in _collate(chunk, pad_id).items()}
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seen += len(chunk)
    wall_s = time.perf_counter() - started
    # evaluate
    after = _mean_loss(model, eval_rows, config.batch_size, pad_id, device)
    # save
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out / "tokenizer"))
    eval_keys = {p.key for p in eval_pairs}
    redact = (redactor or DEFAULT_REDACTOR).redact
    rows = [
        {
            "session_id": p.session_id,
            "request_id": p.request_id,
            "prompt": redact(p.prompt),
            "corrected_response": redact(p.corrected_response),
            "split": "eval" if p.key in eval_keys else "train",
        }
        for p in usable
    ]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), out / TRAINING_DATA_FILE)
    stats = {
        "train_pairs": len(train_pairs),
        "eval_pairs": len(eval_pairs),
        "eval_loss_before": round(before, 6),
        "eval_loss_after": round(after, 6),
        "samples_seen": seen,
        "wall_s": round(wall_s, 3),
        "samples_per_s": round(seen / wall_s, 2) if wall_s > 0 else 0.0,
        "device": str(device),
    }
    _write_json(
        out / TRAINING_CONFIG_FILE,
        {
            "task": "response",
            "version": version,
            "base_model": {"path": str(base_model)},
            "trainer": config.model_dump(mode="json"),
            "stats": stats,
            "versions": _library_versions(),
        },
    )
    _write_json(
        out / DATA_REF_FILE,
        {
            "training_data": TRAINING_DATA_FILE,
            "sha256": dataset_sha256(rows),
            "rows": len(rows),
            "sources": list(data_sources),
        },
    )
    _write_json(out / SOURCE_OFFSETS_FILE, source_offsets_of(usable))
    return CausalTrainResult(
        adapter_dir=out,
        train_pairs=len(train_pairs),
        eval_pairs=len(eval_pairs),
        eval_loss_before=before,
        eval_loss_after=after,
        samples_per_s=round(seen / wall_s, 2) if wall_s > 0 else 0.0,
        wall_s=wall_s,
    )


def source_offsets_of(pairs: Sequence[EditPair]) -> list[dict[str, Any]]:
    ranges: dict[tuple[str, int], list[int]] = {}
    for pair in pairs:
        if pair.source_topic and pair.source_offset >= 0:
            ranges.setdefault((pair.source_topic, pair.source_partition), []).append(
                pair.source_offset
            )
    return [
        {"topic": t, "partition": p, "first_offset": min(o), "last_offset": max(o)}
        for (t, p), o in sorted(ranges.items())
    ]


def generate(
    adapter_dir: Path | str,
    prompt: str,
    *,
    max_new_tokens: int = 32,
    base_model_path: Path | str | None = None,
) -> str:
    """Greedy continuation of a prompt by base + response adapter (for inspection)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = Path(adapter_dir)
    config = json.loads((adapter / TRAINING_CONFIG_FILE).read_text(encoding="utf-8"))
    base = resolve_base_model(base_model_path or config["base_model"]["path"])
    with _quiet_hf():
        tokenizer = AutoTokenizer.from_pretrained(adapter / "tokenizer")
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter))
    model.eval()
    ids = tokenizer(prompt + " ", add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


__all__ = ["CausalTrainResult", "generate", "train_response_adapter"]

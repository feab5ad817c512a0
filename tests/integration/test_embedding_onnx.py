"""The onnx-int8 encoder backend: exported offline from the packaged model, close to it.

Its repeat decisions equal torch's on at least 99.9% of the realistic benchmark's
comparisons (``tests/benchmarks/bench_encoders.py``); here, on literal texts: the same
readability, vectors close to the fp32 model's, the contract's paraphrases still
repeats, the encoder child serving the same vectors, and an export made once.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from reference.generator import PARAPHRASES

from jobs.embedding import Embedder, EmbeddingProcess, is_unreadable
from jobs.onnx_encoder import export_int8, export_path

pytestmark = pytest.mark.integration

TEXTS = [
    "hello",
    "how much is shipping?",
    "Do you deliver to Canada?",
    "请问这个多少钱",  # unreadable to the English model
    "多久能送到上海?",  # exactly half [UNK]: readable
    "iPhone 15 有货吗",
    "",
    "the blue one, size 42 please " * 40,  # longer than the model's 256 tokens
]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("encoders")


@pytest.fixture(scope="module")
def encoders(export_dir: Path) -> tuple[Embedder, Embedder]:
    return Embedder(threads=1), Embedder(threads=1, backend="onnx-int8", export_dir=export_dir)


def test_export_is_made_once_from_the_model_folder(export_dir: Path, encoders: object) -> None:
    fp32 = encoders[0]  # type: ignore[index]
    folder = export_int8(fp32.model_path, export_dir)
    assert folder == export_path(fp32.model_path, export_dir)
    assert sorted(p.name for p in folder.iterdir()) == [
        "export.json",
        "model.onnx",
        "tokenizer.json",
    ]
    stamp = (folder / "model.onnx").stat().st_mtime_ns
    assert export_int8(fp32.model_path, export_dir) == folder
    assert (folder / "model.onnx").stat().st_mtime_ns == stamp
    # No half-made export is left behind.
    assert [p.name for p in export_dir.iterdir()] == [folder.name]


def test_same_readability_and_close_vectors(encoders: tuple[Embedder, Embedder]) -> None:
    fp32, int8 = encoders
    assert int8.unreadable(TEXTS) == fp32.unreadable(TEXTS)
    a, b = fp32.encode(TEXTS), int8.encode(TEXTS)
    assert a.shape == b.shape == (len(TEXTS), 384)
    for row_a, row_b, text in zip(a, b, TEXTS, strict=True):
        assert is_unreadable(row_a) == is_unreadable(row_b), text
        if not is_unreadable(row_a):
            assert abs(float(np.linalg.norm(row_b)) - 1.0) < 1e-5
            assert float(row_a @ row_b) > 0.95, text


def test_paraphrases_are_still_repeats_and_unrelated_texts_are_not(
    encoders: tuple[Embedder, Embedder],
) -> None:
    fp32, int8 = encoders
    threshold = 0.85
    for first, second in PARAPHRASES:
        for encoder in (fp32, int8):
            v = encoder.encode([first, second])
            assert float(v[0] @ v[1]) >= threshold, (encoder.backend, first, second)
    v = int8.encode(["Do you ship to Canada?", "Is this jacket waterproof?"])
    assert float(v[0] @ v[1]) < threshold


def test_the_encoder_child_serves_the_export(
    export_dir: Path, encoders: tuple[Embedder, Embedder]
) -> None:
    child = EmbeddingProcess(sys.executable, None, 64, 1, "onnx-int8", export_dir)
    try:
        served = child.encode_to_bytes(TEXTS)
    finally:
        child.close()
    local = encoders[1].encode(TEXTS)
    for raw, row in zip(served, local, strict=True):
        np.testing.assert_array_equal(np.frombuffer(raw, dtype=np.float32), row)

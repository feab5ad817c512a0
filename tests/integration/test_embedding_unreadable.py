"""The packaged all-MiniLM-L6-v2 cannot read Chinese: those texts get no usable vector."""

from __future__ import annotations

import numpy as np
import pytest

from jobs.embedding import Embedder, is_unreadable

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(threads=1)


def test_chinese_texts_are_unreadable_and_english_ones_are_not(embedder: Embedder) -> None:
    # "多久能送到上海?" is [UNK] 久 [UNK] [UNK] [UNK] 上 海 ? (exactly half unknown) and
    # "iPhone 15 有货吗" is iphone 15 有 [UNK] [UNK] (2 of 5): both readable.
    texts = ["请问这个多少钱", "包邮吗", "how much is shipping?", "多久能送到上海?",
             "iPhone 15 有货吗", ""]  # fmt: skip
    expected = [True, True, False, False, False, False]
    assert embedder.unreadable(texts) == expected
    vectors = embedder.encode(texts)
    assert [is_unreadable(v) for v in vectors] == expected
    # Without the rule two different questions of seven [UNK]s would be one vector.
    raw = embedder._model.encode(["请问这个多少钱", "什么时候能发货"], normalize_embeddings=True)
    assert float(np.dot(raw[0], raw[1])) > 0.99

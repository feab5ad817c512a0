"""Contract section 3: a text the model cannot read takes part in no embedding comparison."""

from __future__ import annotations

import math

from features import FeatureConfig, compute_features, model_cannot_read
from schemas.events import AssistantMessage, UserMessage

UNK = "[UNK]"


def test_all_unknown_pieces_cannot_be_read() -> None:
    assert model_cannot_read([UNK] * 7, UNK)  # "请问这个多少钱" for all-MiniLM-L6-v2


def test_exactly_half_unknown_can_be_read() -> None:
    assert not model_cannot_read([UNK, "order", UNK, "##s"], UNK)


def test_more_than_half_unknown_in_mixed_chinese_and_english_cannot_be_read() -> None:
    assert model_cannot_read([UNK, UNK, "iphone", UNK, "?"], UNK)
    assert not model_cannot_read(["iphone", "15", UNK, "?"], UNK)


def test_empty_text_has_no_pieces_and_can_be_read() -> None:
    assert not model_cannot_read([], UNK)


def _user(n: int, text: str) -> UserMessage:
    return UserMessage(event_id=f"e{n}", session_id="s1", user_id="u1", ts_ms=1_000 * n, text=text)


def _assistant(n: int) -> AssistantMessage:
    return AssistantMessage(event_id=f"e{n}", session_id="s1", user_id="u1", ts_ms=1_000 * n,
                            text="ok")  # fmt: skip


def test_texts_without_a_vector_compare_by_normalized_equality_only() -> None:
    # Two different Chinese questions that the English model sees as identical [UNK]s:
    # they get no vector, so they are no repeat; the same text again still is.
    nan = [math.nan] * 3
    events = [_user(1, "请问这个多少钱"), _assistant(2), _user(3, "包邮吗"), _assistant(4),
              _user(5, "包邮吗!")]  # fmt: skip
    embeddings = {"e1": [1.0, 0.0, 0.0], "e3": [1.0, 0.0, 0.0]}
    features = compute_features(events, FeatureConfig(), None, embeddings=embeddings)
    assert features.repeated_question_count == 2  # e3 by embedding, e5 by normalized text

    without = compute_features(events, FeatureConfig(), None, embeddings={})
    assert without.repeated_question_count == 1  # only e5 == e3 after normalization
    marked = compute_features(events, FeatureConfig(), None, embeddings={"e1": nan, "e3": nan})
    assert marked.repeated_question_count == 1

"""Normalized text and correction markers (contract section 3, text rules)."""

from __future__ import annotations

import pytest

from features import DEFAULT_CORRECTION_MARKERS, CorrectionMatcher, normalize_text
from features.text import has_correction_marker


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Free shipping?", "freeshipping"),
        ("free  shipping!!", "freeshipping"),
        ("FREE\tSHIPPING\n", "freeshipping"),
        ("Straße", "strasse"),  # case folding, not just lower()
        ("¿Envío gratis?", "envíogratis"),
        ("包邮吗？", "包邮吗"),
        ("是不是 包邮 。", "是不是包邮"),
        ("price: $50 + tax", "price50tax"),  # S* symbols ($, +) and P* removed
        ("a\u00a0b\u2003c\u3000d", "abcd"),  # Z* separators
        ("emoji 👍 ok", "emojiok"),  # So
        ("", ""),
        ("?!…", ""),
        ("x_y-z", "xyz"),  # underscore is Pc
        ("ＡＢＣ", "ａｂｃ"),  # no NFKC: only fold, drop
    ],
)
def test_normalize_text(text: str, expected: str) -> None:
    assert normalize_text(text) == expected


def test_normalization_makes_punctuation_variants_equal() -> None:
    assert normalize_text("Free shipping?") == normalize_text("free  shipping!!")


MATCHES = [
    "That's wrong",
    "wrong!",
    "WRONG",
    "This is incorrect.",
    "not right",
    "not   right at all",
    "Actually, I want blue",
    "I meant the red one",
    "i said large",
    "That's not what I asked",
    "That’s not what I asked",  # curly apostrophe read as '
    "THAT’S NOT it",
    "that is not it",
    "(wrong)",
    "wrong-size",  # '-' is not a letter or digit
    "size_wrong",  # '_' is neither a letter nor a digit
    "不对，我要红色",
    "你错了",
    "应该是蓝色",
    "实际上我要两个",
    "其实我想问运费",
    "你看错了",
]


@pytest.mark.parametrize("text", MATCHES)
def test_correction_marker_matches(text: str) -> None:
    assert has_correction_marker(text, DEFAULT_CORRECTION_MARKERS)


@pytest.mark.parametrize(
    "text",
    [
        "wrongly charged",  # a letter after 'wrong'
        "factually speaking",  # 'actually' inside a word
        "actually2",  # digit after
        "2wrong",  # digit before
        "incorrectly",
        "is it right?",
        "not rightly",
        "semantics: i meantime",  # 'i meant' followed by a letter
        "是不是包邮",  # 不是 is deliberately not a marker
        "这不是红色",
        "我要的是红色wrong",  # CJK letter directly before a Latin marker
        "thats not it",  # no apostrophe: not the marker "that's not"
        "",
    ],
)
def test_correction_marker_false_friends(text: str) -> None:
    assert not has_correction_marker(text, DEFAULT_CORRECTION_MARKERS)


def test_custom_markers_casefold_and_curly_apostrophe() -> None:
    matcher = CorrectionMatcher(["Nope", "DON’T", "ちがう"])
    assert matcher.matches("nope.")
    assert matcher.matches("I don't think so")
    assert matcher.matches("いや、ちがうよ")
    assert not matcher.matches("nopes")
    assert not CorrectionMatcher([]).matches("wrong")

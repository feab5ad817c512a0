"""Text rules of contract section 3: normalized text, correction markers, unreadable texts."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from functools import lru_cache

# Per code point: is it dropped by normalization? Filled lazily (texts reuse few code points).
_DROPPED: dict[str, bool] = {}


def _is_dropped(char: str) -> bool:
    dropped = _DROPPED.get(char)
    if dropped is None:
        dropped = unicodedata.category(char)[0] in "PSZ" or char.isspace()
        _DROPPED[char] = dropped
    return dropped


def normalize_text(text: str) -> str:
    """Case-fold and drop punctuation (P*), symbols (S*), separators (Z*) and whitespace."""
    folded = text.casefold()
    if folded.isalnum():  # fast path: nothing to drop
        return folded
    return "".join([c for c in folded if not _is_dropped(c)])


def _fold_marker_text(text: str) -> str:
    return text.casefold().replace("\u2019", "'")


def _is_cjk(char: str) -> bool:
    code = ord(char)
    return (
        0x2E80 <= code <= 0x9FFF  # radicals, kana, CJK symbols, unified ideographs
        or 0xAC00 <= code <= 0xD7AF  # Hangul syllables
        or 0xF900 <= code <= 0xFAFF  # compatibility ideographs
        or 0xFF00 <= code <= 0xFFEF  # half/full-width forms
        or 0x20000 <= code <= 0x3FFFF  # supplementary ideographs
    )


class CorrectionMatcher:
    """Finds correction markers in a message.

    Markers are case-folded with ``’`` read as ``'``. A marker holding any CJK character
    matches as a substring; any other ("Latin") marker matches as a whole word or phrase:
    no letter or digit directly before or after it; the spaces inside a phrase match any
    run of whitespace.
    """

    __slots__ = ("_cjk", "_latin")

    def __init__(self, markers: Iterable[str]) -> None:
        cjk: list[str] = []
        latin: list[str] = []
        for marker in markers:
            folded = _fold_marker_text(marker).strip()
            if not folded:
                continue
            (cjk if any(_is_cjk(c) for c in folded) else latin).append(folded)
        self._cjk = tuple(dict.fromkeys(cjk))
        self._latin: re.Pattern[str] | None = None
        if latin:
            # Longest first so a phrase wins over its own prefix; [^\W_] = letter or digit.
            alternatives = sorted(dict.fromkeys(latin), key=len, reverse=True)
            body = "|".join(r"\s+".join(map(re.escape, m.split())) for m in alternatives)
            self._latin = re.compile(rf"(?<![^\W_])(?:{body})(?![^\W_])")

    def matches(self, text: str) -> bool:
        """Whether `text` holds at least one marker."""
        folded = _fold_marker_text(text)
        if any(marker in folded for marker in self._cjk):
            return True
        return self._latin is not None and self._latin.search(folded) is not None


@lru_cache(maxsize=32)
def correction_matcher(markers: tuple[str, ...]) -> CorrectionMatcher:
    """A cached matcher for a marker list (configs share one)."""
    return CorrectionMatcher(markers)


def has_correction_marker(text: str, markers: tuple[str, ...]) -> bool:
    """Whether `text` holds one of `markers` (see `CorrectionMatcher`)."""
    return correction_matcher(markers).matches(text)


def model_cannot_read(word_pieces: Sequence[str], unknown_token: str) -> bool:
    """Whether more than half of a text's word pieces are the tokenizer's unknown token.

    Contract section 3: such a text (most Chinese text for the English-only default
    model, which reads "请问这个多少钱" as seven ``[UNK]``) takes part in no embedding
    comparison. ``word_pieces`` are the whole text's, without special tokens and without
    truncation; an empty text has none, so it is readable (and exactly half is too).
    """
    unknown = sum(piece == unknown_token for piece in word_pieces)
    return 2 * unknown > len(word_pieces)

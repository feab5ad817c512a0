"""The feature job's text -> vector cache: bounded, least recently used out first."""

from __future__ import annotations

from jobs.embedding import TextVectorCache


def test_a_repeated_text_is_a_hit_and_a_new_one_a_miss() -> None:
    cache = TextVectorCache(10)
    cache.put("包邮吗", b"v1")

    assert cache.get("包邮吗") == b"v1"
    assert cache.get("how much?") is None
    assert (cache.hits, cache.misses) == (1, 1)


def test_the_least_recently_used_text_goes_first_when_full() -> None:
    cache = TextVectorCache(2)
    cache.put("hi", b"a")
    cache.put("ok", b"b")
    assert cache.get("hi") == b"a"  # "ok" is now the least recently used
    cache.put("thanks", b"c")

    assert len(cache) == 2
    assert cache.get("ok") is None
    assert cache.get("hi") == b"a" and cache.get("thanks") == b"c"


def test_texts_differing_in_case_or_spaces_are_different_entries() -> None:
    # The vector is of the exact text the model read; normalization is a feature rule.
    cache = TextVectorCache(10)
    cache.put("Hi", b"a")

    assert cache.get("hi") is None
    assert cache.get("Hi ") is None


def test_zero_entries_keeps_nothing() -> None:
    cache = TextVectorCache(0)
    cache.put("hi", b"a")

    assert len(cache) == 0 and cache.get("hi") is None

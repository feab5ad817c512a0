"""The embedding batcher's policy with a fake encoder and a literal clock."""

from __future__ import annotations

from collections.abc import Sequence

from jobs.embedding_batcher import EmbeddingBatcher


class FakeEncoder:
    """Records batches; a batch is back when the test says so."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.direct: list[list[str]] = []
        self.back = False
        self.outstanding = False
        self.closed = False

    def submit(self, texts: Sequence[str]) -> None:
        assert not self.outstanding, "a batch was sent while one was in flight"
        self.batches.append(list(texts))
        self.outstanding, self.back = True, False

    def ready(self) -> bool:
        return self.back

    def collect(self) -> dict[str, bytes]:
        assert self.outstanding
        self.outstanding = False
        return {text: text.encode() for text in self.batches[-1]}

    def encode_to_bytes(self, texts: Sequence[str]) -> list[bytes]:
        self.direct.append(list(texts))
        return [text.encode() for text in texts]

    def close(self) -> None:
        self.closed = True


def _batcher(encoder: FakeEncoder, batch_size: int = 3, cache: int = 100) -> EmbeddingBatcher:
    return EmbeddingBatcher(encoder, batch_size=batch_size, max_delay_ms=100, cache_entries=cache)


def test_a_batch_goes_out_when_full_or_when_its_oldest_text_waited_long_enough() -> None:
    encoder = FakeEncoder()
    batcher = _batcher(encoder)
    assert not batcher.add("e1", "hi", now_ms=1_000)
    assert not batcher.add("e2", "how much?", now_ms=1_050)
    batcher.pump(now_ms=1_099)
    assert encoder.batches == []  # 2 of 3, oldest waited 99 ms
    batcher.pump(now_ms=1_100)
    assert encoder.batches == [["hi", "how much?"]]
    assert batcher.in_encoder("e1") and batcher.take("e1") is None

    assert not batcher.add("e3", "a", now_ms=1_101)
    assert not batcher.add("e4", "b", now_ms=1_101)
    assert not batcher.add("e5", "c", now_ms=1_101)
    batcher.pump(now_ms=1_102)
    assert len(encoder.batches) == 1  # full, but one batch in flight at most

    encoder.back = True
    batcher.pump(now_ms=1_150)  # collects the first batch, sends the next
    assert batcher.take("e1") == b"hi" and batcher.take("e1") is None
    assert not batcher.in_encoder("e2") and batcher.take("e2") == b"how much?"
    assert encoder.batches[-1] == ["a", "b", "c"]
    # A batch's round trip (150 - 100 = 50 ms) moves the average it polls by.
    assert batcher.batch_ms == 50.0
    assert batcher.first_look_ms() == 150 and batcher.next_look_ms(poll_ms=10) == 12


def test_a_repeated_text_is_ready_at_once_and_a_batch_sends_each_text_once() -> None:
    encoder = FakeEncoder()
    batcher = _batcher(encoder)
    batcher.add("e1", "包邮吗", now_ms=0)
    batcher.add("e2", "包邮吗", now_ms=0)
    batcher.add("e3", "hi", now_ms=0)
    batcher.pump(now_ms=0)
    assert encoder.batches == [["包邮吗", "hi"]]
    encoder.back = True
    batcher.harvest(now_ms=10, wait=False)
    assert batcher.add("e4", "包邮吗", now_ms=20)  # known: no encoding
    assert batcher.take("e4") == "包邮吗".encode()
    assert [batcher.take(e) for e in ("e1", "e2")] == ["包邮吗".encode()] * 2


def test_a_text_encoded_while_it_waited_is_not_sent_again() -> None:
    encoder = FakeEncoder()
    batcher = _batcher(encoder, batch_size=1)
    batcher.add("e1", "hi", now_ms=0)
    batcher.pump(now_ms=0)  # in flight
    batcher.add("e2", "hi", now_ms=1)  # not known yet: pending
    encoder.back = True
    batcher.pump(now_ms=5)
    assert encoder.batches == [["hi"]]
    assert batcher.take("e2") == b"hi" and not batcher.in_encoder("e2")


def test_encode_now_waits_for_the_batch_in_flight_then_encodes_the_rest_once() -> None:
    encoder = FakeEncoder()
    batcher = _batcher(encoder, batch_size=1)
    batcher.add("e1", "a", now_ms=0)
    batcher.pump(now_ms=0)  # "a" in flight
    batcher.add("e2", "b", now_ms=1)  # pending
    # e3 and e4: texts no longer held anywhere (a restored session).
    batcher.encode_now({"e1": "a", "e2": "b", "e3": "c", "e4": "c"}, now_ms=2)
    assert encoder.direct == [["b", "c"]]
    assert not batcher.pending and not batcher.in_flight
    taken = {e: batcher.take(e) for e in ("e1", "e2", "e3", "e4")}
    assert taken == {"e1": b"a", "e2": b"b", "e3": b"c", "e4": b"c"}


def test_without_a_cache_nothing_is_known_and_close_closes_the_encoder() -> None:
    encoder = FakeEncoder()
    batcher = _batcher(encoder, batch_size=1, cache=0)
    batcher.add("e1", "hi", now_ms=0)
    batcher.pump(now_ms=0)
    encoder.back = True
    batcher.pump(now_ms=1)
    assert not batcher.add("e2", "hi", now_ms=2)
    batcher.close()
    assert encoder.closed

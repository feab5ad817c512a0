"""Micro-batches of user texts for the encoder child, shared by all keys of a subtask.

The session operator (``jobs.operators.SessionFeaturesFunction``) hands each user
message here and takes its vector back once computed; this part decides when a batch
goes out and keeps the vectors. It knows no Flink and no wall clock: every method that
depends on time takes ``now_ms``, so it is unit-tested with a literal clock
(``tests/unit/test_embedding_batcher.py``).

Policy: a text whose vector is known (the same text encoded before, ``TextVectorCache``)
is ready at once. Others wait in ``pending`` until the batch is full or its oldest text
has waited ``max_delay_ms``, and go out only when the previous batch is back: the child
encodes while the operator goes on with other events. A batch sends each distinct text
once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from jobs.embedding import TextVectorCache


class PipelinedEncoder(Protocol):
    """What the batcher needs of ``jobs.embedding.EmbeddingProcess``."""

    def submit(self, texts: Sequence[str]) -> None: ...

    def ready(self) -> bool: ...

    def collect(self) -> dict[str, bytes]: ...

    def encode_to_bytes(self, texts: Sequence[str]) -> list[bytes]: ...

    def close(self) -> None: ...


class EmbeddingBatcher:
    """Pending texts, the batch in flight and computed vectors, by event id."""

    def __init__(
        self, encoder: PipelinedEncoder, *, batch_size: int, max_delay_ms: int, cache_entries: int
    ):
        self.encoder = encoder
        self.batch_size = batch_size
        self.max_delay_ms = max(1, max_delay_ms)
        self.text_vectors = TextVectorCache(cache_entries)
        self.pending: dict[str, str] = {}  # event_id -> text, not sent yet
        self.pending_since_ms = 0
        self.in_flight: dict[str, str] = {}  # event_id -> text of the batch being encoded
        self.computed: dict[str, bytes] = {}  # event_id -> vector, until its key takes it
        self.submitted_at_ms = 0
        self.batch_ms = 50.0  # moving average of a batch's round trip

    def close(self) -> None:
        self.encoder.close()

    def add(self, event_id: str, text: str, now_ms: int) -> bool:
        """Queue a text; True when its vector is known already (``take`` it now)."""
        known = self.text_vectors.get(text)
        if known is not None:
            self.computed[event_id] = known  # a repeated text: no encoding
            return True
        if not self.pending:
            self.pending_since_ms = now_ms
        self.pending[event_id] = text
        return False

    def in_encoder(self, event_id: str) -> bool:
        """Whether the vector of ``event_id`` is still to come (pending or in flight)."""
        return event_id in self.pending or event_id in self.in_flight

    def take(self, event_id: str) -> bytes | None:
        """The computed vector of ``event_id``, handed over once."""
        return self.computed.pop(event_id, None)

    def first_look_ms(self) -> int:
        """When to look for a just-queued text's vector: once a batch could be back."""
        return self.max_delay_ms + int(self.batch_ms)

    def next_look_ms(self, poll_ms: int) -> int:
        """When to look again for a vector still in the encoder (each look is a call)."""
        return max(poll_ms, int(self.batch_ms) // 4)

    def harvest(self, now_ms: int, *, wait: bool) -> None:
        """Take the batch in flight's vectors if it is back (with ``wait``, wait for it)."""
        if not self.in_flight or (not wait and not self.encoder.ready()):
            return
        by_text = self.encoder.collect()
        self.batch_ms += (now_ms - self.submitted_at_ms - self.batch_ms) / 5
        for event_id, text in self.in_flight.items():
            self.computed[event_id] = by_text[text]
            self.text_vectors.put(text, by_text[text])
        self.in_flight = {}

    def pump(self, now_ms: int) -> None:
        """Harvest a finished batch; send the pending texts as the next one when due."""
        self.harvest(now_ms, wait=False)
        if not self.pending or self.in_flight:
            return
        if (
            len(self.pending) < self.batch_size
            and now_ms - self.pending_since_ms < self.max_delay_ms
        ):
            return
        for event_id, text in list(self.pending.items()):
            known = self.text_vectors.get(text)  # encoded since it was queued
            if known is not None:
                self.computed[event_id] = known
                del self.pending[event_id]
        self.in_flight, self.pending = self.pending, {}
        if self.in_flight:
            # Each distinct text once: chat repeats itself within a batch too.
            self.encoder.submit(list(dict.fromkeys(self.in_flight.values())))
            self.submitted_at_ms = now_ms

    def encode_now(self, texts_by_event: dict[str, str], now_ms: int) -> None:
        """Make the vectors of these events ``take``-able now (a session closing needs them).

        Waits for the batch in flight, then encodes what is still missing in one call;
        texts no longer held anywhere (after a restore) are encoded again.
        """
        self.harvest(now_ms, wait=True)
        for event_id in texts_by_event:
            self.pending.pop(event_id, None)
        missing = {i: t for i, t in texts_by_event.items() if i not in self.computed}
        if not missing:
            return
        texts = sorted(set(missing.values()))  # each distinct text once
        by_text = dict(zip(texts, self.encoder.encode_to_bytes(texts), strict=True))
        for text, vector in by_text.items():
            self.text_vectors.put(text, vector)
        for event_id, text in missing.items():
            self.computed[event_id] = by_text[text]

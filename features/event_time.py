"""Event time from accepted events only (contract sections 1 and 2).

Pure Python, no I/O: the streaming job's parse operator keeps one ``PartitionClock``
per source reader and hands its watermark to Flink with every accepted event.

Only an event that passed every check moves event time: a rejected one (bad JSON, a
rating out of range, a ``ts_ms`` sent as a string, a ``future_event``) never does, so
one client with a wrong clock or a broken serializer cannot make every later event late.

Watermarks follow Flink's convention (see ``features.tracker``): the highest accepted
``ts_ms`` minus ``max_out_of_order_ms`` minus 1.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

MIN_WATERMARK_MS = -(2**63)


def is_future_event(ts_ms: int, record_ts_ms: int | None, max_future_skew_ms: int) -> bool:
    """Whether an event claims a time more than ``max_future_skew_ms`` after it was sent.

    ``record_ts_ms`` is the Kafka record's timestamp (when the producer sent it); a
    source without one (a backfill file, a record timestamp of -1) is never "future".
    """
    if record_ts_ms is None or record_ts_ms < 0:
        return False
    return ts_ms - record_ts_ms > max_future_skew_ms


def _java_string_hash(text: str) -> int:
    """Java's ``String.hashCode`` (over UTF-16 code units), as a signed 32-bit int."""
    h = 0
    data = text.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (31 * h + ((data[i] << 8) | data[i + 1])) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def kafka_split_owner(topic: str, partition: int, readers: int) -> int:
    """The source reader that Flink's Kafka enumerator gives ``topic``/``partition``.

    Mirrors ``KafkaSourceEnumerator.getSplitOwner``; if a connector version assigned
    partitions differently, a partition expected here but never seen only holds the
    watermark back until it counts as idle, and one seen unexpectedly simply joins.
    """
    start = ((_java_string_hash(topic) * 31) & 0x7FFFFFFF) % readers
    return (start + partition) % readers


@dataclass
class PartitionClock:
    """Per-partition watermarks of one source reader, from accepted events only.

    Each partition's watermark is its highest accepted ``ts_ms`` minus the bound; the
    reader's is the smallest over its partitions, so a backlog read partition by
    partition does not look out of order. The watermark never goes backwards.

    A partition silent for ``idle_ms`` holds nothing back. Silence is measured in Kafka
    record time when records carry it: the partition's newest record timestamp against
    the newest of the reader's other partitions (a partition never heard from, against
    the reader's first record). So a partition whose records simply wait in the fetch
    queue while the job works through a backlog is not idle, however long that takes on
    the wall clock; only one that received nothing while the others received ``idle_ms``
    worth of new records is. Records without a timestamp fall back to the wall clock.
    """

    bound_ms: int
    idle_ms: int
    started_wall_ms: int
    expected: frozenset[int] = frozenset()
    highest_ts_ms: dict[int, int] = field(default_factory=dict)
    last_seen_wall_ms: dict[int, int] = field(default_factory=dict)
    last_record_ts_ms: dict[int, int] = field(default_factory=dict)
    first_record_ts_ms: int | None = None
    newest_record_ts_ms: int | None = None
    watermark_ms: int = MIN_WATERMARK_MS

    @classmethod
    def for_reader(
        cls,
        *,
        topic: str,
        partitions: Iterable[int],
        reader: int,
        readers: int,
        bound_ms: int,
        idle_ms: int,
        now_wall_ms: int,
    ) -> PartitionClock:
        """A clock expecting the partitions Flink's Kafka source gives reader ``reader``."""
        expected = frozenset(
            p for p in partitions if kafka_split_owner(topic, p, readers) == reader
        )
        return cls(bound_ms, idle_ms, now_wall_ms, expected)

    def observe(
        self, partition: int, ts_ms: int, now_wall_ms: int, record_ts_ms: int | None = None
    ) -> int:
        """Account one accepted event of ``partition``; the reader's watermark after it."""
        if ts_ms > self.highest_ts_ms.get(partition, MIN_WATERMARK_MS):
            self.highest_ts_ms[partition] = ts_ms
        self.last_seen_wall_ms[partition] = now_wall_ms
        if record_ts_ms is not None and record_ts_ms >= 0:
            if record_ts_ms > self.last_record_ts_ms.get(partition, MIN_WATERMARK_MS):
                self.last_record_ts_ms[partition] = record_ts_ms
            if self.first_record_ts_ms is None:
                self.first_record_ts_ms = record_ts_ms
            if self.newest_record_ts_ms is None or record_ts_ms > self.newest_record_ts_ms:
                self.newest_record_ts_ms = record_ts_ms
        return self.advance(now_wall_ms)

    def _idle(self, partition: int, now_wall_ms: int) -> bool:
        if self.newest_record_ts_ms is not None and self.first_record_ts_ms is not None:
            last = self.last_record_ts_ms.get(partition, self.first_record_ts_ms)
            return self.newest_record_ts_ms - last >= self.idle_ms
        last = self.last_seen_wall_ms.get(partition, self.started_wall_ms)
        return now_wall_ms - last >= self.idle_ms

    def advance(self, now_wall_ms: int) -> int:
        """The watermark as of ``now_wall_ms`` (idle partitions no longer hold it back)."""
        lows: list[int] = []
        for partition in self.expected | self.highest_ts_ms.keys():
            if self._idle(partition, now_wall_ms):
                continue
            highest = self.highest_ts_ms.get(partition)
            if highest is None:
                return self.watermark_ms  # not heard from yet, and not idle yet: wait
            lows.append(highest - self.bound_ms - 1)
        if lows:
            self.watermark_ms = max(self.watermark_ms, min(lows))
        return self.watermark_ms

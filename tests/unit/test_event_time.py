"""Event time from accepted events only: the per-partition clock and future_event."""

from __future__ import annotations

from features.event_time import (
    MIN_WATERMARK_MS,
    PartitionClock,
    _java_string_hash,
    is_future_event,
    kafka_split_owner,
)

BOUND = 10_000
IDLE = 60_000


def test_java_string_hash_matches_java() -> None:
    # Values of "".hashCode(), "a".hashCode(), "flywheel.events".hashCode() in Java.
    assert _java_string_hash("") == 0
    assert _java_string_hash("a") == 97
    assert _java_string_hash("hello") == 99162322
    assert _java_string_hash("polygenelubricants") == -(2**31)


def test_one_reader_owns_every_partition() -> None:
    assert {kafka_split_owner("flywheel.events", p, 1) for p in range(6)} == {0}
    owners = [kafka_split_owner("flywheel.events", p, 3) for p in range(3)]
    assert sorted(owners) == [0, 1, 2]  # one partition each, as Flink assigns them


def test_future_event_boundary() -> None:
    skew = 600_000
    assert not is_future_event(1_000 + skew, 1_000, skew)  # exactly the skew: accepted
    assert is_future_event(1_001 + skew, 1_000, skew)
    assert not is_future_event(10**13, None, skew)  # a file has no arrival time
    assert not is_future_event(10**13, -1, skew)  # no record timestamp


def test_watermark_waits_for_every_expected_partition() -> None:
    clock = PartitionClock(BOUND, IDLE, started_wall_ms=0, expected=frozenset({0, 1, 2}))
    assert clock.observe(0, 100_000, now_wall_ms=1) == MIN_WATERMARK_MS
    assert clock.observe(1, 50_000, now_wall_ms=2) == MIN_WATERMARK_MS
    # A backlog read partition by partition: the slowest partition holds event time.
    assert clock.observe(2, 70_000, now_wall_ms=3) == 50_000 - BOUND - 1
    assert clock.observe(1, 90_000, now_wall_ms=4) == 70_000 - BOUND - 1


def test_silent_partitions_stop_holding_back_after_the_idle_timeout() -> None:
    clock = PartitionClock(BOUND, IDLE, started_wall_ms=0, expected=frozenset({0, 1}))
    assert clock.observe(0, 100_000, now_wall_ms=10) == MIN_WATERMARK_MS
    assert clock.observe(0, 100_000, now_wall_ms=IDLE) == 100_000 - BOUND - 1
    clock.observe(1, 200_000, now_wall_ms=IDLE + 1)
    # Partition 0 went silent: only partition 1 counts once 0 is idle.
    assert clock.observe(1, 200_000, now_wall_ms=2 * IDLE + 10) == 200_000 - BOUND - 1


def test_watermark_never_goes_back_and_unexpected_partitions_join() -> None:
    clock = PartitionClock(BOUND, IDLE, started_wall_ms=0)
    assert clock.observe(5, 100_000, now_wall_ms=1) == 100_000 - BOUND - 1
    # A new partition behind the others cannot pull the watermark back.
    assert clock.observe(6, 20_000, now_wall_ms=2) == 100_000 - BOUND - 1
    assert clock.observe(5, 90_000, now_wall_ms=3) == 100_000 - BOUND - 1

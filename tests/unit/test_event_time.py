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


def test_without_record_timestamps_silence_is_wall_clock_time() -> None:
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


def test_a_partition_waiting_in_the_fetch_queue_is_not_idle_however_long_it_takes() -> None:
    # A backlog produced within 5 s, read at 250 events/s: partition 1's records come
    # minutes of wall clock after partition 0's, but in record time they are neighbours.
    clock = PartitionClock(BOUND, IDLE, started_wall_ms=0, expected=frozenset({0, 1}))
    sent_ms = 1_700_000_000_000
    for i in range(100):
        watermark = clock.observe(0, 100_000 + i * 60_000, i * 4_000, record_ts_ms=sent_ms + i * 50)
        assert watermark == MIN_WATERMARK_MS  # partition 1 not heard from: wait
    assert clock.observe(1, 200_000, 10 * IDLE, record_ts_ms=sent_ms + 10) == 200_000 - BOUND - 1


def test_a_partition_silent_while_the_others_receive_idle_ms_of_records_is_idle() -> None:
    clock = PartitionClock(BOUND, IDLE, started_wall_ms=0, expected=frozenset({0, 1}))
    sent_ms = 1_700_000_000_000
    clock.observe(1, 50_000, 0, record_ts_ms=sent_ms)
    assert clock.observe(0, 100_000, 1, record_ts_ms=sent_ms + 1) == 50_000 - BOUND - 1
    assert clock.observe(0, 300_000, 2, record_ts_ms=sent_ms + IDLE - 1) == 50_000 - BOUND - 1
    # Partition 1 received nothing for IDLE ms of partition 0's record time.
    assert clock.observe(0, 400_000, 3, record_ts_ms=sent_ms + IDLE) == 400_000 - BOUND - 1


def test_a_partition_never_heard_from_is_idle_after_idle_ms_of_record_time() -> None:
    clock = PartitionClock(BOUND, IDLE, started_wall_ms=0, expected=frozenset({0, 1}))
    sent_ms = 1_700_000_000_000
    assert clock.observe(0, 100_000, 10 * IDLE, record_ts_ms=sent_ms) == MIN_WATERMARK_MS
    assert clock.observe(0, 200_000, 10 * IDLE, record_ts_ms=sent_ms + IDLE) == 200_000 - BOUND - 1

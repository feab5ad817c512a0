"""The feature job's Redis writes on a real Redis: versioning, TTL, counters, buffering."""

from __future__ import annotations

from typing import Any

import pytest

from jobs.redis_sink import RedisSessionSink, session_version

pytestmark = pytest.mark.integration


@pytest.fixture
def client(redis_settings: Any) -> Any:
    redis = redis_settings.client()
    yield redis
    redis.close()


def _version(end_ms: int, events: int, closed: bool = False) -> str:
    return session_version(end_ms, closed, events, end_ms)


def test_write_through_refuses_an_older_version_and_refreshes_ttl(
    client: Any, redis_prefix: str
) -> None:
    sink = RedisSessionSink(client, redis_prefix, session_ttl_s=600)
    sink.write_session("s1", {"event_count": "3"}, status="open", version=_version(3_000, 3))
    client.expire(f"{redis_prefix}session:s1", 5)

    sink.write_session("s1", {"event_count": "2"}, status="open", version=_version(2_000, 2))

    stored = sink.read_session("s1")
    assert stored["event_count"] == "3"
    assert client.ttl(f"{redis_prefix}session:s1") > 500  # refused, yet the TTL was refreshed


def test_buffered_writes_wait_for_flush_and_keep_the_newest_version(
    client: Any, redis_prefix: str
) -> None:
    sink = RedisSessionSink(client, redis_prefix, flush_interval_ms=10_000)
    sink.write_session("s1", {"event_count": "2"}, status="open", version=_version(2_000, 2))
    sink.write_session("s1", {"event_count": "4"}, status="open", version=_version(4_000, 4))
    # Delivered out of order: an older update after a newer one is dropped in the buffer.
    sink.write_session("s1", {"event_count": "3"}, status="open", version=_version(3_000, 3))
    sink.count({"events": 1, "duplicates": 1}, now_ms=60_000)
    sink.count({"events": 2}, now_ms=60_000)
    sink.count({"events": 1}, now_ms=120_000)
    sink.count_model("v1", {"sessions": 1})
    sink.count_model("v1", {"sessions": 1, "flagged_sessions": 1})

    assert client.exists(f"{redis_prefix}session:s1") == 0
    assert not sink.due(sink.pending_since_ms() + 9_999)
    assert sink.due(sink.pending_since_ms() + 10_000)

    sink.flush()

    assert sink.pending_since_ms() is None
    assert sink.read_session("s1")["event_count"] == "4"
    assert client.hgetall(f"{redis_prefix}stats:total") == {"events": "4", "duplicates": "1"}
    assert client.hgetall(f"{redis_prefix}stats:minute:1") == {"events": "3", "duplicates": "1"}
    assert client.hgetall(f"{redis_prefix}stats:minute:2") == {"events": "1"}
    assert client.ttl(f"{redis_prefix}stats:minute:1") > 0
    assert client.hgetall(f"{redis_prefix}model:v1") == {"sessions": "2", "flagged_sessions": "1"}


def test_a_buffered_replay_never_overwrites_newer_data_already_in_redis(
    client: Any, redis_prefix: str
) -> None:
    RedisSessionSink(client, redis_prefix).write_session(
        "s1", {"event_count": "5"}, status="closed", version=_version(5_000, 5, closed=True)
    )
    replaying = RedisSessionSink(client, redis_prefix, flush_interval_ms=50)
    replaying.write_session("s1", {"event_count": "4"}, status="open", version=_version(4_000, 4))
    replaying.flush()
    assert replaying.read_session("s1")["status"] == "closed"
    assert replaying.read_session("s1")["event_count"] == "5"


def test_a_full_buffer_is_due_at_once(client: Any, redis_prefix: str) -> None:
    sink = RedisSessionSink(client, redis_prefix, flush_interval_ms=60_000, max_buffered=3)
    for i in range(3):
        sink.write_session(f"s{i}", {"event_count": "1"}, status="open", version=_version(1_000, 1))
    assert sink.due(sink.pending_since_ms() or 0)
    sink.flush()
    assert all(sink.read_session(f"s{i}")["event_count"] == "1" for i in range(3))


def _totals(client: Any, prefix: str) -> dict[str, int]:
    return {k: int(v) for k, v in client.hgetall(f"{prefix}stats:total").items()}


def test_shares_count_once_across_a_replay(client: Any, redis_prefix: str) -> None:
    from jobs.redis_sink import model_counter

    sink = RedisSessionSink(client, redis_prefix, flush_interval_ms=10_000)
    sink.add_share("s1", "e1", 1, {"events": 1})
    sink.add_share("s1", "e1", 2, {"events": 2, "dlq": 1})
    sink.add_share("s2", "f1", 1, {"events": 1, model_counter("v1", "sessions"): 1})
    sink.flush()
    assert _totals(client, redis_prefix) == {"events": 3, "dlq": 1}
    assert client.hgetall(f"{redis_prefix}model:v1") == {"sessions": "1"}
    # A restore replays s1 from version 1: the versions it already counted add nothing,
    # and the first new one adds only its difference.
    replay = RedisSessionSink(client, redis_prefix)
    replay.add_share("s1", "e1", 2, {"events": 2, "dlq": 1})
    replay.add_share("s1", "e1", 3, {"events": 3, "dlq": 1, "sessions_closed": 1})
    replay.add_share("s2", "f1", 1, {"events": 1, model_counter("v1", "sessions"): 1})
    assert _totals(client, redis_prefix) == {"events": 4, "dlq": 1, "sessions_closed": 1}
    assert client.hgetall(f"{redis_prefix}model:v1") == {"sessions": "1"}
    # A new epoch (the key's state expired and began again) adds to what was counted.
    replay.add_share("s1", "e2", 1, {"events": 1})
    assert _totals(client, redis_prefix)["events"] == 5
    assert client.ttl(f"{redis_prefix}counted:s1") > 0


def test_rejections_count_once_per_source_offset(client: Any, redis_prefix: str) -> None:
    sink = RedisSessionSink(client, redis_prefix)
    for offset in (3, 7):
        sink.count_once("events", 0, offset, {"dlq": 1, "dlq:invalid_json": 1})
    sink.count_once("events", 1, 2, {"dlq": 1, "dlq:out_of_range": 1})
    for offset in (3, 7):  # replayed after a restore
        sink.count_once("events", 0, offset, {"dlq": 1, "dlq:invalid_json": 1})
    sink.count_once("events", 0, 9, {"dlq": 1, "dlq:invalid_json": 1})
    assert _totals(client, redis_prefix) == {
        "dlq": 4,
        "dlq:invalid_json": 3,
        "dlq:out_of_range": 1,
    }


def test_writes_wait_while_redis_is_away_and_converge_after(tmp_path: Any) -> None:
    """Redis stopped: flushes fail without raising, keep the newest write per key, and
    everything lands, once, when a Redis answers on the same address again."""
    import time

    import redis
    from reference.redis_server import PrivateRedis

    from jobs.redis_sink import model_counter

    server = PrivateRedis(tmp_path, persist=False)
    server.start()
    port = server.port
    client = redis.Redis(
        port=port, decode_responses=True, socket_timeout=2, socket_connect_timeout=2
    )
    sink = RedisSessionSink(client, "fw:", flush_interval_ms=1, retry_interval_ms=50)
    sink.write_session("s1", {"event_count": "1"}, status="open", version=_version(1_000, 1))
    sink.add_share("s1", "e1", 1, {"events": 1})
    assert sink.flush()
    server.stop()

    sink.write_session("s1", {"event_count": "2"}, status="open", version=_version(2_000, 2))
    sink.write_session(
        "s1", {"event_count": "3"}, status="closed", version=_version(3_000, 3, True)
    )
    sink.add_share("s1", "e1", 2, {"events": 2})
    sink.add_share("s1", "e1", 3, {"events": 3, model_counter("v1", "sessions"): 1})
    sink.count_once("events", 0, 5, {"dlq": 1})
    assert not sink.flush() and sink.unavailable
    assert not sink.due(sink.next_flush_ms() - 1)

    server.start()
    try:
        time.sleep(0.06)
        assert sink.flush() and not sink.unavailable
        assert client.hget("fw:session:s1", "event_count") == "3"
        assert client.hget("fw:session:s1", "status") == "closed"
        # The first Redis forgot everything: the counters are what was sent since.
        assert client.hgetall("fw:stats:total") == {"events": "3", "dlq": "1"}
        assert client.hgetall("fw:model:v1") == {"sessions": "1"}
        assert sink.flush()  # nothing waits: a no-op
    finally:
        server.stop()

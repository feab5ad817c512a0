"""Online store writes: versioned session hashes and the dashboard's counters.

A session hash is written only when its version is newer than the stored one
(as Feast's Redis store checks timestamps), so a replay after a failure, or an
older update arriving late, never overwrites newer data. Every write refreshes
the key's TTL.

The job buffers its writes (``flush_interval_ms``) and sends them as one pipeline:
a round trip per event was the largest cost of the feature operator. Buffered
session writes coalesce to the newest version per key, counters to one increment
per field, so a flush is small however many events it covers.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

# KEYS[1] = hash key; ARGV[1] = version, ARGV[2] = ttl seconds, ARGV[3..] = field, value pairs.
_VERSIONED_HSET = """
local current = redis.call('HGET', KEYS[1], 'version')
if current and current >= ARGV[1] then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'version', ARGV[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

MINUTE_STATS_TTL_S = 2 * 24 * 3600


def session_version(session_end_ms: int, closed: bool, event_count: int, as_of_ms: int) -> str:
    """Sortable version: later end, then closed over open, then more events, then later time.

    Keyed on the session's *end*, not its start: an event delivered out of order can move a
    session's start earlier (the version would go backwards and every later write of the
    session, its close included, would be refused), while its end never decreases. A later
    session of the same session_id ends later, so it still wins over an earlier one.
    """
    return (
        f"{max(session_end_ms, 0):016d}:{int(closed)}:{event_count:08d}:{max(as_of_ms, 0):016d}"
    )


class RedisSessionSink:
    """Writes ``fw:session:<id>`` hashes and ``fw:stats:*`` / ``fw:model:*`` counters."""

    def __init__(
        self,
        client: Any,
        key_prefix: str = "fw:",
        session_ttl_s: int = 7 * 24 * 3600,
        *,
        flush_interval_ms: int = 0,
        max_buffered: int = 2_000,
    ):
        self._redis = client
        self.key_prefix = key_prefix
        self.session_ttl_s = session_ttl_s
        self._script = client.register_script(_VERSIONED_HSET)
        # 0 = write through; otherwise writes wait in these buffers until ``flush``.
        self.flush_interval_ms = flush_interval_ms
        self.max_buffered = max_buffered
        self._sessions: dict[str, tuple[str, list[str]]] = {}  # key -> (version, args)
        self._totals: Counter[str] = Counter()
        self._minutes: dict[int, Counter[str]] = {}
        self._models: dict[str, Counter[str]] = {}
        self._oldest_ms: int | None = None

    # --- buffering -------------------------------------------------------------------------

    @property
    def buffered(self) -> bool:
        return self.flush_interval_ms > 0

    def pending_since_ms(self) -> int | None:
        """Wall-clock time of the oldest buffered write, or None when nothing waits."""
        return self._oldest_ms

    def due(self, now_ms: int) -> bool:
        """Whether the buffer should be flushed now (old enough or large enough)."""
        if self._oldest_ms is None:
            return False
        size = len(self._sessions) + len(self._totals)
        return now_ms - self._oldest_ms >= self.flush_interval_ms or size >= self.max_buffered

    def _touch(self) -> None:
        if self._oldest_ms is None:
            self._oldest_ms = _now_ms()

    def flush(self) -> None:
        """Send every buffered write in one pipeline (a no-op when nothing waits)."""
        if self._oldest_ms is None:
            return
        pipe = self.pipeline()
        for key, (_, args) in self._sessions.items():
            self._script(keys=[key], args=args, client=pipe)
        self._add_counters(pipe, self._totals, self._minutes)
        for model_key, counts in self._models.items():
            for name, value in counts.items():
                pipe.hincrby(model_key, name, value)
        pipe.execute()
        self._sessions.clear()
        self._totals.clear()
        self._minutes.clear()
        self._models.clear()
        self._oldest_ms = None

    def _add_counters(
        self, pipe: Any, totals: Mapping[str, int], minutes: Mapping[int, Mapping[str, int]]
    ) -> None:
        for name, value in totals.items():
            pipe.hincrby(f"{self.key_prefix}stats:total", name, value)
        for minute, counts in minutes.items():
            minute_key = f"{self.key_prefix}stats:minute:{minute}"
            for name, value in counts.items():
                pipe.hincrby(minute_key, name, value)
            pipe.expire(minute_key, MINUTE_STATS_TTL_S)

    def session_key(self, session_id: str) -> str:
        return f"{self.key_prefix}session:{session_id}"

    def write_session(
        self,
        session_id: str,
        columns: Mapping[str, str],
        *,
        status: str,
        version: str,
        updated_ms: int | None = None,
        pipe: Any = None,
    ) -> None:
        """Write the hash if ``version`` is newer than what Redis holds."""
        fields = dict(columns)
        fields["status"] = status
        fields["updated_ms"] = str(updated_ms if updated_ms is not None else _now_ms())
        args: list[str] = [version, str(self.session_ttl_s)]
        for key, value in fields.items():
            args.extend((key, value))
        redis_key = self.session_key(session_id)
        if self.buffered and pipe is None:
            # Versions sort as strings (see session_version): keep only the newest.
            waiting = self._sessions.get(redis_key)
            if waiting is None or waiting[0] <= version:
                self._sessions[redis_key] = (version, args)
            self._touch()
            return
        self._script(keys=[redis_key], args=args, client=pipe or self._redis)

    def pipeline(self) -> Any:
        return self._redis.pipeline(transaction=False)

    def count(self, counters: Mapping[str, int], *, pipe: Any = None, now_ms: int | None = None) -> None:
        """Add ``counters`` to the running totals and the current minute's bucket."""
        if not counters:
            return
        minute = (now_ms if now_ms is not None else _now_ms()) // 60_000
        if self.buffered and pipe is None:
            self._totals.update(counters)
            self._minutes.setdefault(minute, Counter()).update(counters)
            self._touch()
            return
        own = pipe is None
        pipe = pipe if pipe is not None else self.pipeline()
        self._add_counters(pipe, counters, {minute: counters})
        if own:
            pipe.execute()

    def count_model(self, model_version: str, counters: Mapping[str, int], *, pipe: Any = None) -> None:
        """Per-model session counters read by automatic rollback."""
        key = f"{self.key_prefix}model:{model_version or 'unknown'}"
        if self.buffered and pipe is None:
            self._models.setdefault(key, Counter()).update(counters)
            self._touch()
            return
        target = pipe if pipe is not None else self._redis
        for name, value in counters.items():
            target.hincrby(key, name, value)

    def read_session(self, session_id: str) -> dict[str, str]:
        return dict(self._redis.hgetall(self.session_key(session_id)))


def implicit_signals(row: Mapping[str, Any]) -> dict[str, int]:
    """Which implicit signals a closed session shows (one count per signal kind)."""
    signals = {
        "cta_not_clicked": row["cta_not_clicked_count"] > 0,
        "no_order": bool(row["no_order"]),
        "repeated_question": row["repeated_question_count"] > 0,
        "fsm_stalled": bool(row["fsm_stalled"]),
        "long_silence": row["long_silence_count"] > 0,
        "low_confidence": row["low_confidence_count"] > 0,
        "correction": row["correction_count"] > 0,
        "slow_response": row["slow_response_count"] > 0,
    }
    return {name: 1 for name, present in signals.items() if present}


def closed_session_counters(row: Mapping[str, Any]) -> dict[str, int]:
    """Dashboard counters contributed by one closed session."""
    counters: dict[str, int] = {"sessions_closed": 1}
    signals = implicit_signals(row)
    for name in signals:
        counters[f"implicit:{name}"] = 1
    if signals:
        counters["implicit_signals"] = len(signals)
    reasons: Iterable[str] = row["reasons"]
    if row["flagged"]:
        counters["sessions_flagged"] = 1
        for reason in reasons:
            counters[f"flagged:{reason}"] = 1
    return counters


def _now_ms() -> int:
    return time.time_ns() // 1_000_000

"""Online store writes: versioned session hashes and the dashboard's counters.

A session hash is written only when its version is newer than the stored one
(as Feast's Redis store checks timestamps), so a replay after a failure, or an
older update arriving late, never overwrites newer data. Every write refreshes
the key's TTL.
"""

from __future__ import annotations

import time
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

    def __init__(self, client: Any, key_prefix: str = "fw:", session_ttl_s: int = 7 * 24 * 3600):
        self._redis = client
        self.key_prefix = key_prefix
        self.session_ttl_s = session_ttl_s
        self._script = client.register_script(_VERSIONED_HSET)

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
        self._script(keys=[self.session_key(session_id)], args=args, client=pipe or self._redis)

    def pipeline(self) -> Any:
        return self._redis.pipeline(transaction=False)

    def count(self, counters: Mapping[str, int], *, pipe: Any = None, now_ms: int | None = None) -> None:
        """Add ``counters`` to the running totals and the current minute's bucket."""
        if not counters:
            return
        own = pipe is None
        pipe = pipe if pipe is not None else self.pipeline()
        minute = (now_ms if now_ms is not None else _now_ms()) // 60_000
        minute_key = f"{self.key_prefix}stats:minute:{minute}"
        for name, value in counters.items():
            pipe.hincrby(f"{self.key_prefix}stats:total", name, value)
            pipe.hincrby(minute_key, name, value)
        pipe.expire(minute_key, MINUTE_STATS_TTL_S)
        if own:
            pipe.execute()

    def count_model(self, model_version: str, counters: Mapping[str, int], *, pipe: Any = None) -> None:
        """Per-model session counters read by automatic rollback."""
        key = f"{self.key_prefix}model:{model_version or 'unknown'}"
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

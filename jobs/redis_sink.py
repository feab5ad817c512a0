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

from schemas.redis_layout import MS_PER_MINUTE, RedisKeys

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

# Exact counters. A key's share is written as absolute totals with (epoch, version); the
# script adds to the shared counters only the difference to the share it already holds,
# and refuses versions it has seen, so a replay after a restore adds nothing twice.
# KEYS[1] = the key's share; ARGV[1] = epoch, ARGV[2] = version, ARGV[3] = ttl seconds,
# ARGV[4] = totals hash, ARGV[5] = minute hash, ARGV[6] = minute ttl, ARGV[7] = prefix of
# per-model hashes, ARGV[8..] = field, absolute value pairs; a field
# "model<US><version><US><name>" (US = \31) counts in the per-model hash instead.
_ADD_SHARE = """
local key = KEYS[1]
local stored_epoch = redis.call('HGET', key, '_epoch')
if stored_epoch == ARGV[1] then
  local stored_version = tonumber(redis.call('HGET', key, '_version'))
  if stored_version and stored_version >= tonumber(ARGV[2]) then
    redis.call('EXPIRE', key, ARGV[3])
    return 0
  end
elseif stored_epoch then
  redis.call('DEL', key)
end
for i = 8, #ARGV, 2 do
  local field = ARGV[i]
  local held = redis.call('HGET', key, field)
  local delta = tonumber(ARGV[i + 1]) - tonumber(held or '0')
  -- A field new to this share is written even when 0, so readers see it (as HINCRBY 0).
  if delta ~= 0 or not held then
    local sep = string.find(field, '\\31', 1, true)
    if sep then
      local rest = string.sub(field, sep + 1)
      local sep2 = string.find(rest, '\\31', 1, true)
      local model_key = ARGV[7] .. string.sub(rest, 1, sep2 - 1)
      redis.call('HINCRBY', model_key, string.sub(rest, sep2 + 1), delta)
    else
      redis.call('HINCRBY', ARGV[4], field, delta)
      redis.call('HINCRBY', ARGV[5], field, delta)
    end
  end
end
redis.call('HSET', key, '_epoch', ARGV[1], '_version', ARGV[2], unpack(ARGV, 8))
redis.call('EXPIRE', key, ARGV[3])
redis.call('EXPIRE', ARGV[5], ARGV[6])
return 1
"""

# Rejections are counted once per source record: a partition is read in offset order, so
# an offset at or below the highest counted one was counted before a restore.
# KEYS[1] = hash of counted offsets; ARGV[1] = "<topic>:<partition>", ARGV[2] = offset,
# ARGV[3] = totals hash, ARGV[4] = minute hash, ARGV[5] = minute ttl, ARGV[6..] = pairs.
_COUNT_ONCE_PER_OFFSET = """
local stored = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
if tonumber(ARGV[2]) <= stored then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
for i = 6, #ARGV, 2 do
  redis.call('HINCRBY', ARGV[3], ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', ARGV[4], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', ARGV[4], ARGV[5])
return 1
"""

MODEL_FIELD_SEPARATOR = "\x1f"


def model_counter(model_version: str, name: str) -> str:
    """A key's share field that counts ``name`` in the per-model hash of ``model_version``."""
    return f"model{MODEL_FIELD_SEPARATOR}{model_version or 'unknown'}{MODEL_FIELD_SEPARATOR}{name}"


def session_version(session_end_ms: int, closed: bool, event_count: int, as_of_ms: int) -> str:
    """Sortable version: later end, then closed over open, then more events, then later time.

    Keyed on the session's *end*, not its start: an event delivered out of order can move a
    session's start earlier (the version would go backwards and every later write of the
    session, its close included, would be refused), while its end never decreases. A later
    session of the same session_id ends later, so it still wins over an earlier one.
    """
    return f"{max(session_end_ms, 0):016d}:{int(closed)}:{event_count:08d}:{max(as_of_ms, 0):016d}"


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
        retry_interval_ms: int = 1_000,
        max_pending_keys: int = 500_000,
    ):
        self._redis = client
        self.key_prefix = key_prefix
        self.keys = RedisKeys(key_prefix)
        self.session_ttl_s = session_ttl_s
        self._script = client.register_script(_VERSIONED_HSET)
        self._add_share_script = client.register_script(_ADD_SHARE)
        self._count_once_script = client.register_script(_COUNT_ONCE_PER_OFFSET)
        self._shares: dict[str, tuple[str, int, list[str]]] = {}  # key -> (epoch, version, args)
        self._offsets: list[list[str]] = []  # count_once calls waiting for Redis
        self.retry_interval_ms = retry_interval_ms
        self.max_pending_keys = max_pending_keys
        self._retry_at_ms = 0
        self._unavailable_since_ms: int | None = None
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
        """Whether the buffer should be flushed now (old enough or large enough).

        While Redis is unreachable, not before the next retry.
        """
        if self._oldest_ms is None or now_ms < self._retry_at_ms:
            return False
        size = len(self._sessions) + len(self._shares) + len(self._totals) + len(self._offsets)
        return now_ms - self._oldest_ms >= self.flush_interval_ms or size >= self.max_buffered

    def next_flush_ms(self) -> int | None:
        """When the buffered writes should go out (None when nothing waits)."""
        if self._oldest_ms is None:
            return None
        return max(self._oldest_ms + self.flush_interval_ms, self._retry_at_ms)

    def _touch(self) -> None:
        if self._oldest_ms is None:
            self._oldest_ms = _now_ms()

    @property
    def unavailable(self) -> bool:
        """Whether the last attempt to reach Redis failed (writes are waiting)."""
        return self._unavailable_since_ms is not None

    def flush(self) -> bool:
        """Send every buffered write in one pipeline; False if Redis could not be reached.

        Redis being away is not the job's failure: the writes stay buffered (newest
        version per key, one share per key) and go out once it answers again. Every
        write is idempotent (versioned hashes and shares, offset-guarded counts), so a
        pipeline cut off half way is simply sent again. More than ``max_pending_keys``
        keys waiting raises, and the job restarts from its last checkpoint.
        """
        if self._oldest_ms is None:
            return True
        import redis

        pipe = self.pipeline()
        for key, (_, args) in self._sessions.items():
            self._script(keys=[key], args=args, client=pipe)
        for key, (_, _, args) in self._shares.items():
            self._add_share_script(keys=[key], args=self._share_args(args), client=pipe)
        for args in self._offsets:
            self._count_once_script(keys=[self.keys.counted_offsets], args=args, client=pipe)
        self._add_counters(pipe, self._totals, self._minutes)
        for model_key, counts in self._models.items():
            for name, value in counts.items():
                pipe.hincrby(model_key, name, value)
        try:
            pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._failed(exc)
            return False
        if self._unavailable_since_ms is not None:
            waited_s = (_now_ms() - self._unavailable_since_ms) / 1000
            _log(f"Redis is back after {waited_s:.1f} s; buffered writes sent")
        self._unavailable_since_ms = None
        self._retry_at_ms = 0
        self._sessions.clear()
        self._shares.clear()
        self._offsets.clear()
        self._totals.clear()
        self._minutes.clear()
        self._models.clear()
        self._oldest_ms = None
        return True

    def flush_before_close(self, wait_s: float = 30.0) -> None:
        """At a stop, writes still buffered get up to ``wait_s`` for Redis to come back."""
        deadline = time.monotonic() + wait_s
        while not self.flush() and time.monotonic() < deadline:
            time.sleep(1.0)

    def _minute_key(self) -> str:
        return self.keys.stats_minute(_now_ms() // MS_PER_MINUTE)

    def _failed(self, exc: Exception) -> None:
        now = _now_ms()
        if self._unavailable_since_ms is None:
            self._unavailable_since_ms = now
            _log(f"Redis unreachable ({exc}); buffering writes and retrying")
        self._retry_at_ms = now + self.retry_interval_ms
        pending = len(self._sessions) + len(self._shares) + len(self._offsets)
        if pending > self.max_pending_keys:
            raise RuntimeError(
                f"Redis unreachable for {(now - self._unavailable_since_ms) / 1000:.0f} s with "
                f"{pending} keys waiting (max_pending_keys {self.max_pending_keys})"
            ) from exc

    def _add_counters(
        self, pipe: Any, totals: Mapping[str, int], minutes: Mapping[int, Mapping[str, int]]
    ) -> None:
        for name, value in totals.items():
            pipe.hincrby(self.keys.stats_total, name, value)
        for minute, counts in minutes.items():
            minute_key = self.keys.stats_minute(minute)
            for name, value in counts.items():
                pipe.hincrby(minute_key, name, value)
            pipe.expire(minute_key, self.keys.stats_minute_ttl_s)

    def session_key(self, session_id: str) -> str:
        return self.keys.session(session_id)

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

    def count(
        self, counters: Mapping[str, int], *, pipe: Any = None, now_ms: int | None = None
    ) -> None:
        """Add ``counters`` to the running totals and the current minute's bucket."""
        if not counters:
            return
        minute = (now_ms if now_ms is not None else _now_ms()) // MS_PER_MINUTE
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

    def count_model(
        self, model_version: str, counters: Mapping[str, int], *, pipe: Any = None
    ) -> None:
        """Per-model session counters read by automatic rollback."""
        key = self.keys.model(model_version or "unknown")
        if self.buffered and pipe is None:
            self._models.setdefault(key, Counter()).update(counters)
            self._touch()
            return
        target = pipe if pipe is not None else self._redis
        for name, value in counters.items():
            target.hincrby(key, name, value)

    def _share_args(self, head_and_pairs: list[str]) -> list[str]:
        epoch, version, *pairs = head_and_pairs
        return [
            epoch,
            version,
            str(self.session_ttl_s),
            self.keys.stats_total,
            self._minute_key(),
            str(self.keys.stats_minute_ttl_s),
            self.keys.model_prefix,
            *pairs,
        ]

    def add_share(
        self, session_id: str, epoch: str, version: int, counts: Mapping[str, int]
    ) -> None:
        """Bring the shared counters up to this key's absolute ``counts`` (exactly once)."""
        key = self.keys.counted(session_id)
        args = [epoch, str(version)]
        for name, value in counts.items():
            args.extend((name, str(value)))
        if self.buffered:
            waiting = self._shares.get(key)
            if waiting is not None and waiting[0] != epoch:
                self.flush()  # the old epoch's last share must land before the new one
                waiting = None
            if waiting is None or waiting[1] <= version:
                self._shares[key] = (epoch, version, args)
            self._touch()
            return
        self._add_share_script(keys=[key], args=self._share_args(args))

    def read_set(self, key: str) -> set[str] | None:
        """Members of the set ``key`` (unprefixed names are the caller's), None when Redis
        does not answer."""
        import redis

        try:
            return {str(m) for m in self._redis.smembers(key)}
        except (redis.ConnectionError, redis.TimeoutError):
            return None

    def count_once(
        self, topic: str, partition: int | None, offset: int | None, counters: Mapping[str, int]
    ) -> None:
        """Count one source record's ``counters`` unless its offset was counted before."""
        if partition is None or offset is None:
            self.count(counters)
            return
        args = [
            f"{topic}:{partition}",
            str(offset),
            self.keys.stats_total,
            self._minute_key(),
            str(self.keys.stats_minute_ttl_s),
        ]
        for name, value in counters.items():
            args.extend((name, str(value)))
        if self._offsets or self._unavailable_since_ms is not None:
            # Redis is away: keep the order, send with the next flush.
            self._offsets.append(args)
            self._touch()
            self.retry()
            return
        import redis

        try:
            self._count_once_script(keys=[self.keys.counted_offsets], args=args)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._offsets.append(args)
            self._touch()
            self._failed(exc)

    def retry(self) -> None:
        """Flush what waits for Redis once the retry time has come (cheap otherwise)."""
        if self._oldest_ms is not None and _now_ms() >= self._retry_at_ms:
            self.flush()

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


def _log(message: str) -> None:
    import logging

    logging.getLogger("flywheel.redis_sink").warning(message)

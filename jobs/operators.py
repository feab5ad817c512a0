"""The Python operators of the feature job: parse, and per-session features.

``SessionFeaturesFunction`` is where sections 2 to 5 of the contract meet
Flink: it keeps one ``features.tracker.TrackerState`` per ``session_id``,
closes sessions on event-time timers (and on idle input, on processing-time
timers), computes features with ``features/``, writes Redis, and emits closed
sessions (Parquet), flagged sessions and late events.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pyflink.common import Row
from pyflink.common.time import Time
from pyflink.common.typeinfo import Types
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import (
    KeyedProcessFunction,
    OutputTag,
    ProcessFunction,
    RuntimeContext,
    TimeDomain,
)
from pyflink.datastream.state import StateTtlConfig, ValueStateDescriptor

from features import tracker
from features.columns import FLAGGED_PARQUET_FIELDS, PARQUET_SCHEMA_FIELDS
from features.compute import is_negative_feedback
from jobs.row_types import flink_value, row_type
from schemas.dlq import build_dlq_message, dlq_message_json
from schemas.events import Event, Feedback, ParseError, UserMessage

FEATURE_ROW_NAMES = [name for name, _ in PARQUET_SCHEMA_FIELDS] + ["dt"]
FEATURE_ROW_TYPE = row_type(PARQUET_SCHEMA_FIELDS, ("dt", "string"))
# Keyed JSON messages for Kafka (flagged, dead letters) and JSON Lines files.
KEYED_JSON_TYPE = Types.ROW_NAMED(["session_id", "payload"], [Types.STRING(), Types.STRING()])
FLAGGED_TAG = OutputTag("flagged", KEYED_JSON_TYPE)
DLQ_TAG = OutputTag("dead-letters", KEYED_JSON_TYPE)


@dataclass(frozen=True, slots=True)
class SourcePosition:
    """Where a raw event came from, for dead letters."""

    topic: str
    partition: int | None
    offset: int | None
    raw: bytes


# Flink's own state TTL comes this long after the operator's (which counts what it forgets).
FLINK_TTL_MARGIN_MS = 3_600_000


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _odd(ms: int) -> int:
    return ms | 1


def _even(ms: int) -> int:
    return ms + (ms & 1)


def utc_date(ts_ms: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts_ms // 1000))


@dataclass(frozen=True)
class EventClockSettings:
    """What the streaming parse needs to keep event time from accepted events only."""

    topic: str
    partitions: tuple[int, ...]
    bound_ms: int
    idle_ms: int
    max_future_skew_ms: int


def _epoch_ms(value: Any) -> int | None:
    """A Kafka record timestamp (TIMESTAMP_LTZ from SQL: an Instant or a datetime) in ms."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    # PyFlink's Instant in process mode; in thread mode the JVM's java.time.Instant itself.
    for method in ("to_epoch_milli", "toEpochMilli"):
        to_epoch_milli = getattr(value, method, None)
        if to_epoch_milli is not None:
            return int(to_epoch_milli())
    timestamp = getattr(value, "timestamp", None)
    if timestamp is not None:
        return int(round(timestamp() * 1000))
    return None


class DenyListReader:
    """The deny list (contract section 6) an operator holds: as it was at submission, then
    re-read from Redis through ``sink`` every ``refresh_ms`` (kept as it was while Redis
    is away)."""

    def __init__(self, hashes: frozenset[str], sink: Any, key_prefix: str, refresh_ms: int):
        from features.privacy import DenyList, denied_users_key

        self._list = DenyList(hashes)
        self._sink = sink
        self._key = denied_users_key(key_prefix)
        self._refresh_ms = refresh_ms
        self._read_ms = _now_ms()

    def denies(self, user_id: str) -> bool:
        if self._sink is not None:
            now = _now_ms()
            if now - self._read_ms >= self._refresh_ms:
                from features.privacy import DenyList

                self._read_ms = now
                members = self._sink.read_set(self._key)
                if members is not None and members != self._list.hashes:
                    self._list = DenyList(members)
        return self._list.denies(user_id)


class ParseEvents(ProcessFunction):
    """Raw Kafka records (or file lines) to (event, position); errors to the dead-letter output.

    Streaming (``clock`` given): an event more than ``max_future_skew`` ahead of its
    record's timestamp is rejected as ``future_event``, and each accepted event carries
    the reader's watermark (``features.event_time.PartitionClock``) as a third element,
    so no rejected event ever moves event time.
    """

    def __init__(
        self,
        redis_factory: Any = None,
        key_prefix: str = "fw:",
        clock: EventClockSettings | None = None,
        denied_users: frozenset[str] = frozenset(),
        deny_list_refresh_ms: int = 10_000,
    ):
        self._redis_factory = redis_factory
        self._key_prefix = key_prefix
        self._clock_settings = clock
        self._sink: Any = None
        # Forgotten users (contract section 6): their events are counted and dropped. The
        # list as it was at submission, then re-read from Redis every refresh interval.
        self._denied_users = denied_users
        self._deny_list_refresh_ms = deny_list_refresh_ms

    def open(self, runtime_context: RuntimeContext) -> None:
        from features.event_time import PartitionClock
        from schemas import parse

        self._parse = parse
        self._clock: PartitionClock | None = None
        settings = self._clock_settings
        if settings is not None:
            self._clock = PartitionClock.for_reader(
                topic=settings.topic,
                partitions=settings.partitions,
                reader=runtime_context.get_index_of_this_subtask(),
                readers=runtime_context.get_number_of_parallel_subtasks(),
                bound_ms=settings.bound_ms,
                idle_ms=settings.idle_ms,
                now_wall_ms=_now_ms(),
            )
        if self._redis_factory is not None:
            from jobs.redis_sink import RedisSessionSink

            self._sink = RedisSessionSink(self._redis_factory(), self._key_prefix)
        self._deny_list = DenyListReader(
            getattr(self, "_denied_users", frozenset()),
            self._sink,
            self._key_prefix,
            getattr(self, "_deny_list_refresh_ms", 10_000),
        )

    def close(self) -> None:
        if self._sink is not None:
            self._sink.flush_before_close()

    def _future_event(self, event: Event, record_ts_ms: int | None) -> ParseError | None:
        from features.event_time import is_future_event

        settings = self._clock_settings
        if settings is None or not is_future_event(
            event.ts_ms, record_ts_ms, settings.max_future_skew_ms
        ):
            return None
        return ParseError(
            "future_event",
            "ts_ms",
            f"ts_ms {event.ts_ms} is {event.ts_ms - (record_ts_ms or 0)} ms ahead of the "
            f"record's timestamp {record_ts_ms} (max_future_skew {settings.max_future_skew_ms} ms)",
            event_id=event.event_id,
            session_id=event.session_id,
        )

    def process_element(self, value: Row, ctx: ProcessFunction.Context) -> Iterator[Any]:
        raw, topic, partition, offset = value[0], value[1], value[2], value[3]
        if isinstance(raw, str):
            raw = raw.encode("utf-8")
        if self._sink is not None:
            self._sink.retry()  # rejections counted while Redis was away
        result = self._parse(raw)
        record_ts_ms = _epoch_ms(value[4]) if self._clock is not None else None
        if not isinstance(result, ParseError) and self._clock is not None:
            result = self._future_event(result, record_ts_ms) or result
        if isinstance(result, ParseError):
            message = build_dlq_message(
                result,
                raw,
                source_topic=topic,
                source_partition=partition,
                source_offset=offset,
                rejected_at_ms=_now_ms(),
            )
            if self._sink is not None:
                self._sink.count_once(
                    topic, partition, offset, {"dlq": 1, f"dlq:{result.reason}": 1}
                )
            yield DLQ_TAG, Row(result.session_id, dlq_message_json(message, len(raw)))
            return
        if self._deny_list.denies(result.user_id):
            # A forgotten user: counted, never stored, never moving event time.
            if self._sink is not None:
                self._sink.count_once(topic, partition, offset, {"denied": 1})
            return
        position = SourcePosition(topic, partition, offset, raw)
        if self._clock is None:
            yield result, position
            return
        watermark_ms = self._clock.observe(partition or 0, result.ts_ms, _now_ms(), record_ts_ms)
        yield result, position, watermark_ms


class ReaderWatermark(TimestampAssigner):
    """Hands the parse operator's watermark to Flink (see ``ParseEvents``).

    With ``for_monotonous_timestamps`` Flink's watermark is the highest timestamp minus
    one, so each record's timestamp is the reader's watermark plus one. Features use the
    event's own ``ts_ms``, never the record timestamp.
    """

    def extract_timestamp(self, value: Any, record_timestamp: int) -> int:
        return int(value[2]) + 1


class EventTimeAssigner(TimestampAssigner):
    """Event time is the event's ``ts_ms``."""

    def extract_timestamp(self, value: Any, record_timestamp: int) -> int:
        return int(value[0].ts_ms)


def session_key(value: tuple[Any, ...]) -> str:
    return value[0].session_id


class SessionFeaturesFunction(KeyedProcessFunction):
    """Sessions by gap, features, rules and sinks for one ``session_id`` at a time."""

    def __init__(
        self,
        settings_json: str,
        *,
        bounded: bool,
        redis_factory: Any = None,
        key_prefix: str = "fw:",
        session_ttl_s: int = 7 * 24 * 3600,
        python_executable: str = sys.executable,
        denied_users: frozenset[str] = frozenset(),
    ):
        self._denied_users = denied_users
        self._python_executable = python_executable
        self._settings_json = settings_json
        self._bounded = bounded
        self._redis_factory = redis_factory
        self._key_prefix = key_prefix
        self._session_ttl_s = session_ttl_s

    # --- lifecycle -------------------------------------------------------------------------

    def open(self, runtime_context: RuntimeContext) -> None:
        from jobs.settings import FeatureJobSettings

        settings = FeatureJobSettings.model_validate_json(self._settings_json)
        self.config = settings.feature_config()
        self.rules = settings.rule_set()
        self.redactor = settings.redactor()
        self.gap_ms = self.config.session_gap_ms
        self.flagged_max_bytes = settings.flagged_max_message_bytes
        self.bound_ms = self.config.max_out_of_order_ms
        self.idle_ms = self.config.idle_timeout_ms
        self.poll_ms = max(1, settings.embedding_poll_interval_ms)
        # Embedding micro-batches shared by all keys of this subtask (not state:
        # recomputable); the batching policy is jobs/embedding_batcher.py's.
        self.batcher: Any = None
        if settings.embedding_enabled:
            from jobs.embedding import EmbeddingProcess
            from jobs.embedding_batcher import EmbeddingBatcher

            encoder = EmbeddingProcess(
                self._python_executable,
                settings.embedding_model_path,
                settings.embedding_batch_size,
                settings.embedding_threads,
                settings.embedding_backend,
                settings.embedding_export_dir,
            )
            self.batcher = EmbeddingBatcher(
                encoder,
                batch_size=settings.embedding_batch_size,
                max_delay_ms=settings.embedding_max_delay_ms,
                cache_entries=settings.embedding_cache_entries,
            )
        self.sink: Any = None
        if self._redis_factory is not None:
            from jobs.redis_sink import RedisSessionSink

            self.sink = RedisSessionSink(
                self._redis_factory(),
                self._key_prefix,
                self._session_ttl_s,
                flush_interval_ms=settings.redis_flush_interval_ms,
            )
        self.flush_timer_ms: int | None = None
        # A session open when its user was forgotten closes without output.
        self.deny_list = DenyListReader(
            getattr(self, "_denied_users", frozenset()), self.sink, self._key_prefix, 10_000
        )
        descriptor = ValueStateDescriptor("tracker", Types.PICKLED_BYTE_ARRAY())
        # The operator expires keys itself, state_ttl after their last activity, and
        # counts what it forgets (tracker.expire). Flink's TTL, an hour later and
        # returning expired values it has not cleaned up yet, only bounds memory.
        self.state_ttl_ms = settings.state_ttl_ms
        descriptor.enable_time_to_live(
            StateTtlConfig.new_builder(Time.milliseconds(self.state_ttl_ms + FLINK_TTL_MARGIN_MS))
            .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
            .set_state_visibility(StateTtlConfig.StateVisibility.ReturnExpiredIfNotCleanedUp)
            .build()
        )
        self.state = runtime_context.get_state(descriptor)
        # session_id -> its user messages' vectors (see _load).
        self.vectors_by_key: dict[str, dict[str, bytes]] = {}
        # session_id -> its event-time timers as last synced (saves recomputing them).
        self.timers_by_key: dict[str, set[int]] = {}
        # session_id -> user messages whose vectors its Redis hash waits for.
        self.waiting_by_key: dict[str, set[str]] = {}
        self.last_input_wall_ms = _now_ms()
        self.idle_watermark_ms = -(2**63)

    # --- helpers ---------------------------------------------------------------------------

    def close(self) -> None:
        if self.sink is not None:
            self.sink.flush_before_close()
        if self.batcher is not None:
            self.batcher.close()

    def _flush_redis(self, ctx: Any) -> None:
        """Send buffered Redis writes once due; until then a processing timer is pending."""
        sink = self.sink
        if sink is None or sink.pending_since_ms() is None:
            return
        if sink.due(_now_ms()):
            sink.flush()  # when Redis is away the writes stay buffered: a retry is due
            self.flush_timer_ms = None
        next_ms = sink.next_flush_ms()
        if next_ms is not None and self.flush_timer_ms is None:
            self.flush_timer_ms = _odd(max(next_ms, _now_ms() + 1))
            ctx.timer_service().register_processing_time_timer(self.flush_timer_ms)

    def _registered_event_timers(self, ctx: Any, key: str, state: tracker.TrackerState) -> set[int]:
        """The key's event-time timers still to fire: remembered from the last sync.

        Recomputed from state when not remembered (after a restore, on another subtask).
        """
        remembered = self.timers_by_key.get(key)
        if remembered is None:
            return self._event_timers(ctx, state)
        watermark_ms = ctx.timer_service().current_watermark()
        return {t for t in remembered if t > watermark_ms}

    def _event_timers(self, ctx: Any, state: tracker.TrackerState) -> set[int]:
        windows = self.sink is not None  # only the online store shows open sessions
        return tracker.event_time_timers(
            state,
            ctx.timer_service().current_watermark(),
            self.gap_ms,
            cta_window_ms=self.config.cta_window_ms if windows else None,
            silence_gap_ms=self.config.silence_gap_ms if windows else None,
        )

    def _sync_event_timers(
        self, ctx: Any, key: str, before: set[int], state: tracker.TrackerState
    ) -> None:
        """Keep exactly the event-time timers ``state`` needs (see ``event_time_timers``).

        Each timer costs a Python call with a state round trip when it fires, and most
        would find nothing to do: a session's earlier ends, CTAs clicked in time.
        """
        after = self._event_timers(ctx, state)
        timers = ctx.timer_service()
        for timestamp in before - after:
            timers.delete_event_time_timer(timestamp)
        for timestamp in after - before:
            timers.register_event_time_timer(timestamp)
        if after:
            self.timers_by_key[key] = after
        else:
            self.timers_by_key.pop(key, None)

    def _watermark(self, ctx: Any) -> int:
        return max(ctx.timer_service().current_watermark(), self.idle_watermark_ms)

    def _add_share(self, key: str, state: tracker.TrackerState, version_before: int) -> None:
        """Hand this key's counter totals to Redis when they changed (exactly once there)."""
        if self.sink is not None and state.counts_version != version_before:
            self.sink.add_share(key, state.counts_epoch, state.counts_version, state.counts)

    # A key's vectors live in operator memory (vectors_by_key), not in its Flink state:
    # the state is pickled and copied into the JVM on every event, and a session's
    # vectors were most of its bytes (384 floats per user message). The encoder is
    # deterministic, so vectors are recomputable: after a restore, or on the subtask a
    # key moved to, the ones missing are encoded again (the restore paths of
    # _write_waiting, _on_idle_timer and a forced _collect_vectors at close).

    def _load(self, key: str) -> tracker.TrackerState:
        state = self.state.value()
        if state is None:
            state = tracker.TrackerState()
        kept = self.vectors_by_key.get(key)
        if kept is not None:
            kept.update(state.vectors)  # a checkpoint from before this kept them in state
            state.vectors = kept
        return state

    def _save(self, key: str, state: tracker.TrackerState) -> None:
        if state.vectors:
            self.vectors_by_key[key] = state.vectors
        else:
            self.vectors_by_key.pop(key, None)
        if state.is_empty():
            self.state.clear()
            self.vectors_by_key.pop(key, None)
            return
        vectors, state.vectors = state.vectors, {}
        try:
            self.state.update(state)  # pickled here, without the vectors
        finally:
            state.vectors = vectors

    def _pump_embeddings(self) -> None:
        if self.batcher is not None:
            self.batcher.pump(_now_ms())

    def _missing_vectors(
        self, state: tracker.TrackerState, events: list[Event]
    ) -> list[UserMessage]:
        return [e for e in events if isinstance(e, UserMessage) and e.event_id not in state.vectors]

    def _collect_vectors(
        self, state: tracker.TrackerState, events: list[Event], *, force: bool
    ) -> bool:
        """Move computed vectors into state; with ``force`` encode what is missing now."""
        if self.batcher is None:
            return True
        missing = self._missing_vectors(state, events)
        for event in missing:
            cached = self.batcher.take(event.event_id)
            if cached is not None:
                state.vectors[event.event_id] = cached
                waiting = self.waiting_by_key.get(event.session_id)
                if waiting is not None:
                    waiting.discard(event.event_id)
                    if not waiting:
                        del self.waiting_by_key[event.session_id]
        missing = [e for e in missing if e.event_id not in state.vectors]
        if missing and force:
            self.batcher.encode_now({e.event_id: e.text for e in missing}, _now_ms())
            return self._collect_vectors(state, events, force=False)
        return not missing

    def _embeddings(self, state: tracker.TrackerState, events: list[Event]) -> Any:
        if self.batcher is None:
            return None
        from jobs.embedding import array_from_bytes, is_unreadable

        # numpy arrays: features' similarity uses their dot product (a Python loop over
        # 384 floats per pair took a tenth of the operator's time). A text the model
        # cannot read gets no vector: only normalized equality counts for it.
        vectors = {
            e.event_id: array_from_bytes(state.vectors[e.event_id])
            for e in events
            if isinstance(e, UserMessage) and e.event_id in state.vectors
        }
        return {event_id: v for event_id, v in vectors.items() if not is_unreadable(v)}

    def _compute(
        self, state: tracker.TrackerState, events: list[Event], as_of_ms: int | None
    ) -> Any:
        from features import compute_features

        return compute_features(
            events,
            self.config,
            self.rules,
            embeddings=self._embeddings(state, events),
            as_of_ms=as_of_ms,
        )

    def _write_open(
        self, state: tracker.TrackerState, session: list[Event], watermark_ms: int
    ) -> None:
        if self.sink is None or self.deny_list.denies(session[0].user_id):
            return
        if not self._collect_vectors(state, session, force=False):
            return  # the embedding timer writes it once vectors are there
        feats = self._compute(state, session, watermark_ms)
        from jobs.redis_sink import session_version

        version = session_version(session[-1].ts_ms, False, len(session), watermark_ms)
        self.sink.write_session(
            session[0].session_id, feats.to_redis_hash(), status="open", version=version
        )

    def _close(self, state: tracker.TrackerState, watermark_ms: int) -> Iterator[Any]:
        from features import build_flagged_message, fit_flagged_message
        from jobs.redis_sink import closed_session_counters, model_counter, session_version

        for session in tracker.close_due(state, watermark_ms, self.gap_ms):
            if self.deny_list.denies(session[0].user_id):
                for event in session:
                    state.vectors.pop(event.event_id, None)
                if self.sink is not None:
                    state.count(
                        {"denied_sessions": 1},
                        epoch=f"close:{session[0].session_id}:{session[0].ts_ms}",
                    )
                continue
            self._collect_vectors(state, session, force=True)
            feats = self._compute(state, session, None)
            row = feats.to_row()
            for event in session:
                state.vectors.pop(event.event_id, None)
            if self.sink is not None:
                version = session_version(session[-1].ts_ms, True, len(session), 0)
                self.sink.write_session(
                    row["session_id"], feats.to_redis_hash(), status="closed", version=version
                )
                counters = closed_session_counters(row)
                model = row["model_version"]
                counters[model_counter(model, "sessions")] = 1
                counters[model_counter(model, "negative_sessions")] = int(
                    row["negative_feedback_count"] > 0
                )
                counters[model_counter(model, "flagged_sessions")] = int(row["flagged"])
                state.count(counters, epoch=f"close:{row['session_id']}:{row['session_start_ms']}")
            yield Row(
                *[row[name] for name in FEATURE_ROW_NAMES[:-1]], utc_date(row["session_end_ms"])
            )
            if row["flagged"]:
                message = fit_flagged_message(
                    build_flagged_message(session, feats, self.redactor), self.flagged_max_bytes
                )
                yield FLAGGED_TAG, Row(row["session_id"], message.to_json())

    def _register_idle_timer(self, ctx: Any) -> None:
        if not self._bounded:
            timers = ctx.timer_service()
            now = timers.current_processing_time()
            timers.register_processing_time_timer(_even((now // 1000 + 1) * 1000 + self.idle_ms))

    def _register_poll(self, ctx: Any, delay_ms: int) -> None:
        ctx.timer_service().register_processing_time_timer(_odd(_now_ms() + delay_ms))

    def _write_waiting(self, ctx: Any, key: str, state: tracker.TrackerState) -> None:
        """Bring this key's vectors into state and write its open sessions that lacked them.

        Texts the encoder no longer holds (pending texts are not state: after a restore)
        are encoded now.
        """
        self.waiting_by_key.pop(key, None)
        watermark_ms = self._watermark(ctx)
        for session in tracker.open_sessions(state, self.gap_ms):
            if self._missing_vectors(state, session):
                self._collect_vectors(state, session, force=True)
                self._write_open(state, session, watermark_ms)

    # --- Flink callbacks -------------------------------------------------------------------

    def _expire_if_stale(self, key: str, state: tracker.TrackerState) -> bool:
        """Forget a key idle for ``state_ttl`` and count it; whether it was stale."""
        if self._bounded or not tracker.is_stale(state, _now_ms(), self.state_ttl_ms):
            return False
        counts_before = state.counts_version
        counters = tracker.expire(state, self.gap_ms)
        if self.sink is not None:
            state.count(counters, epoch=f"expire:{key}:{state.active_ms}")
            self._add_share(key, state, counts_before)
        return True

    def _touch(self, ctx: Any, state: tracker.TrackerState) -> None:
        """Record activity; a key with nothing open gets a timer to look for staleness.

        A key with open sessions has its chain of idle timers, which looks as well.
        """
        if self._bounded:
            return
        state.active_ms = _now_ms()
        if not state.open_events and not state.is_empty():
            check_ms = tracker.expiry_check_ms(state, self.state_ttl_ms)
            ctx.timer_service().register_processing_time_timer(_even(check_ms))

    def process_element(self, value: tuple[Any, ...], ctx: Any) -> Iterator[Any]:
        event, position = value[0], value[1]  # streaming adds the reader's watermark
        self.last_input_wall_ms = _now_ms()
        state = self._load(event.session_id)
        if self._expire_if_stale(event.session_id, state):
            state = tracker.TrackerState()  # its counter share stays with the old epoch
        counts_before = state.counts_version
        timers_before = self._registered_event_timers(ctx, event.session_id, state)
        watermark_ms = self._watermark(ctx)
        admission = tracker.admit(state, event, watermark_ms, self.gap_ms)
        counters = {"events": 1}
        if admission is tracker.Admission.DUPLICATE:
            counters["duplicates"] = 1
        elif admission is tracker.Admission.LATE:
            counters.update({"dlq": 1, "dlq:late_event": 1})
            error = ParseError(
                "late_event",
                None,
                f"session of {event.session_id} already closed (watermark {watermark_ms})",
                event_id=event.event_id,
                session_id=event.session_id,
            )
            message = build_dlq_message(
                error,
                position.raw,
                source_topic=position.topic,
                source_partition=position.partition,
                source_offset=position.offset,
                rejected_at_ms=_now_ms(),
            )
            yield DLQ_TAG, Row(event.session_id, dlq_message_json(message, len(position.raw)))
        else:
            if isinstance(event, Feedback):
                counters["explicit_signals"] = 1
                if is_negative_feedback(event.kind, event.rating):
                    counters["negative_feedback"] = 1
            batcher = self.batcher
            if batcher is not None and isinstance(event, UserMessage):
                known = batcher.add(event.event_id, event.text, _now_ms())
                if not known and not self._bounded:
                    self.waiting_by_key.setdefault(event.session_id, set()).add(event.event_id)
                    # Look when the vectors should be back, not before: each look is a call.
                    self._register_poll(ctx, batcher.first_look_ms())
            self._register_idle_timer(ctx)
            if self.sink is not None:
                for session in tracker.open_sessions(state, self.gap_ms):
                    if any(e.event_id == event.event_id for e in session):
                        self._write_open(state, session, watermark_ms)
        self._pump_embeddings()
        if self.sink is not None:
            state.count(counters, epoch=f"{event.event_id}@{position.partition}:{position.offset}")
        self._sync_event_timers(ctx, event.session_id, timers_before, state)
        self._touch(ctx, state)
        self._save(event.session_id, state)
        self._add_share(event.session_id, state, counts_before)
        self._flush_redis(ctx)

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Any]:
        key = ctx.get_current_key()
        if ctx.time_domain() == TimeDomain.PROCESSING_TIME:
            if timestamp & 1:
                self._on_poll_timer(timestamp, ctx, key)
                return
            state = self._load(key)
            timers_before = self._registered_event_timers(ctx, key, state)
            if self._expire_if_stale(key, state):
                self._sync_event_timers(ctx, key, timers_before, state)
                self.waiting_by_key.pop(key, None)
                self._save(key, state)  # empty now: cleared
                self._flush_redis(ctx)
                return
            counts_before = state.counts_version
            open_before = len(state.open_events)
            yield from self._on_idle_timer(ctx, key, state)
            if len(state.open_events) != open_before:
                self._touch(ctx, state)  # sessions closed on idle input
        else:
            state = self._load(key)
            counts_before = state.counts_version
            timers_before = self._registered_event_timers(ctx, key, state)
            watermark_ms = self._watermark(ctx)
            yield from self._close(state, watermark_ms)
            if self.sink is not None and state.open_events:
                latest = tracker.open_sessions(state, self.gap_ms)[-1]
                self._write_open(state, latest, watermark_ms)
            self._touch(ctx, state)
        tracker.prune(state, self._watermark(ctx), self.gap_ms)
        self._sync_event_timers(ctx, key, timers_before, state)
        self._save(key, state)
        self._add_share(key, state, counts_before)
        self._flush_redis(ctx)

    # Processing-time timers come in two kinds, told apart by the parity of their time so
    # that one never stands in for the other: even ones drive idle advance, odd ones
    # flush Redis and look for vectors (they must not break a key's chain of idle timers).

    def _on_poll_timer(self, timestamp: int, ctx: Any, key: str) -> None:
        """Flush Redis; once the vectors this key waits for are back, write its hash."""
        if self.flush_timer_ms is not None and timestamp >= self.flush_timer_ms:
            self.flush_timer_ms = None
        self._pump_embeddings()
        waiting = self.waiting_by_key.get(key)
        if waiting:
            # (Membership per id: building a set of the whole batch on every poll of
            # every waiting key took an eighth of the operator's Python time.)
            if any(self.batcher.in_encoder(event_id) for event_id in waiting):
                # Cheap, no state round trip; still, not more often than needed.
                self._register_poll(ctx, self.batcher.next_look_ms(self.poll_ms))
            else:
                state = self._load(key)
                self._write_waiting(ctx, key, state)
                self._save(key, state)
        self._flush_redis(ctx)

    def _on_idle_timer(self, ctx: Any, key: str, state: tracker.TrackerState) -> Iterator[Any]:
        now = _now_ms()
        if now - self.last_input_wall_ms >= self.idle_ms:
            # Idle input: the watermark advances to wall-clock now minus the bound.
            self.idle_watermark_ms = max(self.idle_watermark_ms, now - self.bound_ms - 1)
            yield from self._close(state, self._watermark(ctx))
            if state.open_events:
                ctx.timer_service().register_processing_time_timer(_even(now + self.idle_ms))
        elif state.open_events:
            ctx.timer_service().register_processing_time_timer(
                _even(self.last_input_wall_ms + self.idle_ms + 1)
            )
        if self.batcher is not None and state.open_events:
            if key not in self.waiting_by_key and self._missing_vectors(state, state.open_events):
                # Restored from a checkpoint: the texts in the encoder then were not state.
                self._write_waiting(ctx, key, state)


# Backfill: one JSON Lines line with the file it came from.
RAW_LINE_TYPE = Types.ROW_NAMED(
    ["raw", "topic", "partition", "offset"],
    [Types.STRING(), Types.STRING(), Types.INT(), Types.LONG()],
)
FLAGGED_ROW_TYPE = row_type(FLAGGED_PARQUET_FIELDS, ("dt", "string"))


def flagged_row(value: Row) -> Row:
    """A flagged-session message as a Parquet row: its fields as (nested) columns."""
    message = json.loads(value[1])
    return Row(
        *[flink_value(kind, message.get(name)) for name, kind in FLAGGED_PARQUET_FIELDS],
        utc_date(message["session_end_ms"]),
    )

"""Per-``session_id`` bookkeeping: dedup, late events, session splitting and closing.

Pure Python over event records; the streaming and the backfill job keep one
``TrackerState`` per ``session_id`` in Flink keyed state and call these functions.

Watermarks here follow Flink's convention: ``watermark_ms`` is the highest
``ts_ms`` seen minus ``max_out_of_order_ms`` minus 1, i.e. the latest time at
which no further event is expected. The contract's watermark is one more, so a
session "closes when the watermark passes ``session_end_ms + session_gap``"
exactly when ``watermark_ms >= session_end_ms + session_gap_ms``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from features.compute import open_window_deadlines
from schemas.events import Event


def _order_key(event: Event) -> tuple[int, str]:
    return (event.ts_ms, event.event_id)


class Admission(Enum):
    """What happened to an event offered to a tracker."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    LATE = "late"


@dataclass
class TrackerState:
    """Everything the job keeps for one ``session_id`` (picklable)."""

    open_events: list[Event] = field(default_factory=list)
    seen_event_ts: dict[str, int] = field(default_factory=dict)
    closed_sessions: list[tuple[int, int]] = field(default_factory=list)
    vectors: dict[str, bytes] = field(default_factory=dict)
    # End of the latest closed session; never pruned (only state TTL forgets it): an
    # event less than one gap after it is late however far the watermark has moved on.
    closed_until_ms: int | None = None
    # This key's own share of the online counters, as absolute totals (see
    # ``count``): the online store adds only what changed since the version it holds,
    # so a replay after a restore never counts twice.
    counts: dict[str, int] = field(default_factory=dict)
    counts_version: int = 0
    counts_epoch: str = ""
    # Wall-clock time of this key's last activity (an event, a window or session closed
    # by event time): the state TTL counts from it (see ``is_stale``). 0 = not recorded.
    active_ms: int = 0

    def __setstate__(self, state: dict[str, object]) -> None:
        # States pickled before these fields existed load with none counted, none active.
        self.__dict__.update(
            {"counts": {}, "counts_version": 0, "counts_epoch": "", "active_ms": 0}
        )
        self.__dict__.update(state)

    def count(self, counters: dict[str, int], epoch: str) -> None:
        """Add ``counters`` to this key's totals; ``epoch`` names a fresh state's first
        record (deterministic, so a replay rebuilds the same one)."""
        if not counters:
            return
        if not self.counts_epoch:
            self.counts_epoch = epoch
        for name, value in counters.items():
            self.counts[name] = self.counts.get(name, 0) + value
        self.counts_version += 1

    def is_empty(self) -> bool:
        return not (
            self.open_events
            or self.seen_event_ts
            or self.closed_sessions
            or self.closed_until_ms is not None
        )


def is_stale(state: TrackerState, now_ms: int, state_ttl_ms: int) -> bool:
    """Whether the key saw no activity for ``state_ttl_ms`` of wall-clock time."""
    return state.active_ms > 0 and now_ms - state.active_ms >= state_ttl_ms


def expiry_check_ms(state: TrackerState, state_ttl_ms: int) -> int:
    """Wall-clock time at which to look whether the key went stale (``is_stale``).

    Rounded up to a minute (to a tenth of a short TTL) so that one timer serves all
    activity within it.
    """
    granularity_ms = max(1, min(60_000, state_ttl_ms // 10))
    due = state.active_ms + state_ttl_ms
    return -(-due // granularity_ms) * granularity_ms


def expire(state: TrackerState, session_gap_ms: int) -> dict[str, int]:
    """Forget a stale key's sessions; the counters that record what was forgotten.

    ``expired_session_ids`` counts the key itself, ``expired_open_sessions`` the sessions
    it still had open (never closed: no row, no flagged message). The key's counter
    totals stay: they are already handed to the online store.
    """
    counters = {"expired_session_ids": 1}
    still_open = len(open_sessions(state, session_gap_ms))
    if still_open:
        counters["expired_open_sessions"] = still_open
    state.open_events = []
    state.seen_event_ts = {}
    state.closed_sessions = []
    state.vectors = {}
    state.closed_until_ms = None
    return counters


def split_by_gap(events: list[Event], session_gap_ms: int) -> list[list[Event]]:
    """Split ordered events into sessions: a gap of ``session_gap_ms`` or more starts a new one."""
    sessions: list[list[Event]] = []
    for event in events:
        if sessions and event.ts_ms - sessions[-1][-1].ts_ms < session_gap_ms:
            sessions[-1].append(event)
        else:
            sessions.append([event])
    return sessions


def _session_containing(events: list[Event], event: Event, session_gap_ms: int) -> list[Event]:
    for session in split_by_gap(events, session_gap_ms):
        if any(e.event_id == event.event_id for e in session):
            return session
    raise LookupError(event.event_id)  # pragma: no cover - event was just inserted


def admit(state: TrackerState, event: Event, watermark_ms: int, session_gap_ms: int) -> Admission:
    """Offer one event: count it once, refuse it when its session already closed."""
    if event.event_id in state.seen_event_ts:
        return Admission.DUPLICATE
    if state.closed_until_ms is not None and event.ts_ms < state.closed_until_ms + session_gap_ms:
        # Less than one gap after the latest closed session it would merge into it (or
        # into an earlier closed one). Every open session starts at least one gap after
        # it, so an earlier event cannot chain into one. Checked against this end, not
        # the pruned ``closed_sessions``: a late event could otherwise chain into a
        # session accepted after the prune.
        return Admission.LATE
    candidate = sorted([*state.open_events, event], key=_order_key)
    session = _session_containing(candidate, event, session_gap_ms)
    if watermark_ms >= session[-1].ts_ms + session_gap_ms:
        return Admission.LATE
    state.open_events = candidate
    state.seen_event_ts[event.event_id] = event.ts_ms
    return Admission.ACCEPTED


def open_sessions(state: TrackerState, session_gap_ms: int) -> list[list[Event]]:
    """The sessions not yet closed, oldest first."""
    return split_by_gap(state.open_events, session_gap_ms)


def close_due(state: TrackerState, watermark_ms: int, session_gap_ms: int) -> list[list[Event]]:
    """Remove and return the sessions whose end plus gap the watermark has reached."""
    closed: list[list[Event]] = []
    remaining: list[Event] = []
    for session in split_by_gap(state.open_events, session_gap_ms):
        if watermark_ms >= session[-1].ts_ms + session_gap_ms:
            closed.append(session)
            state.closed_sessions.append((session[0].ts_ms, session[-1].ts_ms))
            if state.closed_until_ms is None or session[-1].ts_ms > state.closed_until_ms:
                state.closed_until_ms = session[-1].ts_ms
        else:
            remaining.extend(session)
    state.open_events = remaining
    return closed


def prune(state: TrackerState, watermark_ms: int, session_gap_ms: int) -> None:
    """Forget closed sessions once any event near them is late by the watermark alone."""
    horizon_ms = watermark_ms - 2 * session_gap_ms
    kept = [(s, e) for s, e in state.closed_sessions if e > horizon_ms]
    if len(kept) == len(state.closed_sessions):
        return
    state.closed_sessions = kept
    open_ids = {e.event_id for e in state.open_events}
    state.seen_event_ts = {
        event_id: ts
        for event_id, ts in state.seen_event_ts.items()
        if event_id in open_ids
        or any(s - session_gap_ms < ts < e + session_gap_ms for s, e in kept)
    }
    state.vectors = {k: v for k, v in state.vectors.items() if k in open_ids}


def next_prune_ms(state: TrackerState, session_gap_ms: int) -> int | None:
    """Watermark at which ``prune`` will next forget something."""
    if not state.closed_sessions:
        return None
    return min(e for _, e in state.closed_sessions) + 2 * session_gap_ms + 1


def event_time_timers(
    state: TrackerState,
    watermark_ms: int,
    session_gap_ms: int,
    *,
    cta_window_ms: int | None = None,
    silence_gap_ms: int | None = None,
) -> set[int]:
    """The event-time timers this state needs after ``watermark_ms``.

    Each open session's close, the next prune and, when window lengths are given (the
    online store shows open sessions), every window deadline that will change an open
    session's values. The job keeps exactly these registered, deleting the ones a new
    event makes unnecessary: a session's earlier ends, a CTA clicked, a message answered.
    """
    timers: set[int] = set()
    for session in open_sessions(state, session_gap_ms):
        timers.add(session[-1].ts_ms + session_gap_ms)
        if cta_window_ms is not None and silence_gap_ms is not None:
            timers.update(open_window_deadlines(session, cta_window_ms, silence_gap_ms))
    prune_at = next_prune_ms(state, session_gap_ms)
    if prune_at is not None:
        timers.add(prune_at)
    return {t for t in timers if t > watermark_ms}

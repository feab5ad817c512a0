"""Session rules of contract section 2: dedup, order, split by inactivity gap."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from schemas.events import Event

E = TypeVar("E", bound=Event)


def order_key(event: Event) -> tuple[int, str]:
    """A session's events are ordered by (ts_ms, event_id)."""
    return (event.ts_ms, event.event_id)


def dedup_and_order(events: Iterable[E]) -> list[E]:
    """Events with distinct event_id (first occurrence kept), sorted by `order_key`."""
    seen: set[str] = set()
    unique: list[E] = []
    for event in events:
        if event.event_id not in seen:
            seen.add(event.event_id)
            unique.append(event)
    unique.sort(key=order_key)
    return unique


def split_ordered(ordered: list[E], gap_ms: int) -> list[list[E]]:
    """Split already deduplicated, ordered events of one session_id at gaps >= `gap_ms`."""
    sessions: list[list[E]] = []
    current: list[E] = []
    previous_ts = 0
    for event in ordered:
        if current and event.ts_ms - previous_ts >= gap_ms:
            sessions.append(current)
            current = []
        current.append(event)
        previous_ts = event.ts_ms
    if current:
        sessions.append(current)
    return sessions


def split_sessions(events: Iterable[E], gap_ms: int = 1_800_000) -> list[list[E]]:
    """Dedup by event_id, group by session_id, order, and split where a gap >= `gap_ms`.

    Returns the sessions ordered by (session_start_ms, session_id); each is a list of
    events in (ts_ms, event_id) order.
    """
    by_session_id: dict[str, list[E]] = {}
    for event in dedup_and_order(events):
        by_session_id.setdefault(event.session_id, []).append(event)
    sessions: list[list[E]] = []
    for ordered in by_session_id.values():
        sessions.extend(split_ordered(ordered, gap_ms))
    sessions.sort(key=lambda s: (s[0].ts_ms, s[0].session_id))
    return sessions

"""features.tracker: dedup, lateness, splitting, closing and pruning of one session_id's events.

Watermarks here follow the tracker's (Flink's) convention: ``watermark_ms`` is the highest
``ts_ms`` seen minus the bound minus 1, so a session closes at ``watermark >= end + gap``.
"""

from __future__ import annotations

import pickle
import random

import pytest

from features import split_sessions, tracker
from features.tracker import Admission, TrackerState
from schemas.events import AssistantMessage, CtaClick, CtaSent, FsmState, UserMessage

GAP = 1_800_000
BOUND = 10_000
NO_WATERMARK = -(2**63)


def msg(event_id: str, ts_ms: int, session_id: str = "s1", text: str = "hi") -> UserMessage:
    return UserMessage(
        event_id=event_id, session_id=session_id, user_id="u1", ts_ms=ts_ms, text=text
    )


def ids(sessions: list[list]) -> list[list[str]]:
    return [[e.event_id for e in s] for s in sessions]


def closed_state(*sessions: list[tuple[str, int]]) -> TrackerState:
    """A state whose given sessions (lists of (id, ts)) have been admitted and closed."""
    state = TrackerState()
    for session in sessions:
        for event_id, ts in session:
            assert tracker.admit(state, msg(event_id, ts), NO_WATERMARK, GAP) is Admission.ACCEPTED
    last_end = max(ts for session in sessions for _, ts in session)
    tracker.close_due(state, last_end + GAP, GAP)
    assert not state.open_events
    return state


# --- admit ---------------------------------------------------------------------------------


def test_first_event_is_accepted_and_remembered() -> None:
    state = TrackerState()
    assert state.is_empty()
    assert tracker.admit(state, msg("a", 1_000), NO_WATERMARK, GAP) is Admission.ACCEPTED
    assert ids([state.open_events]) == [["a"]]
    assert state.seen_event_ts == {"a": 1_000}
    assert not state.is_empty()


def test_out_of_order_events_are_kept_in_ts_then_event_id_order() -> None:
    state = TrackerState()
    for event_id, ts in [("c", 3_000), ("b", 1_000), ("z", 2_000), ("a", 2_000)]:
        assert tracker.admit(state, msg(event_id, ts), NO_WATERMARK, GAP) is Admission.ACCEPTED
    assert [e.event_id for e in state.open_events] == ["b", "a", "z", "c"]


def test_same_event_id_is_a_duplicate_whatever_its_content() -> None:
    state = TrackerState()
    tracker.admit(state, msg("a", 1_000), NO_WATERMARK, GAP)
    assert tracker.admit(state, msg("a", 1_000), NO_WATERMARK, GAP) is Admission.DUPLICATE
    assert (
        tracker.admit(state, msg("a", 5_000, text="other"), NO_WATERMARK, GAP)
        is Admission.DUPLICATE
    )
    assert len(state.open_events) == 1


def test_duplicate_of_a_closed_session_event_is_a_duplicate_not_late() -> None:
    state = closed_state([("a", 0), ("b", 60_000)])
    watermark = 60_000 + GAP
    assert tracker.admit(state, msg("b", 60_000), watermark, GAP) is Admission.DUPLICATE


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (-GAP + 1, Admission.LATE),  # would have merged: gap to the start < session_gap
        (30_000, Admission.LATE),  # inside the closed session
        (60_000 + GAP - 1, Admission.LATE),  # 29:59.999 after its end: would have merged
    ],
)
def test_event_that_would_merge_into_a_closed_session_is_late(ts: int, expected: Admission) -> None:
    state = closed_state([("a", 0), ("b", 60_000)])
    watermark = 60_000 + GAP  # exactly what closed it
    assert tracker.admit(state, msg("x", ts), watermark, GAP) is expected
    assert not state.open_events
    assert "x" not in state.seen_event_ts


def test_event_exactly_one_gap_after_a_closed_session_starts_a_new_session() -> None:
    state = closed_state([("a", 0), ("b", 60_000)])
    watermark = 60_000 + GAP
    new_ts = 60_000 + GAP
    assert tracker.admit(state, msg("x", new_ts), watermark, GAP) is Admission.ACCEPTED
    assert ids(tracker.open_sessions(state, GAP)) == [["x"]]


def test_event_whose_own_session_the_watermark_has_passed_is_late() -> None:
    state = TrackerState()
    watermark = 10 * GAP
    # Alone it would form a session ending at ts; the watermark passed ts + gap.
    assert tracker.admit(state, msg("x", watermark - GAP), watermark, GAP) is Admission.LATE
    assert tracker.admit(state, msg("y", watermark - GAP + 1), watermark, GAP) is Admission.ACCEPTED


def test_event_behind_the_watermark_that_extends_an_open_session_is_accepted() -> None:
    state = TrackerState()
    tracker.admit(state, msg("a", 0), NO_WATERMARK, GAP)
    tracker.admit(state, msg("b", 100_000), NO_WATERMARK, GAP)
    watermark = 100_000 + GAP - 1  # the session is still open
    assert tracker.admit(state, msg("c", 50_000), watermark, GAP) is Admission.ACCEPTED
    assert ids(tracker.open_sessions(state, GAP)) == [["a", "c", "b"]]


def test_event_bridging_two_open_sessions_merges_them() -> None:
    state = TrackerState()
    tracker.admit(state, msg("a", 0), NO_WATERMARK, GAP)
    tracker.admit(state, msg("b", 3 * GAP // 2), NO_WATERMARK, GAP)
    assert ids(tracker.open_sessions(state, GAP)) == [["a"], ["b"]]
    tracker.admit(state, msg("m", 3 * GAP // 4), NO_WATERMARK, GAP)
    assert ids(tracker.open_sessions(state, GAP)) == [["a", "m", "b"]]


# --- split / close ---------------------------------------------------------------------------


def test_split_by_gap_splits_at_exactly_the_gap_not_one_ms_before() -> None:
    events = [msg("a", 0), msg("b", GAP - 1), msg("c", 2 * GAP - 1), msg("d", 3 * GAP - 1 + 1)]
    assert ids(tracker.split_by_gap(events, GAP)) == [["a", "b"], ["c"], ["d"]]
    assert ids(tracker.split_by_gap([], GAP)) == []


def test_close_due_closes_when_the_watermark_reaches_end_plus_gap() -> None:
    state = TrackerState()
    for event_id, ts in [("a", 0), ("b", 5_000)]:
        tracker.admit(state, msg(event_id, ts), NO_WATERMARK, GAP)
    assert tracker.close_due(state, 5_000 + GAP - 1, GAP) == []
    assert ids([state.open_events]) == [["a", "b"]]
    closed = tracker.close_due(state, 5_000 + GAP, GAP)
    assert ids(closed) == [["a", "b"]]
    assert state.open_events == []
    assert state.closed_sessions == [(0, 5_000)]
    assert tracker.close_due(state, 10 * GAP, GAP) == []  # closes once


def test_close_due_closes_only_the_older_of_two_open_sessions() -> None:
    state = TrackerState()
    for event_id, ts in [("a", 0), ("b", 2 * GAP), ("c", 2 * GAP + 10)]:
        tracker.admit(state, msg(event_id, ts), NO_WATERMARK, GAP)
    closed = tracker.close_due(state, 2 * GAP, GAP)
    assert ids(closed) == [["a"]]
    assert ids(tracker.open_sessions(state, GAP)) == [["b", "c"]]
    assert state.closed_sessions == [(0, 0)]


def test_contract_watermark_passing_end_plus_gap_is_the_tracker_watermark_reaching_it() -> None:
    # Contract: watermark = max ts - bound; closes when it *passes* end + gap.
    # Tracker (Flink): watermark = max ts - bound - 1; closes at watermark >= end + gap.
    end = 1_000_000
    state = TrackerState()
    tracker.admit(state, msg("a", end), NO_WATERMARK, GAP)
    max_ts_at_boundary = end + GAP + BOUND  # contract watermark == end + gap: not passed
    assert tracker.close_due(state, max_ts_at_boundary - BOUND - 1, GAP) == []
    assert ids(tracker.close_due(state, max_ts_at_boundary + 1 - BOUND - 1, GAP)) == [["a"]]


# --- prune -------------------------------------------------------------------------------------


def test_prune_keeps_a_closed_session_until_two_gaps_after_its_end() -> None:
    state = closed_state([("a", 0), ("b", 1_000)])
    tracker.prune(state, 1_000 + 2 * GAP - 1, GAP)
    assert state.closed_sessions == [(0, 1_000)]
    assert set(state.seen_event_ts) == {"a", "b"}
    assert tracker.next_prune_ms(state, GAP) is not None
    assert tracker.next_prune_ms(state, GAP) >= 1_000 + 2 * GAP
    tracker.prune(state, tracker.next_prune_ms(state, GAP), GAP)
    assert state.closed_sessions == []
    assert state.seen_event_ts == {}
    assert tracker.next_prune_ms(state, GAP) is None
    # Only the end of the latest closed session is kept (until the state's TTL).
    assert state.closed_until_ms == 1_000
    assert not state.is_empty()


def test_after_prune_an_event_of_the_forgotten_session_is_still_late() -> None:
    state = closed_state([("a", 0), ("b", 1_000)])
    watermark = 1_000 + 2 * GAP + 1
    tracker.prune(state, watermark, GAP)
    assert state.closed_sessions == [] and state.seen_event_ts == {}
    for ts in (-GAP, 0, 500, 1_000 + GAP - 1):
        assert tracker.admit(state, msg(f"late-{ts}", ts), watermark, GAP) is Admission.LATE
    # A re-delivered duplicate of a forgotten event is refused too (as late, never merged).
    assert tracker.admit(state, msg("b", 1_000), watermark, GAP) is Admission.LATE
    assert state.open_events == []


def test_late_event_cannot_chain_into_a_session_accepted_after_the_prune() -> None:
    # Found by test_pruning_never_changes_...: closed session at 0, pruned; then a
    # session starting 1.33 gaps after it is (rightly) accepted; then an event 0.5 gaps
    # after the closed one arrives (within a gap of both). It would merge into the closed
    # session: late. It must not be merged into the open one through the gap it bridges.
    state = closed_state([("a", 0)])
    watermark = 2 * GAP + GAP // 3
    tracker.prune(state, watermark, GAP)
    later_ts = GAP + GAP // 3 + 1
    assert tracker.admit(state, msg("later", later_ts), watermark, GAP) is Admission.ACCEPTED
    assert tracker.admit(state, msg("bridge", GAP // 2), watermark, GAP) is Admission.LATE
    assert ids(tracker.open_sessions(state, GAP)) == [["later"]]


def test_prune_keeps_what_open_sessions_and_recent_closed_sessions_need() -> None:
    state = closed_state([("a", 0)], [("b", 3 * GAP)])
    tracker.admit(state, msg("c", 6 * GAP), 3 * GAP + GAP, GAP)
    tracker.prune(state, 3 * GAP + GAP + 1, GAP)  # forgets (0, 0) only
    assert state.closed_sessions == [(3 * GAP, 3 * GAP)]
    assert set(state.seen_event_ts) == {"b", "c"}
    assert ids([state.open_events]) == [["c"]]


def test_state_pickles_round_trip() -> None:
    state = closed_state([("a", 0)])
    tracker.admit(state, msg("z", 5 * GAP), GAP, GAP)
    state.vectors["z"] = b"\x00\x01"
    copy = pickle.loads(pickle.dumps(state))
    assert copy == state


# --- streams --------------------------------------------------------------------------------


def _random_events(rng: random.Random, count: int) -> list:
    ts = 0
    events = []
    for n in range(count):
        ts += rng.choice([0, 1, 1_000, 60_000, 600_000, GAP - 1, GAP, GAP + 1, 3 * GAP])
        kind = rng.random()
        if kind < 0.6:
            events.append(msg(f"e{n:04d}", ts))
        elif kind < 0.8:
            events.append(
                FsmState(
                    event_id=f"e{n:04d}", session_id="s1", user_id="u1", ts_ms=ts, to_state="x"
                )
            )
        else:
            events.append(
                CtaClick(event_id=f"e{n:04d}", session_id="s1", user_id="u1", ts_ms=ts, cta_id="c")
            )
    return events


def _simulate(deliveries: list, *, prune: bool) -> tuple[list[Admission], list[list[str]]]:
    """The job's use of the tracker: admit, then close and prune as the watermark advances."""
    state = TrackerState()
    watermark = NO_WATERMARK
    admissions = []
    closed: list[list[str]] = []
    for event in deliveries:
        admissions.append(tracker.admit(state, event, watermark, GAP))
        watermark = max(watermark, event.ts_ms - BOUND - 1)
        closed += ids(tracker.close_due(state, watermark, GAP))
        if prune:
            tracker.prune(state, watermark, GAP)
        state = pickle.loads(pickle.dumps(state))  # as Flink state would
    closed += ids(tracker.close_due(state, 2**62, GAP))
    return admissions, closed


@pytest.mark.parametrize("seed", range(25))
def test_stream_within_the_bound_gives_the_batch_sessions(seed: int) -> None:
    rng = random.Random(seed)
    events = _random_events(rng, 120)
    # Out of order by less than the bound, and ~10% delivered twice.
    keyed = [(e.ts_ms + rng.randrange(BOUND), n, e) for n, e in enumerate(events)]
    keyed += [
        (e.ts_ms + rng.randrange(BOUND), n, e) for n, e in enumerate(events) if rng.random() < 0.1
    ]
    deliveries = [e for _, _, e in sorted(keyed, key=lambda k: (k[0], k[1]))]

    admissions, closed = _simulate(deliveries, prune=True)

    assert Admission.LATE not in admissions
    assert admissions.count(Admission.DUPLICATE) == len(deliveries) - len(events)
    assert sorted(closed) == sorted(ids(split_sessions(events, GAP)))


@pytest.mark.parametrize("seed", range(25))
def test_pruning_never_changes_what_is_accepted_refused_or_closed(seed: int) -> None:
    rng = random.Random(1_000 + seed)
    events = _random_events(rng, 150)
    # Wildly out of order (late events) and duplicates, some far behind.
    deliveries = list(events) + rng.sample(events, 20)
    for _ in range(40):
        i, j = rng.randrange(len(deliveries)), rng.randrange(len(deliveries))
        deliveries[i], deliveries[j] = deliveries[j], deliveries[i]

    with_prune = _simulate(deliveries, prune=True)
    without_prune = _simulate(deliveries, prune=False)

    # A re-delivery of an event forgotten by prune is refused as late instead of as a
    # duplicate: refused either way, never merged. Everything else is the same.
    seen: set[str] = set()
    for event, pruned, kept in zip(deliveries, with_prune[0], without_prune[0], strict=False):
        if event.event_id in seen and kept is Admission.DUPLICATE:
            assert pruned in (Admission.DUPLICATE, Admission.LATE)
        else:
            assert pruned is kept, event
        seen.add(event.event_id)
    assert with_prune[1] == without_prune[1]
    accepted = [
        e.event_id
        for e, a in zip(deliveries, with_prune[0], strict=False)
        if a is Admission.ACCEPTED
    ]
    assert len(accepted) == len(set(accepted))
    assert sorted(i for s in with_prune[1] for i in s) == sorted(accepted)


# --- event-time timers ---------------------------------------------------------------------

CTA_WINDOW = 600_000
SILENCE = 300_000


def _admit_all(state: TrackerState, *events: object) -> None:
    for event in events:
        assert tracker.admit(state, event, NO_WATERMARK, GAP) is Admission.ACCEPTED  # type: ignore[arg-type]


def _reply(event_id: str, ts_ms: int) -> AssistantMessage:
    return AssistantMessage(
        event_id=event_id, session_id="s1", user_id="u1", ts_ms=ts_ms, text="ok"
    )


def _cta(event_id: str, ts_ms: int, cta_id: str = "c1") -> CtaSent:
    return CtaSent(event_id=event_id, session_id="s1", user_id="u1", ts_ms=ts_ms, cta_id=cta_id)


def _click(event_id: str, ts_ms: int, cta_id: str = "c1") -> CtaClick:
    return CtaClick(event_id=event_id, session_id="s1", user_id="u1", ts_ms=ts_ms, cta_id=cta_id)


def timers(state: TrackerState, watermark_ms: int = NO_WATERMARK, windows: bool = True) -> set[int]:
    return tracker.event_time_timers(
        state,
        watermark_ms,
        GAP,
        cta_window_ms=CTA_WINDOW if windows else None,
        silence_gap_ms=SILENCE if windows else None,
    )


def test_only_the_latest_end_of_a_session_needs_a_close_timer() -> None:
    state = TrackerState()
    _admit_all(state, msg("a", 1_000), msg("b", 2_000), msg("c", 3_000))
    assert timers(state, windows=False) == {3_000 + GAP}


def test_each_open_session_of_a_reused_id_has_its_close_timer() -> None:
    state = TrackerState()
    _admit_all(state, msg("a", 1_000), msg("b", 1_000 + GAP))
    assert timers(state, windows=False) == {1_000 + GAP, 1_000 + 2 * GAP}


def test_unanswered_reply_and_unclicked_cta_need_their_deadlines() -> None:
    state = TrackerState()
    _admit_all(state, msg("a", 1_000), _reply("b", 2_000), _cta("c", 3_000))
    assert timers(state) == {3_000 + GAP, 2_000 + SILENCE, 3_000 + CTA_WINDOW}


def test_a_reply_answered_in_time_and_a_cta_clicked_in_time_need_no_timer() -> None:
    state = TrackerState()
    _admit_all(
        state,
        _reply("a", 1_000),
        msg("b", 1_000 + SILENCE),  # inclusive window end
        _cta("c", 2_000),
        _click("d", 2_000 + CTA_WINDOW),
    )
    assert timers(state) == {2_000 + CTA_WINDOW + GAP}


def test_an_answer_or_click_after_the_window_keeps_the_deadline() -> None:
    state = TrackerState()
    _admit_all(
        state,
        _reply("a", 1_000),
        msg("b", 1_001 + SILENCE),
        _cta("c", 2_000),
        _click("d", 2_001 + CTA_WINDOW, cta_id="c1"),
    )
    assert timers(state) == {1_000 + SILENCE, 2_000 + CTA_WINDOW, 2_001 + CTA_WINDOW + GAP}


def test_a_click_on_another_cta_does_not_count() -> None:
    state = TrackerState()
    _admit_all(state, _cta("c", 2_000, cta_id="c1"), _click("d", 3_000, cta_id="c2"))
    assert 2_000 + CTA_WINDOW in timers(state)


def test_timers_at_or_before_the_watermark_are_left_out() -> None:
    state = TrackerState()
    _admit_all(state, _reply("a", 1_000), msg("b", 2_000))
    assert 2_000 + GAP in timers(state, watermark_ms=2_000 + GAP - 1)
    assert timers(state, watermark_ms=2_000 + GAP) == set()


def test_a_closed_session_asks_for_its_prune_timer() -> None:
    state = closed_state([("a", 1_000)])
    assert timers(state, windows=False) == {1_000 + 2 * GAP + 1}


# --- state TTL: keys idle for state_ttl are forgotten, and counted ----------------------

TTL = 2 * 24 * 3_600_000
NOW = 1_772_359_200_000  # a wall-clock time


def test_a_key_is_stale_exactly_state_ttl_after_its_last_activity() -> None:
    state = closed_state([("a", 1_000)])
    state.active_ms = NOW
    assert not tracker.is_stale(state, NOW + TTL - 1, TTL)
    assert tracker.is_stale(state, NOW + TTL, TTL)


def test_a_state_without_recorded_activity_is_never_stale() -> None:
    # Pickled before active_ms existed: it gets a time at its next activity.
    assert not tracker.is_stale(closed_state([("a", 1_000)]), NOW + 10 * TTL, TTL)
    old = pickle.loads(pickle.dumps(closed_state([("a", 1_000)])))
    del old.__dict__["active_ms"]
    assert pickle.loads(pickle.dumps(old)).active_ms == 0


def test_the_staleness_check_is_at_or_after_the_ttl_rounded_to_the_minute() -> None:
    state = TrackerState(active_ms=NOW + 1)
    check = tracker.expiry_check_ms(state, TTL)
    assert check % 60_000 == 0 and NOW + 1 + TTL <= check < NOW + 1 + TTL + 60_000
    assert tracker.expiry_check_ms(TrackerState(active_ms=NOW), TTL) == NOW + TTL


def test_expire_counts_the_key_and_its_open_sessions_and_keeps_the_counters() -> None:
    state = closed_state([("a", 1_000)])
    _admit_all(state, msg("b", 10 * GAP), msg("c", 10 * GAP + 5), msg("d", 20 * GAP))
    state.count({"events": 4}, epoch="a@0:0")
    assert tracker.expire(state, GAP) == {"expired_session_ids": 1, "expired_open_sessions": 2}
    assert state.is_empty() and state.counts == {"events": 4}


def test_expire_of_a_key_with_only_closed_sessions_counts_no_open_session() -> None:
    state = closed_state([("a", 1_000)])
    assert tracker.expire(state, GAP) == {"expired_session_ids": 1}
    # Forgotten: an event of the closed session's time is accepted as new, not late.
    assert tracker.admit(state, msg("z", 1_500), NO_WATERMARK, GAP) is Admission.ACCEPTED

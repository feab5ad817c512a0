"""compute_features and sessions, with literal events for every edge case of the contract."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest

from features import (
    FEATURE_COLUMNS,
    FeatureConfig,
    RuleSet,
    SessionFeatures,
    compute_features,
    order_key,
    split_sessions,
)
from schemas import (
    AssistantMessage,
    CartAdd,
    CtaClick,
    CtaSent,
    Event,
    Feedback,
    FsmState,
    Order,
    UserMessage,
    validation_errors,
)

T0 = 1_700_000_000_000
SEC = 1_000
MIN = 60 * SEC
CONFIG = FeatureConfig()
RULES = RuleSet.default()


class Session:
    """Builds one session's events with readable offsets from T0 and unique ids."""

    def __init__(self, session_id: str = "s-1", user_id: str = "u-1") -> None:
        self.session_id = session_id
        self.user_id = user_id
        self.events: list[Event] = []

    def _env(self, at_ms: int, event_id: str | None) -> dict[str, Any]:
        return {
            "event_id": event_id or f"e{len(self.events):04d}",
            "session_id": self.session_id,
            "user_id": self.user_id,
            "ts_ms": T0 + at_ms,
        }

    def add(self, event: Event) -> Event:
        self.events.append(event)
        return event

    def user(
        self, at_ms: int, text: str = "hello", event_id: str | None = None, **kw: Any
    ) -> Event:
        return self.add(UserMessage(**self._env(at_ms, event_id), text=text, **kw))

    def assistant(
        self, at_ms: int, text: str = "Hi! How can I help?", event_id: str | None = None, **kw: Any
    ) -> Event:
        return self.add(AssistantMessage(**self._env(at_ms, event_id), text=text, **kw))

    def cta_sent(self, at_ms: int, cta_id: str = "c1", event_id: str | None = None) -> Event:
        return self.add(CtaSent(**self._env(at_ms, event_id), cta_id=cta_id))

    def cta_click(self, at_ms: int, cta_id: str = "c1", event_id: str | None = None) -> Event:
        return self.add(CtaClick(**self._env(at_ms, event_id), cta_id=cta_id))

    def cart(self, at_ms: int) -> Event:
        return self.add(CartAdd(**self._env(at_ms, None), sku="sku"))

    def order(self, at_ms: int) -> Event:
        return self.add(Order(**self._env(at_ms, None), order_id="o"))

    def fsm(self, at_ms: int, to_state: str) -> Event:
        return self.add(FsmState(**self._env(at_ms, None), to_state=to_state))

    def feedback(self, at_ms: int, kind: str, rating: int | None = None) -> Event:
        return self.add(Feedback(**self._env(at_ms, None), kind=kind, rating=rating))

    def features(self, config: FeatureConfig = CONFIG, **kw: Any) -> SessionFeatures:
        return compute_features(self.events, config, RULES, **kw)


# --------------------------------------------------------------------------- basics


def test_columns_in_contract_order_and_row_validates() -> None:
    s = Session()
    s.user(0, "Is shipping free?", intent_confidence=0.9)
    s.assistant(SEC, model_version="m-1")
    f = s.features()
    row = f.to_row()
    assert tuple(row) == FEATURE_COLUMNS
    assert validation_errors("feature_row.v1", row) == []
    assert (f.session_id, f.user_id, f.session_start_ms, f.session_end_ms) == (
        "s-1", "u-1", T0, T0 + SEC,
    )  # fmt: skip
    assert (f.event_count, f.user_turns, f.assistant_turns) == (2, 1, 1)


def test_user_id_of_first_event_and_out_of_order_input_is_sorted() -> None:
    s = Session()
    late = s.add(
        UserMessage(
            event_id="b", session_id="s-1", user_id="u-late", ts_ms=T0 + 5 * SEC, text="second"
        )
    )
    early = s.add(
        UserMessage(event_id="a", session_id="s-1", user_id="u-early", ts_ms=T0, text="first")
    )
    f = s.features()
    assert f.user_id == "u-early"
    assert f.session_start_ms == T0 and f.session_end_ms == T0 + 5 * SEC
    assert compute_features([early, late], CONFIG, RULES) == f


def test_duplicates_count_once() -> None:
    s = Session()
    s.user(0, "hi")
    s.cta_sent(SEC)
    s.feedback(2 * SEC, "thumbs_down")
    f = compute_features(s.events * 3, CONFIG, RULES)
    assert f == s.features()
    assert (f.event_count, f.user_turns, f.cta_sent_count, f.negative_feedback_count) == (
        3, 1, 1, 1,
    )  # fmt: skip


def test_ties_on_ts_are_ordered_by_event_id() -> None:
    s = Session()
    s.user(0, "first", event_id="b")
    s.user(0, "second", event_id="a")
    events = sorted(s.events, key=order_key)
    assert [e.event_id for e in events] == ["a", "b"]


def test_empty_and_mixed_sessions_are_errors() -> None:
    with pytest.raises(ValueError, match="at least one event"):
        compute_features([], CONFIG, RULES)
    s = Session()
    s.user(0)
    other = Session(session_id="s-2")
    other.user(SEC, event_id="other")
    with pytest.raises(ValueError, match="more than one session_id"):
        compute_features(s.events + other.events, CONFIG, RULES)


def test_rules_none_gives_no_reasons() -> None:
    s = Session()
    s.feedback(0, "thumbs_down")
    f = compute_features(s.events, CONFIG, None)
    assert f.reasons == () and not f.flagged
    assert s.features().reasons == ("explicit_negative",) and s.features().flagged


# --------------------------------------------------------------------------- sessions


def test_gap_of_exactly_session_gap_starts_new_session() -> None:
    s = Session()
    s.user(0)
    s.user(30 * MIN)
    sessions = split_sessions(s.events, CONFIG.session_gap_ms)
    assert [len(x) for x in sessions] == [1, 1]
    assert sessions[1][0].session_id == sessions[0][0].session_id


def test_gap_just_under_session_gap_stays_one_session() -> None:
    s = Session()
    s.user(0)
    s.user(30 * MIN - 1)
    assert [len(x) for x in split_sessions(s.events, CONFIG.session_gap_ms)] == [2]


def test_split_sessions_dedups_orders_and_groups_by_session_id() -> None:
    a = Session("s-a")
    a.user(40 * MIN, event_id="a3")
    a.user(0, event_id="a1")
    a.user(MIN, event_id="a2")
    b = Session("s-b")
    b.user(30 * SEC, event_id="b1")
    events = [a.events[0], b.events[0], a.events[1], a.events[2], a.events[1]]
    sessions = split_sessions(events, CONFIG.session_gap_ms)
    assert [[e.event_id for e in x] for x in sessions] == [["a1", "a2"], ["b1"], ["a3"]]
    assert split_sessions([], CONFIG.session_gap_ms) == []


# --------------------------------------------------------------------------- CTA


def test_click_exactly_at_window_end_counts() -> None:
    s = Session()
    s.cta_sent(0)
    s.cta_click(10 * MIN)
    f = s.features()
    assert (f.cta_sent_count, f.cta_clicked_count, f.cta_not_clicked_count) == (1, 1, 0)


def test_click_one_ms_after_window_does_not_count() -> None:
    s = Session()
    s.cta_sent(0)
    s.cta_click(10 * MIN + 1)
    f = s.features()
    assert (f.cta_clicked_count, f.cta_not_clicked_count) == (0, 1)
    assert f.reasons == ("cta_ignored",)


def test_click_must_match_cta_id_and_come_after_the_send() -> None:
    s = Session()
    s.cta_click(0, "c1")  # before the send
    s.cta_sent(SEC, "c1")
    s.cta_click(2 * SEC, "other")
    f = s.features()
    assert (f.cta_clicked_count, f.cta_not_clicked_count) == (0, 1)
    assert not f.no_conversion  # a click (any) means conversion activity


def test_click_at_same_ms_counts_only_after_send_in_event_order() -> None:
    s = Session()
    s.cta_sent(0, event_id="e2")
    s.cta_click(0, event_id="e1")  # same ts, ordered before the send
    assert s.features().cta_clicked_count == 0
    s = Session()
    s.cta_sent(0, event_id="e1")
    s.cta_click(0, event_id="e2")
    assert s.features().cta_clicked_count == 1


def test_one_click_satisfies_several_sends() -> None:
    s = Session()
    s.cta_sent(0)
    s.cta_sent(MIN)
    s.cta_click(2 * MIN)
    s.cta_sent(3 * MIN)  # after the click: not clicked
    f = s.features()
    assert (f.cta_sent_count, f.cta_clicked_count, f.cta_not_clicked_count) == (3, 2, 1)


def test_cta_window_is_configurable() -> None:
    s = Session()
    s.cta_sent(0)
    s.cta_click(MIN)
    assert s.features(replace(CONFIG, cta_window_ms=MIN - 1)).cta_clicked_count == 0


def test_open_session_cta_not_clicked_only_after_window_expired() -> None:
    s = Session()
    s.cta_sent(0)
    f = s.features(as_of_ms=T0 + 10 * MIN - 1)
    assert (f.cta_clicked_count, f.cta_not_clicked_count) == (0, 0)
    assert "cta_ignored" not in f.reasons
    f = s.features(as_of_ms=T0 + 10 * MIN)
    assert (f.cta_clicked_count, f.cta_not_clicked_count) == (0, 1)
    assert f.reasons == ("cta_ignored",)
    assert s.features() == f  # closed


def test_cta_ignored_needs_no_order() -> None:
    s = Session()
    s.cta_sent(0)
    s.cart(MIN)
    f = s.features()
    assert f.carted and not f.no_order and f.cta_not_clicked_count == 1
    assert "cta_ignored" not in f.reasons


# --------------------------------------------------------------------------- conversion


def test_conversion_flags() -> None:
    s = Session()
    s.user(0)
    f = s.features()
    assert (f.carted, f.no_order, f.no_conversion, f.order_count) == (False, True, True, 0)
    s.order(SEC)
    f = s.features()
    assert (f.carted, f.no_order, f.no_conversion, f.order_count) == (False, False, False, 1)
    s = Session()
    s.cta_click(0)
    f = s.features()
    assert (f.no_order, f.no_conversion) == (True, False)


# --------------------------------------------------------------------------- silence


def test_user_reply_exactly_at_silence_gap_is_not_silence() -> None:
    s = Session()
    s.assistant(0)
    s.user(5 * MIN)
    assert s.features().long_silence_count == 0


def test_user_reply_one_ms_after_silence_gap_is_silence() -> None:
    s = Session()
    s.assistant(0)
    s.user(5 * MIN + 1)
    f = s.features()
    assert f.long_silence_count == 1
    assert f.reasons == ("abandoned",)


def test_user_message_at_same_ts_does_not_answer() -> None:
    s = Session()
    s.assistant(0, event_id="e1")
    s.user(0, event_id="e2")
    assert s.features().long_silence_count == 1


def test_last_assistant_message_of_closed_session_is_silence() -> None:
    s = Session()
    s.user(0)
    s.assistant(SEC)
    s.user(2 * SEC)
    s.assistant(3 * SEC)
    assert s.features().long_silence_count == 1


def test_open_session_silence_only_after_gap_expired() -> None:
    s = Session()
    s.assistant(0)
    assert s.features(as_of_ms=T0 + 5 * MIN - 1).long_silence_count == 0
    assert s.features(as_of_ms=T0 + 5 * MIN).long_silence_count == 1


def test_abandoned_needs_no_conversion() -> None:
    s = Session()
    s.assistant(0)
    s.cta_click(SEC)
    f = s.features()
    assert f.long_silence_count == 1 and "abandoned" not in f.reasons


# --------------------------------------------------------------------------- repeats


def test_texts_equal_after_normalization_repeat() -> None:
    s = Session()
    s.user(0, "Free shipping?")
    s.user(SEC, "free  shipping!!")
    assert s.features().repeated_question_count == 1


def test_repeat_lookback_is_three_user_messages() -> None:
    s = Session()
    s.user(0, "free shipping?")
    for i, text in enumerate(["a", "b", "c"], start=1):
        s.user(i * SEC, text)
    s.assistant(5 * SEC)  # assistant messages are not in the lookback
    s.user(6 * SEC, "Free shipping")  # 4 user messages back: not compared
    assert s.features().repeated_question_count == 0
    s = Session()
    s.user(0, "free shipping?")
    s.user(SEC, "a")
    s.user(2 * SEC, "b")
    s.assistant(3 * SEC)
    s.user(4 * SEC, "Free shipping")  # 3 user messages back
    assert s.features().repeated_question_count == 1


def test_each_repeating_message_counts_once() -> None:
    s = Session()
    for i in range(4):
        s.user(i * SEC, "again?")
    assert s.features().repeated_question_count == 3


def test_texts_that_normalize_to_empty_are_equal() -> None:
    s = Session()
    s.user(0, "👍")
    s.user(SEC, "!!")
    assert s.features().repeated_question_count == 1


def test_embedding_similarity_at_threshold_counts() -> None:
    s = Session()
    a = s.user(0, "Do you ship to Canada?")
    b = s.user(SEC, "Can I get it delivered in Toronto?")
    other = math.sqrt(1 - 0.85**2)
    vectors = {a.event_id: [1.0, 0.0], b.event_id: [0.85, other]}
    assert s.features(embeddings=vectors).repeated_question_count == 1
    below = {a.event_id: [1.0, 0.0], b.event_id: [0.8499, math.sqrt(1 - 0.8499**2)]}
    assert s.features(embeddings=below).repeated_question_count == 0
    assert s.features().repeated_question_count == 0  # embeddings=None: equality only
    assert s.features(embeddings={a.event_id: [1.0, 0.0]}).repeated_question_count == 0


def test_embeddings_as_tuples_and_numpy_arrays() -> None:
    np = pytest.importorskip("numpy")
    s = Session()
    a = s.user(0, "x")
    b = s.user(SEC, "y")
    for make in (tuple, np.array):
        vectors = {a.event_id: make([0.6, 0.8]), b.event_id: make([0.6, 0.8])}
        assert s.features(embeddings=vectors).repeated_question_count == 1


# --------------------------------------------------------------------------- FSM


def test_fsm_transitions_and_self_transitions() -> None:
    s = Session()
    s.fsm(0, "greet")
    s.fsm(SEC, "greet")  # self-transition: not counted
    s.fsm(2 * SEC, "qualify")
    s.fsm(3 * SEC, "qualify")
    f = s.features()
    assert (f.fsm_transitions, f.fsm_state_final) == (2, "qualify")


def test_fsm_initial_empty_state_to_empty_is_not_a_transition() -> None:
    s = Session()
    s.fsm(0, "")
    f = s.features()
    assert (f.fsm_transitions, f.fsm_state_final) == (0, "")


def test_stall_exactly_stall_turns_flags() -> None:
    s = Session()
    s.fsm(0, "greet")
    for i in range(1, 4):
        s.user(i * SEC, f"question {i}")
    f = s.features()
    assert (f.max_stall_turns, f.fsm_stalled) == (3, True)


def test_stall_below_threshold_does_not_flag() -> None:
    s = Session()
    s.fsm(0, "greet")
    s.user(SEC, "q1")
    s.user(2 * SEC, "q2")
    s.fsm(3 * SEC, "qualify")  # resets the counter
    s.user(4 * SEC, "q3")
    s.user(5 * SEC, "q4")
    f = s.features()
    assert (f.max_stall_turns, f.fsm_stalled) == (2, False)


def test_self_transition_does_not_reset_stall() -> None:
    s = Session()
    s.fsm(0, "greet")
    s.user(SEC, "q1")
    s.user(2 * SEC, "q2")
    s.fsm(3 * SEC, "greet")
    s.user(4 * SEC, "q3")
    f = s.features()
    assert (f.max_stall_turns, f.fsm_stalled, f.fsm_transitions) == (3, True, 1)


def test_stall_counts_before_first_state_and_zero_without_user_messages() -> None:
    s = Session()
    s.assistant(0)
    assert s.features().max_stall_turns == 0
    s.user(SEC, "a")
    s.user(2 * SEC, "b")
    s.user(3 * SEC, "c")
    assert s.features().max_stall_turns == 3


def test_stuck_loop_rule() -> None:
    s = Session()
    s.fsm(0, "qualify")
    s.user(SEC, "Free shipping?")
    s.user(2 * SEC, "free shipping")
    s.user(3 * SEC, "FREE SHIPPING!!!")
    s.order(4 * SEC)  # keeps other rules quiet
    f = s.features()
    assert f.repeated_question_count == 2 and f.fsm_stalled
    assert f.reasons == ("stuck_loop",)


# --------------------------------------------------------------------------- confidence


def test_confidence_at_threshold_is_not_low() -> None:
    s = Session()
    s.user(0, "a", intent_confidence=0.6)
    s.user(SEC, "b", intent_confidence=0.59)
    s.user(2 * SEC, "c")
    f = s.features()
    assert f.low_confidence_count == 1
    assert f.min_intent_confidence == 0.59


def test_min_confidence_null_when_none() -> None:
    s = Session()
    s.user(0, "a")
    f = s.features()
    assert f.min_intent_confidence is None
    assert f.to_redis_hash()["min_intent_confidence"] == ""
    assert f.to_row()["min_intent_confidence"] is None


def test_min_confidence_zero_is_kept() -> None:
    s = Session()
    s.user(0, "a", intent_confidence=0.3)
    s.user(SEC, "b", intent_confidence=0)
    assert s.features().min_intent_confidence == 0


# --------------------------------------------------------------------------- corrections


def test_correction_after_assistant_message() -> None:
    s = Session()
    s.user(0, "red shoes", intent_confidence=0.4)
    s.assistant(SEC, "Here are blue shoes")
    s.cta_sent(2 * SEC)  # not a message: the previous *message* is still the assistant's
    s.user(3 * SEC, "That’s not what I asked")
    s.order(4 * SEC)
    f = s.features()
    assert f.correction_count == 1
    assert f.reasons == ("uncertain_and_corrected",)  # the order means no cta_ignored


def test_correction_needs_previous_message_to_be_assistant() -> None:
    s = Session()
    s.assistant(0)
    s.user(SEC, "red")
    s.user(2 * SEC, "wrong, I meant green")  # previous message is the user's own
    s.user(3 * SEC, "actually")  # same
    assert s.features().correction_count == 0
    s = Session()
    s.user(0, "wrong")  # no previous message at all
    assert s.features().correction_count == 0


def test_correction_false_friends_do_not_count() -> None:
    s = Session()
    for i, text in enumerate(["I was wrongly charged", "factually", "是不是包邮"]):
        s.assistant(2 * i * SEC)
        s.user((2 * i + 1) * SEC, text)
    assert s.features().correction_count == 0
    s.assistant(10 * SEC)
    s.user(11 * SEC, "i meant the other one")
    s.assistant(12 * SEC)
    s.user(13 * SEC, "不对")
    assert s.features().correction_count == 2


def test_uncertain_and_corrected_rule() -> None:
    s = Session()
    s.user(0, "red shoes", intent_confidence=0.4)
    s.assistant(SEC, "Here are blue shoes")
    s.user(2 * SEC, "No, that is not it")
    s.order(3 * SEC)
    f = s.features()
    assert (f.low_confidence_count, f.correction_count) == (1, 1)
    assert f.reasons == ("uncertain_and_corrected",)


# --------------------------------------------------------------------------- feedback


@pytest.mark.parametrize(
    ("kind", "rating", "negative", "positive"),
    [
        ("thumbs_down", None, 1, 0),
        ("edit", None, 1, 0),
        ("correction", None, 1, 0),
        ("thumbs_up", None, 0, 1),
        ("rating", 1, 1, 0),
        ("rating", 2, 1, 0),
        ("rating", 3, 0, 0),
        ("rating", 4, 0, 1),
        ("rating", 5, 0, 1),
        ("thumbs_up", 1, 0, 1),  # a rating on another kind does not change it
    ],
)
def test_feedback_polarity(kind: str, rating: int | None, negative: int, positive: int) -> None:
    s = Session()
    s.feedback(0, kind, rating)
    f = s.features()
    assert (f.negative_feedback_count, f.positive_feedback_count) == (negative, positive)
    assert ("explicit_negative" in f.reasons) is bool(negative)


# --------------------------------------------------------------------------- responses


def test_slow_response_threshold_is_exclusive() -> None:
    s = Session()
    s.assistant(0, response_time_ms=15_000)
    s.assistant(SEC, response_time_ms=15_001)
    s.assistant(2 * SEC)
    assert s.features().slow_response_count == 1


def test_model_version_of_last_assistant_message_that_has_one() -> None:
    s = Session()
    s.assistant(0, model_version="m-1")
    s.assistant(SEC, model_version="m-2")
    s.assistant(2 * SEC)  # none
    s.user(3 * SEC, model_version="m-user")  # user messages do not count
    assert s.features().model_version == "m-2"
    only_user = Session()
    only_user.user(0, model_version="m-9")
    assert only_user.features().model_version == ""


# --------------------------------------------------------------------------- serialization


def test_redis_hash_encoding_and_roundtrips() -> None:
    s = Session()
    s.user(0, "a", intent_confidence=0.55)
    s.cta_sent(SEC)
    s.feedback(2 * SEC, "thumbs_down")
    f = s.features()
    h = f.to_redis_hash()
    assert list(h) == list(FEATURE_COLUMNS)
    assert all(isinstance(v, str) for v in h.values())
    assert h["reasons"] == "cta_ignored,explicit_negative"
    assert (h["flagged"], h["carted"], h["no_order"]) == ("1", "0", "1")
    assert h["min_intent_confidence"] == "0.55"
    assert h["session_start_ms"] == str(T0)
    assert SessionFeatures.from_redis_hash(h) == f
    encoded = {k.encode(): v.encode() for k, v in h.items()}
    assert SessionFeatures.from_redis_hash(encoded) == f
    assert SessionFeatures.from_row(f.to_row()) == f


def test_unflagged_reasons_empty() -> None:
    s = Session()
    s.user(0)
    s.order(SEC)
    f = s.features()
    assert f.reasons == () and not f.flagged
    assert f.to_redis_hash()["reasons"] == "" and f.to_row()["reasons"] == []
    assert SessionFeatures.from_redis_hash(f.to_redis_hash()) == f


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="session_gap_ms"):
        FeatureConfig(session_gap_ms=0)
    with pytest.raises(ValueError, match="cta_window_ms"):
        FeatureConfig(cta_window_ms=-1)
    with pytest.raises(ValueError, match="correction_markers"):
        FeatureConfig(correction_markers=("",))


@pytest.mark.parametrize(
    ("kind", "rating", "negative"),
    [
        ("thumbs_down", None, True), ("edit", None, True), ("correction", None, True),
        ("rating", 1, True), ("rating", 2, True), ("rating", 2.0, True), ("rating", 3, False),
        ("rating", None, False), ("rating", "1", False), ("rating", True, False),
        ("thumbs_up", None, False), ("other", 1, False),
    ],
)  # fmt: skip
def test_negative_feedback_is_one_rule(kind: object, rating: object, negative: bool) -> None:
    from features import is_negative_feedback

    assert is_negative_feedback(kind, rating) is negative

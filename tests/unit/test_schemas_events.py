"""schemas.parse and the JSON Schema agree on one shared table of valid/invalid events."""

from __future__ import annotations

import json
from typing import Any

import pytest

import schemas
from schemas import (
    AssistantMessage,
    CartAdd,
    CtaClick,
    CtaSent,
    Feedback,
    FsmState,
    Order,
    ParseError,
    UserMessage,
    event_to_dict,
    parse,
    validation_errors,
)

TS = 1_700_000_000_000
MIN_TS = 946_684_800_000  # 2000-01-01T00:00:00Z
END_TS = 4_102_444_800_000  # 2100-01-01T00:00:00Z


def envelope(event_type: str, **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": "e-1",
        "event_type": event_type,
        "schema_version": 1,
        "session_id": "s-1",
        "user_id": "u-1",
        "ts_ms": TS,
    }
    event.update(fields)
    return event


def without(event: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != key}


USER = envelope("user_message", text="Is shipping free?")
ASSISTANT = envelope("assistant_message", text="Yes, over $50.")
CTA_SENT = envelope("cta_sent", cta_id="cta-9")
CTA_CLICK = envelope("cta_click", cta_id="cta-9")
CART = envelope("cart_add", sku="SKU-1")
ORDER = envelope("order", order_id="o-1")
FSM = envelope("fsm_state", to_state="qualify")
FEEDBACK = envelope("feedback", kind="thumbs_down")

VALID: list[tuple[str, dict[str, Any]]] = [
    ("user minimal", USER),
    (
        "user full",
        {
            **USER,
            "request_id": "r-1",
            "predicted_intent": "shipping",
            "intent_confidence": 0.42,
            "predicted_objection": "price",
            "objection_confidence": 1,
            "model_version": "m-1",
        },
    ),
    ("user optional nulls", {**USER, "request_id": None, "intent_confidence": None}),
    ("user empty text", {**USER, "text": ""}),
    ("user confidence 0", {**USER, "intent_confidence": 0}),
    ("user confidence 1.0", {**USER, "intent_confidence": 1.0}),
    ("user extra fields ignored", {**USER, "x_debug": {"a": [1]}, "locale": "zh"}),
    ("user text 32768 ascii", {**USER, "text": "a" * 32768}),
    ("user text 32768 bytes cjk", {**USER, "text": "包" * (32768 // 3) + "ab"}),
    ("user text 8192 emoji", {**USER, "text": "😀" * 8192}),
    ("assistant minimal", ASSISTANT),
    (
        "assistant full",
        {
            **ASSISTANT,
            "request_id": "r-1",
            "response_time_ms": 0,
            "model_version": "m",
            "prompt_version": "p",
        },
    ),
    ("cta_sent", CTA_SENT),
    ("cta_sent typed", {**CTA_SENT, "cta_type": "coupon"}),
    ("cta_click", CTA_CLICK),
    ("cart_add", CART),
    ("cart_add full", {**CART, "quantity": 1, "amount": 0}),
    ("cart_add amount float", {**CART, "amount": 19.99}),
    ("order", ORDER),
    ("order amount", {**ORDER, "amount": 120}),
    ("fsm_state", FSM),
    ("fsm_state from", {**FSM, "from_state": "greet"}),
    *[
        (f"feedback {kind}", {**FEEDBACK, "kind": kind})
        for kind in schemas.FEEDBACK_KINDS
        if kind != "rating"
    ],
    *[(f"feedback rating {r}", {**FEEDBACK, "kind": "rating", "rating": r}) for r in (1, 3, 5)],
    (
        "feedback full",
        {
            **FEEDBACK,
            "kind": "correction",
            "request_id": "r-1",
            "corrected_text": "x",
            "corrected_intent": "returns",
            "rating": 2,
        },
    ),
    (
        "id 128 chars",
        {**USER, "event_id": "e" * 128, "session_id": "s" * 128, "user_id": "u" * 128},
    ),
    ("id 1 char", {**USER, "event_id": "e"}),
    ("ts at 2000-01-01", {**USER, "ts_ms": MIN_TS}),
    ("ts last ms before 2100", {**USER, "ts_ms": END_TS - 1}),
]

# (name, event, reason, field) — field None when the record as a whole is bad.
INVALID: list[tuple[str, object, str, str | None]] = [
    ("array", [USER], "not_an_object", None),
    ("string", "hello", "not_an_object", None),
    ("number", 3, "not_an_object", None),
    ("null", None, "not_an_object", None),
    *[
        (f"missing {key}", without(USER, key), "missing_field", key)
        for key in ("event_id", "event_type", "schema_version", "session_id", "user_id", "ts_ms")
    ],
    *[
        (f"null {key}", {**USER, key: None}, "missing_field", key)
        for key in ("event_id", "event_type", "schema_version", "session_id", "user_id", "ts_ms")
    ],
    ("missing text", without(USER, "text"), "missing_field", "text"),
    ("null text", {**USER, "text": None}, "missing_field", "text"),
    ("assistant missing text", without(ASSISTANT, "text"), "missing_field", "text"),
    ("cta_sent missing cta_id", without(CTA_SENT, "cta_id"), "missing_field", "cta_id"),
    ("cta_click null cta_id", {**CTA_CLICK, "cta_id": None}, "missing_field", "cta_id"),
    ("cart missing sku", without(CART, "sku"), "missing_field", "sku"),
    ("order missing order_id", without(ORDER, "order_id"), "missing_field", "order_id"),
    ("fsm missing to_state", without(FSM, "to_state"), "missing_field", "to_state"),
    ("feedback missing kind", without(FEEDBACK, "kind"), "missing_field", "kind"),
    ("rating kind without rating", {**FEEDBACK, "kind": "rating"}, "missing_field", "rating"),
    (
        "rating kind null rating",
        {**FEEDBACK, "kind": "rating", "rating": None},
        "missing_field",
        "rating",
    ),
    ("event_id int", {**USER, "event_id": 7}, "wrong_type", "event_id"),
    ("event_id empty", {**USER, "event_id": ""}, "out_of_range", "event_id"),
    ("event_id 129 chars", {**USER, "event_id": "e" * 129}, "out_of_range", "event_id"),
    ("session_id empty", {**USER, "session_id": ""}, "out_of_range", "session_id"),
    ("user_id list", {**USER, "user_id": ["u"]}, "wrong_type", "user_id"),
    ("user_id 129 chars", {**USER, "user_id": "u" * 129}, "out_of_range", "user_id"),
    ("ts_ms string", {**USER, "ts_ms": str(TS)}, "wrong_type", "ts_ms"),
    ("ts_ms float", {**USER, "ts_ms": float(TS)}, "wrong_type", "ts_ms"),
    ("ts_ms bool", {**USER, "ts_ms": True}, "wrong_type", "ts_ms"),
    ("ts_ms before 2000", {**USER, "ts_ms": MIN_TS - 1}, "out_of_range", "ts_ms"),
    ("ts_ms at 2100", {**USER, "ts_ms": END_TS}, "out_of_range", "ts_ms"),
    ("ts_ms seconds", {**USER, "ts_ms": TS // 1000}, "out_of_range", "ts_ms"),
    ("ts_ms negative", {**USER, "ts_ms": -1}, "out_of_range", "ts_ms"),
    ("event_type int", {**USER, "event_type": 1}, "wrong_type", "event_type"),
    ("event_type unknown", {**USER, "event_type": "page_view"}, "unknown_event_type", "event_type"),
    (
        "event_type wrong case",
        {**USER, "event_type": "User_Message"},
        "unknown_event_type",
        "event_type",
    ),
    (
        "schema_version 2",
        {**USER, "schema_version": 2},
        "unsupported_schema_version",
        "schema_version",
    ),
    (
        "schema_version 99 new type",
        {**USER, "schema_version": 99, "event_type": "x"},
        "unsupported_schema_version",
        "schema_version",
    ),
    ("schema_version 0", {**USER, "schema_version": 0}, "out_of_range", "schema_version"),
    ("schema_version string", {**USER, "schema_version": "1"}, "wrong_type", "schema_version"),
    ("schema_version 1.0", {**USER, "schema_version": 1.0}, "wrong_type", "schema_version"),
    ("schema_version true", {**USER, "schema_version": True}, "wrong_type", "schema_version"),
    ("text number", {**USER, "text": 5}, "wrong_type", "text"),
    ("text 32769 ascii", {**USER, "text": "a" * 32769}, "too_large", "text"),
    ("text 32769 bytes cjk", {**USER, "text": "包" * (32768 // 3) + "abc"}, "too_large", "text"),
    ("text 16385 two-byte chars", {**USER, "text": "é" * 16385}, "too_large", "text"),
    ("assistant text too large", {**ASSISTANT, "text": "😀" * 8193}, "too_large", "text"),
    ("confidence > 1", {**USER, "intent_confidence": 1.01}, "out_of_range", "intent_confidence"),
    ("confidence < 0", {**USER, "intent_confidence": -0.1}, "out_of_range", "intent_confidence"),
    ("confidence string", {**USER, "intent_confidence": "0.5"}, "wrong_type", "intent_confidence"),
    ("confidence bool", {**USER, "intent_confidence": True}, "wrong_type", "intent_confidence"),
    (
        "objection confidence 2",
        {**USER, "objection_confidence": 2},
        "out_of_range",
        "objection_confidence",
    ),
    ("request_id int", {**USER, "request_id": 5}, "wrong_type", "request_id"),
    ("predicted_intent object", {**USER, "predicted_intent": {}}, "wrong_type", "predicted_intent"),
    ("model_version bool", {**USER, "model_version": False}, "wrong_type", "model_version"),
    (
        "response_time negative",
        {**ASSISTANT, "response_time_ms": -1},
        "out_of_range",
        "response_time_ms",
    ),
    (
        "response_time float",
        {**ASSISTANT, "response_time_ms": 12.5},
        "wrong_type",
        "response_time_ms",
    ),
    ("response_time 3.0", {**ASSISTANT, "response_time_ms": 3.0}, "wrong_type", "response_time_ms"),
    ("prompt_version int", {**ASSISTANT, "prompt_version": 2}, "wrong_type", "prompt_version"),
    ("cta_id int", {**CTA_SENT, "cta_id": 9}, "wrong_type", "cta_id"),
    ("cta_type int", {**CTA_SENT, "cta_type": 9}, "wrong_type", "cta_type"),
    ("click cta_id list", {**CTA_CLICK, "cta_id": []}, "wrong_type", "cta_id"),
    ("quantity 0", {**CART, "quantity": 0}, "out_of_range", "quantity"),
    ("quantity float", {**CART, "quantity": 1.5}, "wrong_type", "quantity"),
    ("quantity bool", {**CART, "quantity": True}, "wrong_type", "quantity"),
    ("amount negative", {**CART, "amount": -0.01}, "out_of_range", "amount"),
    ("amount string", {**ORDER, "amount": "10"}, "wrong_type", "amount"),
    ("order amount negative", {**ORDER, "amount": -5}, "out_of_range", "amount"),
    ("order_id int", {**ORDER, "order_id": 1}, "wrong_type", "order_id"),
    ("to_state int", {**FSM, "to_state": 1}, "wrong_type", "to_state"),
    ("from_state int", {**FSM, "from_state": 1}, "wrong_type", "from_state"),
    ("kind unknown", {**FEEDBACK, "kind": "meh"}, "out_of_range", "kind"),
    ("kind int", {**FEEDBACK, "kind": 1}, "wrong_type", "kind"),
    ("rating 0", {**FEEDBACK, "kind": "rating", "rating": 0}, "out_of_range", "rating"),
    ("rating 6", {**FEEDBACK, "kind": "rating", "rating": 6}, "out_of_range", "rating"),
    ("rating 4.5", {**FEEDBACK, "kind": "rating", "rating": 4.5}, "wrong_type", "rating"),
    ("rating string", {**FEEDBACK, "kind": "rating", "rating": "5"}, "wrong_type", "rating"),
    ("rating on thumbs out of range", {**FEEDBACK, "rating": 9}, "out_of_range", "rating"),
    ("corrected_text int", {**FEEDBACK, "corrected_text": 1}, "wrong_type", "corrected_text"),
]

VALID_IDS = [name for name, _ in VALID]
INVALID_IDS = [case[0] for case in INVALID]


@pytest.mark.parametrize("event", [event for _, event in VALID], ids=VALID_IDS)
def test_valid_event_accepted_by_parse_and_schema(event: dict[str, Any]) -> None:
    parsed = parse(event)
    assert not isinstance(parsed, ParseError), parsed
    assert validation_errors("event.v1", event) == []
    from_bytes = parse(json.dumps(event).encode("utf-8"))
    assert from_bytes == parsed
    assert parse(json.dumps(event, ensure_ascii=False)) == parsed


@pytest.mark.parametrize(("event", "reason", "field"), [c[1:] for c in INVALID], ids=INVALID_IDS)
def test_invalid_event_rejected_by_parse_and_schema(
    event: object, reason: str, field: str | None
) -> None:
    assert validation_errors("event.v1", event) != []
    result = parse(json.dumps(event).encode("utf-8"))
    assert isinstance(result, ParseError)
    assert (result.reason, result.field) == (reason, field), result.message
    assert result.reason in schemas.PARSE_REASONS
    assert result.message
    if isinstance(event, dict):
        assert parse(event) == result


def test_roundtrip_event_to_dict_parses_to_same_record() -> None:
    for _, raw in VALID:
        event = parse(raw)
        assert not isinstance(event, ParseError)
        as_dict = event_to_dict(event)
        assert None not in as_dict.values()
        assert parse(as_dict) == event
        assert validation_errors("event.v1", as_dict) == []
        assert parse(schemas.event_to_json(event)) == event


def test_event_to_dict_omits_none_and_puts_envelope_first() -> None:
    event = UserMessage(event_id="e", session_id="s", user_id="u", ts_ms=TS, text="hi")
    assert event_to_dict(event) == {
        "event_id": "e",
        "event_type": "user_message",
        "schema_version": 1,
        "session_id": "s",
        "user_id": "u",
        "ts_ms": TS,
        "text": "hi",
    }
    assert list(event_to_dict(event))[:6] == [
        "event_id", "event_type", "schema_version", "session_id", "user_id", "ts_ms",
    ]  # fmt: skip


def test_parse_returns_typed_records() -> None:
    expected = {
        "user_message": UserMessage,
        "assistant_message": AssistantMessage,
        "cta_sent": CtaSent,
        "cta_click": CtaClick,
        "cart_add": CartAdd,
        "order": Order,
        "fsm_state": FsmState,
        "feedback": Feedback,
    }
    for raw in (USER, ASSISTANT, CTA_SENT, CTA_CLICK, CART, ORDER, FSM, FEEDBACK):
        assert type(parse(raw)) is expected[raw["event_type"]]


def test_parse_keeps_values() -> None:
    event = parse({**USER, "intent_confidence": 0.25, "request_id": "r-7", "unknown": 1})
    assert isinstance(event, UserMessage)
    assert (event.text, event.intent_confidence, event.request_id) == (
        "Is shipping free?", 0.25, "r-7",
    )  # fmt: skip
    assert not hasattr(event, "unknown")


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"{'a': 1}", b"\xff\xfe{}", b'{"a": NaN}', b'{"a": Infinity}', b"[1,]", "}"],
)
def test_invalid_json(raw: bytes | str) -> None:
    result = parse(raw)
    assert isinstance(result, ParseError)
    assert (result.reason, result.field) == ("invalid_json", None)


def test_non_utf8_text_inside_json_is_invalid_json() -> None:
    raw = json.dumps(USER).encode().replace(b"Is shipping", b"Is \xe9shipping")
    result = parse(raw)
    assert isinstance(result, ParseError) and result.reason == "invalid_json"


def test_parse_accepts_bytearray_and_memoryview() -> None:
    raw = json.dumps(USER).encode()
    assert parse(bytearray(raw)) == parse(raw) == parse(memoryview(raw))


def test_non_finite_numbers_from_python_mappings_are_out_of_range() -> None:
    for value in (float("nan"), float("inf")):
        result = parse({**CART, "amount": value})
        assert isinstance(result, ParseError)
        assert (result.reason, result.field) == ("out_of_range", "amount")


def test_parse_error_carries_trace_ids_when_readable() -> None:
    result = parse({**USER, "ts_ms": "soon"})
    assert isinstance(result, ParseError)
    assert (result.event_id, result.session_id) == ("e-1", "s-1")
    result = parse({**USER, "event_id": "", "session_id": 5, "ts_ms": "soon"})
    assert isinstance(result, ParseError)
    assert (result.event_id, result.session_id) == (None, None)


@pytest.mark.parametrize(
    ("quantity", "valid"),
    [
        (b"9223372036854775807", True),
        (b"9223372036854775808", False),
        (b"99999999999999999999", False),
    ],
)
def test_integers_are_int64(quantity: bytes, valid: bool) -> None:
    raw = (
        b'{"event_id":"e","event_type":"cart_add","schema_version":1,"session_id":"s",'
        b'"user_id":"u","ts_ms":1700000000000,"sku":"x","quantity":' + quantity + b"}"
    )
    result = parse(raw)
    assert (validation_errors("event.v1", json.loads(raw)) == []) is valid
    if valid:
        assert isinstance(result, CartAdd) and result.quantity == int(quantity)
    else:
        assert isinstance(result, ParseError)
        assert (result.reason, result.field) == ("out_of_range", "quantity")


def test_duplicate_keys_last_wins() -> None:
    # JSON with a repeated key: the last one wins (as in every mainstream decoder).
    raw = json.dumps(USER)[:-1] + ', "text": 5}'
    result = parse(raw)
    assert isinstance(result, ParseError) and result.field == "text"


def test_dlq_reasons() -> None:
    assert set(schemas.DLQ_REASONS) == {
        "invalid_json", "not_an_object", "missing_field", "wrong_type", "out_of_range",
        "too_large", "unknown_event_type", "unsupported_schema_version", "future_event",
        "late_event",
    }  # fmt: skip
    assert schemas.load_schema("dlq_message.v1")["properties"]["reason"]["enum"] == list(
        schemas.DLQ_REASONS
    )
    assert schemas.SUPPORTED_SCHEMA_VERSION == 1


FUZZ_VALUES: list[object] = [
    None, "", "x", "e" * 128, "e" * 129, "rating", "thumbs_up", "user_message", "feedback",
    0, 1, 2, 5, 6, -1, 0.5, 1.5, 3.0, 1.0, True, False, [], {}, [1], {"a": 1},
    2**63 - 1, 2**63, MIN_TS, END_TS, END_TS - 1, TS,
]  # fmt: skip
FUZZ_KEYS = sorted(
    {key for _, event in VALID for key in event} | {"rating", "kind", "quantity", "extra"}
)


def test_parse_and_schema_agree_on_random_mutations() -> None:
    """One to three random field changes per valid event: both accept or both reject."""
    import random

    rng = random.Random(20240601)
    disagreements = []
    for _ in range(4000):
        event = dict(rng.choice(VALID)[1])
        for _ in range(rng.randint(1, 3)):
            key = rng.choice(FUZZ_KEYS)
            if rng.random() < 0.2:
                event.pop(key, None)
            else:
                event[key] = rng.choice(FUZZ_VALUES)
        parsed_ok = not isinstance(parse(event), ParseError)
        schema_ok = validation_errors("event.v1", event) == []
        if parsed_ok != schema_ok:
            disagreements.append((event, parse(event)))
    assert disagreements == []


def test_records_pickle_and_are_immutable() -> None:
    import dataclasses
    import pickle

    for _, raw in VALID:
        event = parse(raw)
        assert pickle.loads(pickle.dumps(event)) == event
        with pytest.raises(dataclasses.FrozenInstanceError):
            event.ts_ms = 0  # type: ignore[misc,union-attr]


@pytest.mark.parametrize("event", [event for _, event in VALID], ids=VALID_IDS)
def test_records_pickle_to_equal_records_and_load_the_dataclass_default_state(
    event: dict[str, Any],
) -> None:
    import dataclasses
    import pickle

    record = parse(event)
    assert not isinstance(record, ParseError)
    assert pickle.loads(pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)) == record
    # Savepoints written before the tuple state hold the dataclass default: a list of
    # the field values in field order.
    cls = type(record)
    restored = cls.__new__(cls)
    restored.__setstate__([getattr(record, f.name) for f in dataclasses.fields(record)])
    assert restored == record

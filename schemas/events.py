"""Raw event records (contract section 1) and the hot-path parser.

`parse` is hand-written (no jsonschema) because the streaming job calls it once per
Kafka record. It returns either a typed, frozen event record or a `ParseError` value:
errors are data, never exceptions, so the caller can route them to the dead-letter topic.

The JSON Schema in `schemas/json/event.v1.json` describes the same rules; a unit test runs
one shared table of examples through both and asserts they agree.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Final


def _reject_constant(name: str) -> Any:
    # JSON has no NaN/Infinity; Python's json module accepts them by default.
    raise ValueError(f"{name} is not valid JSON")


def stdlib_loads(raw: bytes | str) -> Any:
    """The standard library's JSON decoder, as strict as orjson's.

    It rejects what orjson rejects: NaN/Infinity, and lone surrogates (``"\\ud800"``,
    which no UTF-8 text can hold: re-encoding the decoded value finds them). Nesting too
    deep for the interpreter raises ``RecursionError``, which ``decode_json`` reports as
    ``invalid_json`` like orjson's own depth limit.
    """
    value = json.loads(raw, parse_constant=_reject_constant)
    json.dumps(value, ensure_ascii=False).encode("utf-8")  # UnicodeEncodeError on surrogates
    return value


try:  # orjson (a declared dependency) is ~3x faster; the fallback keeps the same rules.
    import orjson

    _loads: Callable[[bytes | str], Any] = orjson.loads
    _DECODE_ERRORS: tuple[type[BaseException], ...] = (orjson.JSONDecodeError,)
except ImportError:  # pragma: no cover - exercised by tests through stdlib_loads
    _loads = stdlib_loads
    _DECODE_ERRORS = (ValueError,)

SUPPORTED_SCHEMA_VERSION: Final = 1

# 2000-01-01T00:00:00Z (inclusive) .. 2100-01-01T00:00:00Z (exclusive), epoch ms UTC.
MIN_TS_MS: Final = 946_684_800_000
MAX_TS_MS_EXCLUSIVE: Final = 4_102_444_800_000

# Integer fields are int64 (Parquet, Java); a larger JSON integer is out of range.
MAX_INT64: Final = 2**63 - 1

MAX_ID_CHARS: Final = 128
MAX_TEXT_BYTES: Final = 32 * 1024

FEEDBACK_KINDS: Final = ("thumbs_up", "thumbs_down", "rating", "edit", "correction")

EVENT_TYPES: Final = (
    "user_message",
    "assistant_message",
    "cta_sent",
    "cta_click",
    "cart_add",
    "order",
    "fsm_state",
    "feedback",
)

# Reasons a raw record can be rejected with; `future_event` and `late_event` are assigned by
# the streaming job (they depend on the Kafka record's timestamp and on event time).
PARSE_REASONS: Final = (
    "invalid_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "out_of_range",
    "too_large",
    "unknown_event_type",
    "unsupported_schema_version",
)
DLQ_REASONS: Final = (*PARSE_REASONS, "future_event", "late_event")


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Envelope shared by every event type."""

    event_id: str
    event_type: str
    schema_version: int
    session_id: str
    user_id: str
    ts_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class UserMessage(Event):
    """A message typed by the shopper, with the assistant's predictions about it."""

    event_type: str = "user_message"
    schema_version: int = SUPPORTED_SCHEMA_VERSION
    text: str
    request_id: str | None = None
    predicted_intent: str | None = None
    intent_confidence: float | None = None
    predicted_objection: str | None = None
    objection_confidence: float | None = None
    model_version: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AssistantMessage(Event):
    """A reply produced by the assistant."""

    event_type: str = "assistant_message"
    schema_version: int = SUPPORTED_SCHEMA_VERSION
    text: str
    request_id: str | None = None
    response_time_ms: int | None = None
    model_version: str | None = None
    prompt_version: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CtaSent(Event):
    """A call to action shown to the shopper."""

    event_type: str = "cta_sent"
    schema_version: int = SUPPORTED_SCHEMA_VERSION
    cta_id: str
    cta_type: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CtaClick(Event):
    """The shopper clicked a call to action."""

    event_type: str = "cta_click"
    schema_version: int = SUPPORTED_SCHEMA_VERSION
    cta_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CartAdd(Event):
    """An item was added to the cart."""

    event_type: str = "cart_add"
    schema_version: int = SUPPORTED_SCHEMA_VERSION
    sku: str
    quantity: int | None = None
    amount: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Order(Event):
    """An order was placed."""

    event_type: str = "order"
    schema_version: int = SUPPORTED_SCHEMA_VERSION
    order_id: str
    amount: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FsmState(Event):
    """The dialogue state machine moved (or re-entered) a state."""

    event_type: str = "fsm_state"
    schema_version: int = SUPPORTED_SCHEMA_VERSION
    to_state: str
    from_state: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Feedback(Event):
    """Explicit feedback on a response or prediction."""

    event_type: str = "feedback"
    schema_version: int = SUPPORTED_SCHEMA_VERSION
    kind: str
    request_id: str | None = None
    rating: int | None = None
    corrected_text: str | None = None
    corrected_intent: str | None = None


AnyEvent = (
    UserMessage | AssistantMessage | CtaSent | CtaClick | CartAdd | Order | FsmState | Feedback
)

EVENT_CLASSES: Final[Mapping[str, type[Event]]] = {
    "user_message": UserMessage,
    "assistant_message": AssistantMessage,
    "cta_sent": CtaSent,
    "cta_click": CtaClick,
    "cart_add": CartAdd,
    "order": Order,
    "fsm_state": FsmState,
    "feedback": Feedback,
}


def _fast_pickling(cls: type[Event]) -> None:
    """Give ``cls`` a tuple pickle state instead of the dataclass default.

    The streaming job pickles these records into Flink state and between operators for
    every event, and the generated slots-dataclass state functions look up ``fields()``
    on every call (about 40% of a session's state round trip). The state stays the
    field values in field order, so records pickled the default way still load.
    """
    names = tuple(f.name for f in fields(cls))
    values_of = operator.attrgetter(*names)
    set_attribute = object.__setattr__

    def __getstate__(self: Event) -> tuple[Any, ...]:
        return tuple(values_of(self))

    def __setstate__(self: Event, state: Sequence[Any]) -> None:
        for name, value in zip(names, state, strict=True):
            set_attribute(self, name, value)

    setattr(cls, "__getstate__", __getstate__)  # noqa: B010 - set on the class, not declared
    setattr(cls, "__setstate__", __setstate__)  # noqa: B010


_PICKLED_CLASSES: tuple[type[Event], ...] = (Event, *EVENT_CLASSES.values())
for _event_class in _PICKLED_CLASSES:
    _fast_pickling(_event_class)


@dataclass(frozen=True, slots=True)
class ParseError:
    """Why a raw record was rejected.

    `field` names the offending field (None when the record as a whole is bad);
    `event_id`/`session_id` are filled in when they could be read, so a dead-letter
    message can still be traced to its session.
    """

    reason: str
    field: str | None
    message: str
    event_id: str | None = None
    session_id: str | None = None


# --------------------------------------------------------------------------- checkers
# A checker returns None when the value is fine, else (reason, message).

_Problem = tuple[str, str] | None
_Checker = Callable[[Any], _Problem]


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _expected(kind: str, value: object) -> tuple[str, str]:
    return ("wrong_type", f"expected {kind}, got {_type_name(value)}")


def _check_id(value: Any) -> _Problem:
    if type(value) is not str:
        return _expected("string", value)
    if not 1 <= len(value) <= MAX_ID_CHARS:
        return ("out_of_range", f"must be 1-{MAX_ID_CHARS} characters, got {len(value)}")
    return None


def _check_str(value: Any) -> _Problem:
    if type(value) is not str:
        return _expected("string", value)
    return None


def _utf8_len_exceeds(value: str, limit: int) -> bool:
    # A code point takes 1-4 bytes in UTF-8: decide by length when that is enough.
    if len(value) * 4 <= limit:
        return False
    if len(value) > limit:
        return True
    return len(value.encode("utf-8", "surrogatepass")) > limit


def _check_text(value: Any) -> _Problem:
    if type(value) is not str:
        return _expected("string", value)
    if _utf8_len_exceeds(value, MAX_TEXT_BYTES):
        size = len(value.encode("utf-8", "surrogatepass"))
        return ("too_large", f"must be at most {MAX_TEXT_BYTES} bytes of UTF-8, got {size}")
    return None


def _int_checker(minimum: int, maximum: int = MAX_INT64) -> _Checker:
    bounds = f"{minimum}..{maximum}"

    def check(value: Any) -> _Problem:
        # bool is a subclass of int and 3.0 is a float: both are rejected.
        if type(value) is not int:
            if type(value) is float and abs(value) > MAX_INT64 and value.is_integer():
                # orjson decodes integers beyond 64 bits as floats: report the range.
                return ("out_of_range", f"must be {bounds}, got {value:.0f}")
            return _expected("integer", value)
        if value < minimum or value > maximum:
            return ("out_of_range", f"must be {bounds}, got {value}")
        return None

    return check


def _number_checker(minimum: float, maximum: float | None = None) -> _Checker:
    bounds = f"{minimum:g}..{maximum:g}" if maximum is not None else f">= {minimum:g}"

    def check(value: Any) -> _Problem:
        kind = type(value)
        if kind is not float and kind is not int:
            return _expected("number", value)
        if kind is float and not math.isfinite(value):
            return ("out_of_range", f"must be a finite number, got {value}")
        if value < minimum or (maximum is not None and value > maximum):
            return ("out_of_range", f"must be {bounds}, got {value}")
        return None

    return check


def _check_ts(value: Any) -> _Problem:
    if type(value) is not int:
        return _expected("integer", value)
    if not MIN_TS_MS <= value < MAX_TS_MS_EXCLUSIVE:
        return (
            "out_of_range",
            f"must be epoch ms in [2000-01-01, 2100-01-01) UTC, i.e. "
            f"{MIN_TS_MS} <= ts_ms < {MAX_TS_MS_EXCLUSIVE}, got {value}",
        )
    return None


def _check_kind(value: Any) -> _Problem:
    if type(value) is not str:
        return _expected("string", value)
    if value not in FEEDBACK_KINDS:
        return ("out_of_range", f"must be one of {', '.join(FEEDBACK_KINDS)}; got {value!r}")
    return None


_check_confidence = _number_checker(0.0, 1.0)
_check_amount = _number_checker(0.0)

# (field, checker, required) per event type, in the order they are validated.
_FieldSpec = tuple[str, _Checker, bool]
_ENVELOPE: tuple[_FieldSpec, ...] = (
    ("event_id", _check_id, True),
    ("session_id", _check_id, True),
    ("user_id", _check_id, True),
    ("ts_ms", _check_ts, True),
)
_TYPE_FIELDS: dict[str, tuple[_FieldSpec, ...]] = {
    "user_message": (
        ("text", _check_text, True),
        ("request_id", _check_str, False),
        ("predicted_intent", _check_str, False),
        ("intent_confidence", _check_confidence, False),
        ("predicted_objection", _check_str, False),
        ("objection_confidence", _check_confidence, False),
        ("model_version", _check_str, False),
    ),
    "assistant_message": (
        ("text", _check_text, True),
        ("request_id", _check_str, False),
        ("response_time_ms", _int_checker(0), False),
        ("model_version", _check_str, False),
        ("prompt_version", _check_str, False),
    ),
    "cta_sent": (("cta_id", _check_str, True), ("cta_type", _check_str, False)),
    "cta_click": (("cta_id", _check_str, True),),
    "cart_add": (
        ("sku", _check_str, True),
        ("quantity", _int_checker(1), False),
        ("amount", _check_amount, False),
    ),
    "order": (("order_id", _check_str, True), ("amount", _check_amount, False)),
    "fsm_state": (("to_state", _check_str, True), ("from_state", _check_str, False)),
    "feedback": (
        ("kind", _check_kind, True),
        ("request_id", _check_str, False),
        ("rating", _int_checker(1, 5), False),
        ("corrected_text", _check_str, False),
        ("corrected_intent", _check_str, False),
    ),
}
_SPECS: dict[str, tuple[_FieldSpec, ...]] = {
    event_type: _ENVELOPE + specs for event_type, specs in _TYPE_FIELDS.items()
}
_check_version_type = _int_checker(1)


# --------------------------------------------------------------------------- parse


def _traceable(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if type(value) is str and 1 <= len(value) <= MAX_ID_CHARS:
        return value
    return None


def _error(obj: Mapping[str, Any] | None, reason: str, field: str | None, msg: str) -> ParseError:
    if obj is None:
        return ParseError(reason, field, msg)
    return ParseError(
        reason, field, msg, _traceable(obj, "event_id"), _traceable(obj, "session_id")
    )


def decode_json(raw: bytes | bytearray | memoryview | str) -> Any | ParseError:
    """Decode one JSON document (strict: UTF-8, no NaN/Infinity) or return a ParseError."""
    try:
        if isinstance(raw, bytearray | memoryview):
            raw = bytes(raw)
        return _loads(raw)
    except _DECODE_ERRORS as exc:
        return ParseError("invalid_json", None, f"not valid JSON: {exc}")
    except UnicodeError as exc:  # json module on undecodable bytes or lone surrogates
        return ParseError("invalid_json", None, f"not valid UTF-8: {exc}")
    except RecursionError:  # json module on nesting deeper than the interpreter allows
        return ParseError("invalid_json", None, "not valid JSON: nested too deeply")


def parse(raw: bytes | bytearray | memoryview | str | Mapping[str, Any]) -> AnyEvent | ParseError:
    """Validate one raw event (JSON bytes/text or an already decoded mapping).

    Returns the typed event record, or a `ParseError` whose `reason` is one of
    `PARSE_REASONS`. Optional fields given as null count as absent; unknown extra
    fields are ignored.
    """
    obj: Any
    if isinstance(raw, Mapping):
        obj = raw
    else:
        obj = decode_json(raw)
        if isinstance(obj, ParseError):
            return obj
        if not isinstance(obj, dict):
            return ParseError(
                "not_an_object", None, f"expected a JSON object, got {_type_name(obj)}"
            )

    version = obj.get("schema_version")
    if version is None:
        return _error(obj, "missing_field", "schema_version", "required field is missing")
    problem = _check_version_type(version)
    if problem is not None:
        return _error(obj, problem[0], "schema_version", problem[1])
    if version > SUPPORTED_SCHEMA_VERSION:
        return _error(
            obj,
            "unsupported_schema_version",
            "schema_version",
            f"version {version} is newer than the supported {SUPPORTED_SCHEMA_VERSION}",
        )

    event_type = obj.get("event_type")
    if event_type is None:
        return _error(obj, "missing_field", "event_type", "required field is missing")
    if type(event_type) is not str:
        return _error(obj, "wrong_type", "event_type", _expected("string", event_type)[1])
    specs = _SPECS.get(event_type)
    if specs is None:
        return _error(
            obj,
            "unknown_event_type",
            "event_type",
            f"unknown event_type {event_type[:64]!r}; expected one of {', '.join(EVENT_TYPES)}",
        )

    values: dict[str, Any] = {"event_type": event_type, "schema_version": version}
    for name, check, required in specs:
        value = obj.get(name)
        if value is None:
            if required:
                return _error(obj, "missing_field", name, "required field is missing")
            continue
        problem = check(value)
        if problem is not None:
            return _error(obj, problem[0], name, problem[1])
        values[name] = value

    if event_type == "feedback" and values["kind"] == "rating" and "rating" not in values:
        return _error(obj, "missing_field", "rating", "required when kind is 'rating'")

    event: AnyEvent = EVENT_CLASSES[event_type](**values)  # type: ignore[assignment]
    return event


# --------------------------------------------------------------------------- serialise

_FIELD_NAMES: dict[type[Event], tuple[str, ...]] = {}


def _field_names(cls: type[Event]) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = tuple(f.name for f in fields(cls))
        _FIELD_NAMES[cls] = names
    return names


def event_to_dict(event: Event) -> dict[str, Any]:
    """JSON-ready dict of an event: envelope first, optional fields that are None omitted."""
    out: dict[str, Any] = {}
    for name in _field_names(type(event)):
        value = getattr(event, name)
        if value is not None:
            out[name] = value
    return out


def event_to_json(event: Event) -> bytes:
    """Compact UTF-8 JSON of `event_to_dict(event)`."""
    return json.dumps(event_to_dict(event), ensure_ascii=False, separators=(",", ":")).encode()

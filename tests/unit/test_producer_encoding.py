"""Producer SDK pieces that need no broker: validation, encoding, ids, settings."""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import timedelta

import pytest

from connectors.producer import (
    EncodedEvent,
    InvalidEventError,
    ProducerSettings,
    encode_event,
    new_event_id,
)
from connectors.settings import ConfigError, KafkaSettings
from schemas import Feedback, UserMessage

TS = 1_700_000_000_000


def user_message(**overrides: object) -> dict[str, object]:
    event: dict[str, object] = {
        "event_id": "e-1",
        "event_type": "user_message",
        "schema_version": 1,
        "session_id": "s-1",
        "user_id": "u-1",
        "ts_ms": TS,
        "text": "is shipping free?",
    }
    event.update(overrides)
    return event


def test_encodes_canonical_json_keyed_by_session() -> None:
    encoded = encode_event(user_message(extra_field="ignored", request_id=None))
    assert isinstance(encoded, EncodedEvent)
    assert encoded.key == b"s-1"
    assert encoded.event_id == "e-1"
    value = json.loads(encoded.value)
    # Unknown fields and null optionals are dropped; envelope first.
    assert value == {k: v for k, v in user_message().items()}
    assert list(value)[:6] == [
        "event_id",
        "event_type",
        "schema_version",
        "session_id",
        "user_id",
        "ts_ms",
    ]


def test_same_event_same_bytes_whatever_the_input_form() -> None:
    as_dict = encode_event(user_message(text="你好, 包邮吗?"))
    as_text = encode_event(json.dumps(user_message(text="你好, 包邮吗?")))
    as_bytes = encode_event(json.dumps(user_message(text="你好, 包邮吗?")).encode())
    as_record = encode_event(
        UserMessage(event_id="e-1", session_id="s-1", user_id="u-1", ts_ms=TS, text="你好, 包邮吗?")
    )
    assert as_dict.value == as_text.value == as_bytes.value == as_record.value
    assert "你好".encode() in as_dict.value  # UTF-8, not \\u escapes


def test_missing_event_id_is_generated_as_uuid7() -> None:
    first = encode_event(user_message(event_id=None))
    second = encode_event({k: v for k, v in user_message().items() if k != "event_id"})
    for encoded in (first, second):
        parsed = uuid.UUID(encoded.event_id)
        assert parsed.version == 7
        assert json.loads(encoded.value)["event_id"] == encoded.event_id
    assert first.event_id != second.event_id


def test_uuid7_is_time_ordered() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_event_id() for _ in range(200)]
    after = time.time_ns() // 1_000_000
    for value in ids:
        assert re.fullmatch(
            r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", value
        )
        ms = uuid.UUID(value).int >> 80
        assert before <= ms <= after
    assert len(set(ids)) == len(ids)


# Every bad-input class, with the field it must name (None: the body as a whole).
BAD_INPUTS = [
    pytest.param(b'{"event_id": "e-1", "event_type":', "invalid_json", None, id="malformed_json"),
    pytest.param(b"[1, 2]", "not_an_object", None, id="not_an_object"),
    pytest.param(user_message(event_type="telepathy"), "unknown_event_type", "event_type",
                 id="unknown_type"),
    pytest.param(user_message(ts_ms="1700000000000"), "wrong_type", "ts_ms", id="wrong_type"),
    pytest.param(user_message(intent_confidence=True), "wrong_type", "intent_confidence",
                 id="bool_is_not_a_number"),
    pytest.param(user_message(text="x" * (32 * 1024 + 1)), "too_large", "text", id="oversize_text"),
    pytest.param(user_message(ts_ms=1), "out_of_range", "ts_ms", id="ts_ms_out_of_range"),
    pytest.param(user_message(schema_version=2), "unsupported_schema_version", "schema_version",
                 id="unsupported_schema_version"),
    pytest.param({k: v for k, v in user_message().items() if k != "user_id"}, "missing_field",
                 "user_id", id="missing_field"),
    pytest.param(
        {**{k: v for k, v in user_message().items() if k != "text"}, "event_type": "feedback",
         "kind": "rating"},
        "missing_field", "rating", id="rating_without_rating"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "reason", "field"), BAD_INPUTS)
def test_bad_input_raises_value_error_naming_the_field(
    raw: object, reason: str, field: str | None
) -> None:
    with pytest.raises(ValueError) as caught:
        encode_event(raw)  # type: ignore[arg-type]
    error = caught.value
    assert isinstance(error, InvalidEventError)
    assert error.reason == reason
    assert error.field == field
    assert (field or "<event>") in str(error)


def test_invalid_record_object_is_revalidated() -> None:
    record = Feedback(event_id="e", session_id="s", user_id="u", ts_ms=TS, kind="rating")
    with pytest.raises(InvalidEventError, match="rating"):
        encode_event(record)


def test_rejects_unsupported_python_types() -> None:
    with pytest.raises(TypeError):
        encode_event(42)  # type: ignore[arg-type]


def test_producer_config_fixes_delivery_guarantees() -> None:
    settings = ProducerSettings.load(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:19092"),
        linger=timedelta(milliseconds=20),
        buffer_max_messages=1000,
        librdkafka={"batch.num.messages": 500},
    )
    conf = settings.producer_config()
    assert conf["enable.idempotence"] is True
    assert conf["acks"] == "all"
    assert conf["bootstrap.servers"] == "127.0.0.1:19092"
    assert conf["linger.ms"] == 20
    assert conf["queue.buffering.max.messages"] == 1000
    assert conf["batch.num.messages"] == 500
    assert settings.target_topic == "flywheel.events"


@pytest.mark.parametrize("key", ["acks", "enable.idempotence", "bootstrap.servers"])
def test_guarantees_cannot_be_overridden(key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ProducerSettings.load(librdkafka={key: "0"})
    assert "librdkafka" in str(caught.value)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_KAFKA_BOOTSTRAP_SERVERS", "10.0.0.1:9093")
    monkeypatch.setenv("FLYWHEEL_PRODUCER_ON_BUFFER_FULL", "raise")
    monkeypatch.setenv("FLYWHEEL_PRODUCER_LINGER", "PT0.05S")
    settings = ProducerSettings.load()
    assert settings.kafka.bootstrap_servers == "10.0.0.1:9093"
    assert settings.on_buffer_full == "raise"
    assert settings.producer_config()["linger.ms"] == 50


def test_unknown_or_bad_settings_name_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_PRODUCER_LINGERR", "5")
    with pytest.raises(ConfigError, match="FLYWHEEL_PRODUCER_LINGERR"):
        ProducerSettings.load()
    monkeypatch.delenv("FLYWHEEL_PRODUCER_LINGERR")
    with pytest.raises(ConfigError, match="on_buffer_full"):
        ProducerSettings.load(on_buffer_full="drop")


def test_key_order_does_not_change_the_content() -> None:
    event = user_message(request_id="r-1", intent_confidence=0.25)
    shuffled = dict(reversed(list(event.items())))
    assert json.loads(encode_event(shuffled).value) == json.loads(encode_event(event).value)
    assert json.loads(encode_event(event).value) == event


def test_values_are_written_as_validated() -> None:
    # 1.0 stays a float where a number is allowed; nothing is coerced on the way out.
    event = {
        **{k: v for k, v in user_message().items() if k != "text"},
        "event_type": "cart_add",
        "sku": "sku-1",
        "amount": 1.0,
        "quantity": 3,
    }
    assert json.loads(encode_event(event).value) == event

"""Producer SDK: validated, idempotent, keyed writes of raw events to Kafka.

``EventProducer`` wraps a confluent-kafka ``Producer`` configured for
exactly-once writes per partition (``enable.idempotence=true``, ``acks=all``).
Every event is checked with :func:`schemas.parse` before it is handed to
librdkafka, so an invalid event raises :class:`InvalidEventError` (a
``ValueError`` naming the field) and never reaches the topic. Messages are
keyed by ``session_id`` so a session's events stay in order on one partition.

Delivery reports are served by a background thread, so the producer works the
same from plain threads and from asyncio code:

* ``send()`` returns a :class:`DeliveryFuture`; ``flush()``/``close()`` raise
  :class:`DeliveryError` for failed deliveries whose future nobody inspected.
* ``send_async()`` returns an ``asyncio.Future`` resolved by the delivery report.
* ``send_many_async()`` enqueues a batch in order and awaits every report.

The local buffer is bounded (``buffer_max_messages``/``buffer_max_kbytes``);
when it is full the producer either waits for room (``on_buffer_full="block"``,
bounded by ``buffer_full_timeout``) or raises :class:`BufferFullError`. It
never drops an event.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any, Literal, NamedTuple

from confluent_kafka import KafkaError, KafkaException, Producer
from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from connectors.settings import FlywheelSettings, KafkaSettings, to_ms
from schemas import EVENT_CLASSES, ParseError, decode_json, event_to_dict, parse
from schemas.events import Event

logger = logging.getLogger(__name__)

# Properties the SDK owns: overriding them would break the delivery guarantees.
_GUARANTEE_PROPERTIES = frozenset(
    {"acks", "request.required.acks", "enable.idempotence", "bootstrap.servers"}
)


class ProducerSettings(FlywheelSettings):
    """Producer SDK settings (``FLYWHEEL_PRODUCER_*``; Kafka from ``FLYWHEEL_KAFKA_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="FLYWHEEL_PRODUCER_",
        extra="forbid",
        frozen=True,
        validate_default=True,
        env_nested_delimiter="__",
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topic: str | None = Field(
        default=None, description="Topic to write to; defaults to kafka.events_topic."
    )
    client_id: str = "flywheel-producer"
    linger: timedelta = Field(
        default=timedelta(milliseconds=5),
        description="How long librdkafka waits to fill a batch (linger.ms).",
    )
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"
    buffer_max_messages: int = Field(
        default=100_000, ge=1, description="Local buffer bound (queue.buffering.max.messages)."
    )
    buffer_max_kbytes: int = Field(
        default=65_536, ge=1, description="Local buffer bound (queue.buffering.max.kbytes)."
    )
    on_buffer_full: Literal["block", "raise"] = Field(
        default="block",
        description="When the buffer is full: wait for room (up to buffer_full_timeout) or raise.",
    )
    buffer_full_timeout: timedelta = timedelta(seconds=30)
    delivery_timeout: timedelta = Field(
        default=timedelta(minutes=2),
        description=(
            "How long librdkafka keeps retrying a message before reporting it failed "
            "(delivery.timeout.ms); covers a broker restart."
        ),
    )
    flush_timeout: timedelta = Field(
        default=timedelta(minutes=2), description="How long close() waits for outstanding writes."
    )
    librdkafka: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Extra librdkafka properties (acks and idempotence cannot be overridden).",
    )

    @field_validator("linger", "buffer_full_timeout", "delivery_timeout", "flush_timeout")
    @classmethod
    def _non_negative(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("must not be negative")
        return value

    @field_validator("librdkafka")
    @classmethod
    def _no_guarantee_override(
        cls, value: dict[str, str | int | float | bool]
    ) -> dict[str, str | int | float | bool]:
        clash = sorted(_GUARANTEE_PROPERTIES.intersection(value))
        if clash:
            raise ValueError(f"cannot override {', '.join(clash)}: the SDK fixes them")
        return value

    @property
    def target_topic(self) -> str:
        return self.topic or self.kafka.events_topic

    def producer_config(self) -> dict[str, Any]:
        """librdkafka configuration of the idempotent producer."""
        conf: dict[str, Any] = dict(self.kafka.client_config())
        conf.update(self.librdkafka)
        conf.update(
            {
                "client.id": self.client_id,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": to_ms(self.linger),
                "compression.type": self.compression,
                "queue.buffering.max.messages": self.buffer_max_messages,
                "queue.buffering.max.kbytes": self.buffer_max_kbytes,
                "delivery.timeout.ms": to_ms(self.delivery_timeout),
            }
        )
        return conf


# --------------------------------------------------------------------------- errors


class InvalidEventError(ValueError):
    """An event failed validation; ``field`` and ``reason`` say why. It was not sent."""

    def __init__(self, error: ParseError) -> None:
        self.error = error
        where = error.field or "<event>"
        super().__init__(f"invalid event: {where}: {error.reason}: {error.message}")

    @property
    def field(self) -> str | None:
        return self.error.field

    @property
    def reason(self) -> str:
        return self.error.reason


class BufferFullError(BufferError):
    """The local producer buffer stayed full; the event was not enqueued."""


class DeliveryFailed(Exception):
    """Kafka did not acknowledge one event."""

    def __init__(self, event_id: str, error: KafkaError) -> None:
        self.event_id = event_id
        self.kafka_error = error
        super().__init__(f"event {event_id} not delivered: {error.str()} ({error.name()})")


class DeliveryError(Exception):
    """One or more events were not acknowledged (or not before the timeout)."""

    def __init__(self, failures: list[DeliveryFailed], *, not_flushed: int = 0) -> None:
        self.failures = failures
        self.not_flushed = not_flushed
        parts = []
        if failures:
            sample = "; ".join(str(f) for f in failures[:3])
            parts.append(f"{len(failures)} event(s) not delivered ({sample})")
        if not_flushed:
            parts.append(f"{not_flushed} message(s) still unacknowledged after the flush timeout")
        super().__init__("; ".join(parts) or "delivery failed")

    @property
    def event_ids(self) -> list[str]:
        return [f.event_id for f in self.failures]


# --------------------------------------------------------------------------- encoding


def new_event_id() -> str:
    """A UUIDv7 string: time-ordered, so ties in ``ts_ms`` still sort by creation."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | ((rand >> 68) & 0xFFF) << 64
        | 0b10 << 62
        | (rand & 0x3FFF_FFFF_FFFF_FFFF)
    )
    return str(uuid.UUID(int=value))


_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

try:  # orjson writes the same compact UTF-8 JSON several times faster; optional.
    import orjson

    def _dumps(value: dict[str, Any]) -> bytes:
        try:
            return orjson.dumps(value)
        except orjson.JSONEncodeError:  # e.g. an integer beyond 64 bits
            return _encode_json(value).encode()

except ImportError:  # pragma: no cover - exercised only without orjson

    def _dumps(value: dict[str, Any]) -> bytes:
        return _encode_json(value).encode()


_KNOWN_FIELDS: dict[str, frozenset[str]] = {
    event_type: frozenset(f.name for f in dataclasses.fields(cls))
    for event_type, cls in EVENT_CLASSES.items()
}


class EncodedEvent(NamedTuple):
    """A validated event ready for Kafka: key = session_id, value = canonical JSON."""

    event_id: str
    key: bytes
    value: bytes
    event: Event


def encode_event(event: Event | Mapping[str, Any] | str | bytes) -> EncodedEvent:
    """Validate ``event`` (adding an ``event_id`` when missing) and encode it.

    Raises InvalidEventError naming the field when the event breaks the contract.
    """
    fields: Mapping[str, Any]
    if type(event) is dict:  # the common case first: isinstance on ABCs is slow
        fields = event
    elif isinstance(event, Event):
        fields = event_to_dict(event)
    elif isinstance(event, Mapping):
        fields = event
    elif isinstance(event, str | bytes | bytearray):
        decoded = decode_json(event)
        if isinstance(decoded, ParseError):
            raise InvalidEventError(decoded)
        if not isinstance(decoded, dict):
            raise InvalidEventError(
                ParseError(
                    "not_an_object", None, f"expected a JSON object, got {_json_kind(decoded)}"
                )
            )
        fields = decoded
    else:
        raise TypeError(f"cannot send a {type(event).__name__}: expected an Event, dict or JSON")
    if fields.get("event_id") is None:
        fields = {**fields, "event_id": new_event_id()}
    result = parse(fields)
    if isinstance(result, ParseError):
        raise InvalidEventError(result)
    # What is written is the canonical event: unknown fields and nulls dropped, so a retry
    # re-sends identical content. A plain dict that holds only known, non-null fields already
    # is canonical (parse accepted every value as it is): dump it without rebuilding it.
    if (
        type(fields) is dict
        and fields.keys() <= _KNOWN_FIELDS[result.event_type]
        and None not in fields.values()
    ):
        value = _dumps(fields)
    else:
        value = _dumps(event_to_dict(result))
    return EncodedEvent(result.event_id, result.session_id.encode(), value, result)


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number"


SendableEvent = Event | Mapping[str, Any] | str | bytes | EncodedEvent

# --------------------------------------------------------------------------- delivery


class Delivery(NamedTuple):
    """Where Kafka stored an event."""

    event_id: str
    topic: str
    partition: int
    offset: int


class DeliveryFuture:
    """Outcome of one ``send()``: resolved by the delivery report.

    Also the librdkafka ``on_delivery`` callback itself, which saves one
    allocation per message on the hot path.
    """

    __slots__ = ("event_id", "_owner", "_done", "_msg", "_error", "_retrieved", "_async")

    def __init__(self, event_id: str, owner: EventProducer) -> None:
        self.event_id = event_id
        self._owner = owner
        self._done = False
        self._msg: Any = None
        self._error: DeliveryFailed | None = None
        self._retrieved = False
        self._async: tuple[asyncio.AbstractEventLoop, asyncio.Future[Delivery]] | None = None

    def __call__(self, err: KafkaError | None, msg: Any) -> None:
        # Runs on whichever thread serves librdkafka events (the poll thread).
        if err is not None:
            self._error = DeliveryFailed(self.event_id, err)
            self._owner._record_failure(self)
        else:
            self._msg = msg
        self._done = True
        owner = self._owner
        if owner._waiters:
            with owner._delivered:
                owner._delivered.notify_all()
        if self._async is not None:
            loop, future = self._async
            try:
                loop.call_soon_threadsafe(_resolve, future, self._delivery_or_error())
            except RuntimeError:  # the loop is closed; nobody is waiting any more
                pass

    def done(self) -> bool:
        return self._done

    def result(self, timeout: float | None = None) -> Delivery:
        """The Delivery; raises DeliveryFailed or TimeoutError."""
        outcome = self._wait(timeout)
        if isinstance(outcome, DeliveryFailed):
            raise outcome
        return outcome

    def exception(self, timeout: float | None = None) -> DeliveryFailed | None:
        outcome = self._wait(timeout)
        return outcome if isinstance(outcome, DeliveryFailed) else None

    def _wait(self, timeout: float | None) -> Delivery | DeliveryFailed:
        if not self._done:
            owner = self._owner
            deadline = None if timeout is None else time.monotonic() + timeout
            with owner._delivered:
                owner._waiters += 1
                try:
                    while not self._done:
                        remaining = None if deadline is None else deadline - time.monotonic()
                        if remaining is not None and remaining <= 0:
                            raise TimeoutError(f"event {self.event_id} not acknowledged yet")
                        owner._delivered.wait(remaining)
                finally:
                    owner._waiters -= 1
        self._retrieved = True
        return self._delivery_or_error()

    def _delivery_or_error(self) -> Delivery | DeliveryFailed:
        if self._error is not None:
            return self._error
        msg = self._msg
        return Delivery(self.event_id, msg.topic(), msg.partition(), msg.offset())


def _resolve(future: asyncio.Future[Delivery], outcome: Delivery | DeliveryFailed) -> None:
    if future.done():
        return
    if isinstance(outcome, DeliveryFailed):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


# --------------------------------------------------------------------------- producer


class EventProducer:
    """Validated, idempotent event producer (sync and asyncio)."""

    def __init__(
        self,
        settings: ProducerSettings | None = None,
        *,
        topic: str | None = None,
    ) -> None:
        self.settings = settings if settings is not None else ProducerSettings.load()
        self.topic = topic or self.settings.target_topic
        self._fatal: KafkaError | None = None
        self._failed: list[DeliveryFuture] = []
        self._failed_lock = threading.Lock()
        self._delivered = threading.Condition()
        self._waiters = 0
        self._closed = False
        conf = self.settings.producer_config()
        conf["error_cb"] = self._on_error
        # librdkafka's own log lines go through Python logging (served by the poll thread)
        # instead of straight to stderr.
        conf.setdefault("logger", logging.getLogger("connectors.producer.librdkafka"))
        self._producer = Producer(conf)
        self._stop = threading.Event()
        self._poller = threading.Thread(
            target=self._poll_loop, name=f"flywheel-producer-poll-{id(self):x}", daemon=True
        )
        self._poller.start()

    # ---- sending

    def send(self, event: SendableEvent, *, topic: str | None = None) -> DeliveryFuture:
        """Validate and enqueue one event; returns a future resolved on delivery.

        Raises InvalidEventError (not sent) or BufferFullError (not enqueued).
        """
        encoded = event if isinstance(event, EncodedEvent) else encode_event(event)
        future = DeliveryFuture(encoded.event_id, self)
        self._produce_blocking(topic or self.topic, encoded, future)
        return future

    def send_async(
        self, event: SendableEvent, *, topic: str | None = None
    ) -> asyncio.Future[Delivery]:
        """Validate and enqueue one event; the returned asyncio Future resolves on delivery.

        Call it from a running event loop. With ``on_buffer_full="block"`` a full buffer
        makes this call wait (up to buffer_full_timeout); use send_many_async() to wait
        without blocking the loop.
        """
        loop = asyncio.get_running_loop()
        encoded = event if isinstance(event, EncodedEvent) else encode_event(event)
        future = DeliveryFuture(encoded.event_id, self)
        result: asyncio.Future[Delivery] = loop.create_future()
        future._async = (loop, result)
        future._retrieved = True  # the asyncio future reports the failure to its awaiter
        self._produce_blocking(topic or self.topic, encoded, future)
        return result

    async def send_many_async(
        self,
        events: Iterable[SendableEvent],
        *,
        topic: str | None = None,
    ) -> list[Delivery]:
        """Enqueue ``events`` in order and wait until Kafka acknowledged all of them.

        Every event is validated before the first is sent (all or nothing). While the
        buffer is full this coroutine yields to the loop. Raises DeliveryError listing
        the events Kafka did not acknowledge.
        """
        encoded = [e if isinstance(e, EncodedEvent) else encode_event(e) for e in events]
        loop = asyncio.get_running_loop()
        target = topic or self.topic
        results: list[asyncio.Future[Delivery]] = []
        for item in encoded:
            future = DeliveryFuture(item.event_id, self)
            result: asyncio.Future[Delivery] = loop.create_future()
            future._async = (loop, result)
            future._retrieved = True
            deadline = None
            while not self._try_produce(target, item, future):
                if self.settings.on_buffer_full == "raise":
                    raise BufferFullError(self._buffer_full_message())
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.settings.buffer_full_timeout.total_seconds()
                elif now >= deadline:
                    raise BufferFullError(self._buffer_full_message())
                await asyncio.sleep(0.002)
            results.append(result)
        outcomes = await asyncio.gather(*results, return_exceptions=True)
        failures = [o for o in outcomes if isinstance(o, DeliveryFailed)]
        if failures:
            raise DeliveryError(failures)
        others = [o for o in outcomes if isinstance(o, BaseException)]
        if others:
            raise others[0]
        return [o for o in outcomes if isinstance(o, Delivery)]

    def _produce_blocking(self, topic: str, encoded: EncodedEvent, future: DeliveryFuture) -> None:
        if self._try_produce(topic, encoded, future):
            return
        if self.settings.on_buffer_full == "raise":
            raise BufferFullError(self._buffer_full_message())
        deadline = time.monotonic() + self.settings.buffer_full_timeout.total_seconds()
        while True:
            # Serve delivery reports here too, so room frees up as fast as possible.
            self._producer.poll(0.005)
            if self._try_produce(topic, encoded, future):
                return
            if time.monotonic() >= deadline:
                raise BufferFullError(self._buffer_full_message())

    def _try_produce(self, topic: str, encoded: EncodedEvent, future: DeliveryFuture) -> bool:
        if self._closed:
            raise RuntimeError("producer is closed")
        if self._fatal is not None:
            raise KafkaException(self._fatal)
        try:
            self._producer.produce(topic, encoded.value, encoded.key, on_delivery=future)
        except BufferError:
            return False
        return True

    def _buffer_full_message(self) -> str:
        return (
            f"producer buffer full ({len(self._producer)} messages waiting; limits "
            f"{self.settings.buffer_max_messages} messages / {self.settings.buffer_max_kbytes} KiB)"
        )

    # ---- delivery bookkeeping

    def _record_failure(self, future: DeliveryFuture) -> None:
        with self._failed_lock:
            self._failed.append(future)

    def _take_unreported_failures(self) -> list[DeliveryFailed]:
        with self._failed_lock:
            failed, self._failed = self._failed, []
        return [f._error for f in failed if not f._retrieved and f._error is not None]

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = err
            logger.error("fatal producer error, no further sends: %s", err.str())
        else:
            # Transient (e.g. a broker restarting): librdkafka retries on its own.
            logger.warning("kafka producer: %s", err.str())

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)

    # ---- lifecycle

    @property
    def pending(self) -> int:
        """Messages enqueued but not yet acknowledged."""
        return len(self._producer)

    def flush(self, timeout: float | None = None) -> None:
        """Wait for outstanding writes; raise DeliveryError if any failed unobserved.

        A failure counts as observed once its future's result() or exception() was
        called (or it was sent with send_async/send_many_async).
        """
        if timeout is None:
            timeout = self.settings.flush_timeout.total_seconds()
        remaining = self._producer.flush(timeout)
        failures = self._take_unreported_failures()
        if failures or remaining:
            raise DeliveryError(failures, not_flushed=remaining)
        if self._fatal is not None:
            raise KafkaException(self._fatal)

    def close(self, timeout: float | None = None) -> None:
        """Flush and stop; raises DeliveryError like flush()."""
        if self._closed:
            return
        try:
            self.flush(timeout)
        finally:
            self._closed = True
            if len(self._producer):
                # Whatever is left after the flush timeout was reported as not flushed;
                # purge it so close() keeps its timeout and every future gets an outcome.
                self._producer.purge(in_queue=True, in_flight=True, blocking=False)
                self._producer.flush(1.0)
            self._stop.set()
            self._poller.join()
            self._producer.close()

    def list_topics(self, timeout: float = 5.0) -> Any:
        """Cluster metadata (raises KafkaException when Kafka is unreachable)."""
        return self._producer.list_topics(self.topic, timeout=timeout)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._close_on_exit(exc is not None)

    async def __aenter__(self) -> EventProducer:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # Flush on a worker thread so delivery callbacks can still reach this loop.
        await asyncio.to_thread(self._close_on_exit, exc is not None)

    def _close_on_exit(self, unwinding: bool) -> None:
        try:
            self.close()
        except Exception:
            if not unwinding:
                raise
            # Do not mask the exception already on its way out; still say what was lost.
            logger.exception("flush on exit failed while handling another exception")


__all__ = [
    "BufferFullError",
    "Delivery",
    "DeliveryError",
    "DeliveryFailed",
    "DeliveryFuture",
    "EncodedEvent",
    "EventProducer",
    "InvalidEventError",
    "ProducerSettings",
    "encode_event",
    "new_event_id",
]

"""Failure surfacing of the producer SDK against a port where no broker listens.

librdkafka is real here; only the broker is absent, which is exactly the situation
these tests are about (delivery timeouts and a full local buffer).
"""

from __future__ import annotations

import asyncio
import socket
from datetime import timedelta

import pytest

from connectors.producer import (
    BufferFullError,
    DeliveryError,
    DeliveryFailed,
    EventProducer,
    InvalidEventError,
    ProducerSettings,
)
from connectors.settings import KafkaSettings

TS = 1_700_000_000_000


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _settings(**overrides: object) -> ProducerSettings:
    base: dict[str, object] = {
        "kafka": KafkaSettings(bootstrap_servers=f"127.0.0.1:{_dead_port()}"),
        "delivery_timeout": timedelta(milliseconds=800),
        "flush_timeout": timedelta(seconds=10),
        "librdkafka": {"log_level": 0},
    }
    base.update(overrides)
    return ProducerSettings.load(**base)


def _event(n: int) -> dict[str, object]:
    return {
        "event_id": f"e-{n}",
        "event_type": "cta_click",
        "schema_version": 1,
        "session_id": "s-1",
        "user_id": "u-1",
        "ts_ms": TS + n,
        "cta_id": "c-1",
    }


def test_delivery_failure_reaches_the_future() -> None:
    producer = EventProducer(_settings())
    future = producer.send(_event(1))
    with pytest.raises(DeliveryFailed) as caught:
        future.result(timeout=30)
    assert caught.value.event_id == "e-1"
    # The failure was seen through the future, so close() does not raise it again.
    producer.close()


def test_unobserved_delivery_failure_raises_on_flush_and_on_exit() -> None:
    with pytest.raises(DeliveryError) as caught:
        with EventProducer(_settings()) as producer:
            producer.send(_event(1))
            producer.send(_event(2))
    assert sorted(caught.value.event_ids) == ["e-1", "e-2"]


def test_async_send_resolves_with_the_failure() -> None:
    async def main() -> None:
        async with EventProducer(_settings()) as producer:
            with pytest.raises(DeliveryFailed):
                await producer.send_async(_event(1))
            with pytest.raises(DeliveryError) as caught:
                await producer.send_many_async([_event(2), _event(3)])
            assert caught.value.event_ids == ["e-2", "e-3"]

    asyncio.run(main())


def test_invalid_event_is_not_enqueued() -> None:
    producer = EventProducer(_settings())
    with pytest.raises(InvalidEventError, match="cta_id"):
        producer.send({**_event(1), "cta_id": None})
    # Had it been enqueued, its delivery would fail (no broker) and close() would raise.
    producer.close()


def test_full_buffer_raises_when_configured_and_keeps_what_it_has() -> None:
    producer = EventProducer(
        _settings(
            buffer_max_messages=3, on_buffer_full="raise", delivery_timeout=timedelta(seconds=30)
        )
    )
    futures = [producer.send(_event(n)) for n in range(3)]
    with pytest.raises(BufferFullError):
        producer.send(_event(3))
    assert not any(f.done() for f in futures)  # still waiting, not dropped
    with pytest.raises(DeliveryError) as caught:
        producer.close(timeout=0.5)
    assert caught.value.not_flushed >= 3
    # close() purged what the broker never took; every future says so.
    assert all(isinstance(f.exception(timeout=5), DeliveryFailed) for f in futures)


def test_full_buffer_blocks_up_to_the_timeout() -> None:
    import time

    producer = EventProducer(
        _settings(
            buffer_max_messages=2,
            on_buffer_full="block",
            buffer_full_timeout=timedelta(milliseconds=600),
            delivery_timeout=timedelta(seconds=30),
        )
    )
    try:
        producer.send(_event(0))
        producer.send(_event(1))
        started = time.monotonic()
        with pytest.raises(BufferFullError):
            producer.send(_event(2))
        assert time.monotonic() - started >= 0.5
    finally:
        with pytest.raises(DeliveryError):
            producer.close(timeout=0.5)


def test_blocked_send_proceeds_once_room_frees_up() -> None:
    # Messages time out after 0.5 s, which frees the buffer: the blocked send then succeeds.
    producer = EventProducer(
        _settings(
            buffer_max_messages=1,
            on_buffer_full="block",
            buffer_full_timeout=timedelta(seconds=20),
            delivery_timeout=timedelta(milliseconds=500),
        )
    )
    first = producer.send(_event(0))
    second = producer.send(_event(1))  # waits for the first to fail and leave the buffer
    assert first.done()
    with pytest.raises(DeliveryFailed):
        first.result()
    with pytest.raises(DeliveryFailed):
        second.result(timeout=30)
    producer.close()


def test_closed_producer_refuses_to_send() -> None:
    producer = EventProducer(_settings())
    producer.close()
    with pytest.raises(RuntimeError, match="closed"):
        producer.send(_event(1))

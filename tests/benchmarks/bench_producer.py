"""Producer SDK throughput beside the raw confluent-kafka producer.

Run by hand against a real broker (not collected by pytest):

    .venv/bin/python tests/benchmarks/bench_producer.py [--events 200000] [--rounds 3]

Kafka: --bootstrap, else FLYWHEEL_KAFKA_BOOTSTRAP_SERVERS / KAFKA_BOOTSTRAP_SERVERS, else
the running local stack (``flywheel stack up``).

All contenders use the same librdkafka settings (ProducerSettings.producer_config():
acks=all, enable.idempotence=true, linger, compression, buffer bounds), the same broker,
the same freshly created topic layout and the same events (a realistic mix of types).
Each waits for every delivery report before the clock stops. Contenders:

* ``raw+json``  - what code without the SDK does: ``json.dumps`` each dict, produce it
  keyed by session_id with a delivery callback, ``poll(0)``, flush. The goal is SDK >= 70%.
* ``raw bytes`` - produce already-encoded bytes: the ceiling of librdkafka through Python.
* ``sdk``       - ``EventProducer.send(dict)``: validation, event_id check, canonical JSON,
  delivery future per event, flush.
* ``sdk encoded`` - ``EventProducer.send(EncodedEvent)`` of events validated beforehand: the
  SDK's own machinery (futures, poll thread, backpressure) beside ``raw bytes``.

The events are built (and ``gc.freeze()``-d) before any clock starts, so no contender pays
for collecting the benchmark's own data.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Producer

from connectors.producer import EncodedEvent, EventProducer, ProducerSettings, encode_event
from connectors.settings import KafkaSettings
from connectors.topics import TopicSpec, ensure_topics

TS = 1_700_000_000_000


def make_events(count: int, sessions: int, seed: int = 7) -> list[dict[str, Any]]:
    """A mix like a live assistant: mostly messages, some CTAs, carts and feedback."""
    rng = random.Random(seed)
    words = "price shipping size colour return discount warranty delivery stock bundle".split()
    events: list[dict[str, Any]] = []
    for n in range(count):
        base = {
            "event_id": f"{uuid.UUID(int=rng.getrandbits(128))}",
            "schema_version": 1,
            "session_id": f"session-{rng.randrange(sessions)}",
            "user_id": f"user-{rng.randrange(sessions)}",
            "ts_ms": TS + n,
        }
        roll = rng.random()
        if roll < 0.4:
            base |= {
                "event_type": "user_message",
                "text": " ".join(rng.choices(words, k=12)) + "?",
                "request_id": f"req-{n}",
                "predicted_intent": rng.choice(words),
                "intent_confidence": round(rng.random(), 3),
                "model_version": "m-1",
            }
        elif roll < 0.8:
            base |= {
                "event_type": "assistant_message",
                "text": " ".join(rng.choices(words, k=40)) + ".",
                "request_id": f"req-{n}",
                "response_time_ms": rng.randrange(200, 20_000),
                "model_version": "m-1",
                "prompt_version": "p-3",
            }
        elif roll < 0.88:
            base |= {"event_type": "cta_sent", "cta_id": f"cta-{n % 50}", "cta_type": "coupon"}
        elif roll < 0.93:
            base |= {"event_type": "cta_click", "cta_id": f"cta-{n % 50}"}
        elif roll < 0.97:
            base |= {"event_type": "cart_add", "sku": f"sku-{n % 300}", "quantity": 1,
                     "amount": 19.99}  # fmt: skip
        else:
            base |= {"event_type": "feedback", "kind": "rating", "rating": rng.randint(1, 5),
                     "request_id": f"req-{n - 1}"}  # fmt: skip
        events.append(base)
    return events


def run_raw_json(conf: dict[str, Any], topic: str, events: list[dict[str, Any]]) -> float:
    producer = Producer(conf)
    failures = 0

    def on_delivery(err: Any, msg: Any) -> None:
        nonlocal failures
        if err is not None:
            failures += 1

    dumps = json.dumps
    started = time.perf_counter()
    for event in events:
        value = dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
        while True:
            try:
                producer.produce(
                    topic, value, event["session_id"].encode(), on_delivery=on_delivery
                )
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    remaining = producer.flush(120)
    elapsed = time.perf_counter() - started
    producer.close()
    assert failures == 0 and remaining == 0, (failures, remaining)
    return elapsed


def run_raw_bytes(conf: dict[str, Any], topic: str, events: list[dict[str, Any]]) -> float:
    encoded = [
        (json.dumps(e, separators=(",", ":"), ensure_ascii=False).encode(),
         e["session_id"].encode())
        for e in events
    ]  # fmt: skip
    producer = Producer(conf)
    failures = 0

    def on_delivery(err: Any, msg: Any) -> None:
        nonlocal failures
        if err is not None:
            failures += 1

    started = time.perf_counter()
    for value, key in encoded:
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    remaining = producer.flush(120)
    elapsed = time.perf_counter() - started
    producer.close()
    assert failures == 0 and remaining == 0, (failures, remaining)
    return elapsed


def run_sdk(settings: ProducerSettings, topic: str, events: list[dict[str, Any]]) -> float:
    producer = EventProducer(settings, topic=topic)
    send = producer.send
    started = time.perf_counter()
    for event in events:
        send(event)
    producer.flush()
    elapsed = time.perf_counter() - started
    producer.close()
    return elapsed


def run_sdk_encoded(settings: ProducerSettings, topic: str, encoded: list[EncodedEvent]) -> float:
    producer = EventProducer(settings, topic=topic)
    send = producer.send
    started = time.perf_counter()
    for event in encoded:
        send(event)
    producer.flush()
    elapsed = time.perf_counter() - started
    producer.close()
    return elapsed


def resolve_bootstrap(explicit: str | None) -> str:
    if explicit:
        return explicit
    for name in ("FLYWHEEL_KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"):
        if os.environ.get(name):
            return os.environ[name]
    try:
        from deploy.stack import running_endpoints

        endpoints = running_endpoints()
    except ImportError:
        endpoints = None
    if endpoints is not None:
        return str(endpoints.kafka_bootstrap)
    sys.exit("no Kafka: pass --bootstrap, set KAFKA_BOOTSTRAP_SERVERS or run `flywheel stack up`")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--sessions", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--bootstrap")
    parser.add_argument(
        "--only", choices=["raw+json", "raw bytes", "sdk", "sdk encoded"], action="append"
    )
    args = parser.parse_args()

    kafka = KafkaSettings(bootstrap_servers=resolve_bootstrap(args.bootstrap))
    settings = ProducerSettings.load(kafka=kafka)
    conf = settings.producer_config()
    events = make_events(args.events, args.sessions)
    encoded = [encode_event(e) for e in events]
    gc.collect()
    gc.freeze()
    size = sum(len(json.dumps(e)) for e in events) / len(events)
    print(f"{len(events)} events (avg {size:.0f} B), {args.partitions} partitions, "
          f"broker {kafka.bootstrap_servers}, librdkafka linger.ms={conf['linger.ms']} "
          f"compression={conf['compression.type']} acks=all idempotent")  # fmt: skip

    contenders: dict[str, Callable[[str], float]] = {
        "raw+json": lambda topic: run_raw_json(conf, topic, events),
        "raw bytes": lambda topic: run_raw_bytes(conf, topic, events),
        "sdk": lambda topic: run_sdk(settings, topic, events),
        "sdk encoded": lambda topic: run_sdk_encoded(settings, topic, encoded),
    }
    chosen = args.only or list(contenders)
    rates: dict[str, list[float]] = {name: [] for name in chosen}
    stamp = uuid.uuid4().hex[:8]
    for round_no in range(args.rounds):
        for name in chosen:
            # A fresh topic per run so no run pays for another's data.
            topic = f"bench.producer.{stamp}.{round_no}.{name.replace(' ', '').replace('+', '')}"
            ensure_topics(kafka, [TopicSpec(topic, args.partitions, 1, retention=_hour())])
            elapsed = contenders[name](topic)
            rates[name].append(len(events) / elapsed)
            print(f"  round {round_no + 1} {name:11s} {len(events) / elapsed:10,.0f} events/s")
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print("median events/s:")
    for name, rate in medians.items():
        print(f"  {name:11s} {rate:10,.0f}")
    for sdk, base in (("sdk", "raw+json"), ("sdk", "raw bytes"), ("sdk encoded", "raw bytes")):
        if sdk in medians and base in medians:
            print(f"{sdk} / {base}: {medians[sdk] / medians[base]:.2f}")
    _cleanup(kafka, f"bench.producer.{stamp}.")


def _hour() -> Any:
    from datetime import timedelta

    return timedelta(hours=1)


def _cleanup(kafka: KafkaSettings, prefix: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(kafka.client_config())
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            future.result()


if __name__ == "__main__":
    main()

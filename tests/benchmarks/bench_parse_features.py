"""Benchmark the hot paths: schemas.parse vs jsonschema validation, compute_features per event.

Run manually: .venv/bin/python tests/benchmarks/bench_parse_features.py
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable

from features import FeatureConfig, RuleSet, compute_features
from schemas import (
    AssistantMessage,
    CtaSent,
    Event,
    FsmState,
    UserMessage,
    parse,
    validation_errors,
    validator,
)

T0 = 1_700_000_000_000


def per_call_us(function: Callable[[], object], repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        function()
    return (time.perf_counter() - start) / repeat * 1e6


def session(size: int) -> list[Event]:
    events: list[Event] = []
    for i in range(size):
        env = {"event_id": f"e{i:05d}", "session_id": "s", "user_id": "u", "ts_ms": T0 + i * 5_000}
        kind = i % 4
        if kind == 0:
            events.append(UserMessage(**env, text=f"question {i % 7} about shipping?",
                                      intent_confidence=0.5))  # fmt: skip
        elif kind == 1:
            events.append(AssistantMessage(**env, text="answer", model_version="m",
                                           response_time_ms=1_000))  # fmt: skip
        elif kind == 2:
            events.append(CtaSent(**env, cta_id=f"c{i % 3}"))
        else:
            events.append(FsmState(**env, to_state=f"s{i % 5}"))
    return events


def main() -> None:
    raw = json.dumps({
        "event_id": "e-1", "event_type": "user_message", "schema_version": 1,
        "session_id": "s-1", "user_id": "u-1", "ts_ms": T0,
        "text": "Is shipping free to Canada? I need it by Friday.", "request_id": "r-1",
        "predicted_intent": "shipping", "intent_confidence": 0.7, "model_version": "m-1",
    }).encode()  # fmt: skip
    decoded = json.loads(raw)
    validator("event.v1")  # build once
    parse_us = per_call_us(lambda: parse(raw), 50_000)
    schema_us = per_call_us(lambda: validation_errors("event.v1", decoded), 2_000)
    print(f"schemas.parse (bytes -> record):        {parse_us:8.2f} us/event "
          f"({1e6 / parse_us:,.0f} events/s)")  # fmt: skip
    print(f"jsonschema validation (decoded dict):   {schema_us:8.2f} us/event")
    print(f"ratio jsonschema / parse:               {schema_us / parse_us:8.1f}x")

    config, rules = FeatureConfig(), RuleSet.default()
    rng = random.Random(1)
    for size in (20, 200, 1_000):
        events = session(size)
        vectors = {
            e.event_id: [rng.random() for _ in range(384)]
            for e in events
            if isinstance(e, UserMessage)
        }
        plain = per_call_us(lambda e=events: compute_features(e, config, rules), 200) / 1e3
        embedded = (
            per_call_us(
                lambda e=events, v=vectors: compute_features(e, config, rules, embeddings=v), 50
            )
            / 1e3
        )
        print(f"compute_features {size:5d} events: {plain:7.3f} ms, with 384-d embeddings "
              f"{embedded:7.3f} ms (ratio {embedded / plain:4.1f}x); "
              f"{plain * 1e3 / size:5.2f} us/event")  # fmt: skip


if __name__ == "__main__":
    main()

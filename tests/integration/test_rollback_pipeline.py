"""Automatic canary rollback fed through the real pipeline, end to end.

Two assistants share one event stream, each with its own model in the S3 registry
(real tiny LoRA adapters): ``intent`` (stable ``intent-v1``, canary ``intent-v2``)
and ``intent-fr`` (stable ``intent-fr-v1``, canary ``intent-fr-v2``). Shoppers are
routed to a version by the registry's own router, as app servers do, and every
user and assistant message carries the version that served it. Sessions served by
``intent-v2`` get far more thumbs-down and 1-2 star ratings than those served by
``intent-v1``; both ``intent-fr`` versions get the same share.

The stream goes to Kafka (out of order within the 10 s bound, with redelivered
duplicates) and one run of the streaming feature job counts closed sessions per
version in ``<prefix>model:<version>``. ``training.rollback.check_canary`` then
reads those counters: the worse canary is rolled back (pointer cleared, decision in
the S3 log and in ``<prefix>registry:log``), the other one is kept.

The expected counters come from ``tests/reference/contract_reference.py``, an
independent computation of the contract over the generated events.
"""

from __future__ import annotations

import collections
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from reference.contract_reference import compute_reference
from reference.generator import build_deliveries
from reference.job_harness import JobSandbox, job_sandbox, running_job

from training.online import model_key, registry_key, registry_log_key
from training.registry import CANARY, STABLE, ModelRouter, Registry
from training.rollback import check_canary, read_outcomes
from training.settings import RegistryConfig, RollbackConfig

pytestmark = [pytest.mark.integration, pytest.mark.flink]

BASE_TS_MS = 1_772_445_600_000  # 2026-03-02T10:00:00Z
SPAN_MS = 6 * 3600 * 1000  # session starts spread over six hours
CANARY_SHARE = 0.3
# (model name, shoppers, P(negative feedback) under stable, under canary)
ASSISTANTS = (("intent", 180, 0.10, 0.60), ("intent-fr", 140, 0.20, 0.20))
MARGIN = 0.05
MIN_CANARY_SESSIONS = 20
JOB_SETTINGS = {"embedding_enabled": False}  # repeated questions play no part here

QUESTIONS = (
    "How long does shipping to Lyon take?",
    "Do you have the trail runner in size 44?",
    "What is the warranty on the espresso machine?",
    "Can I pay with PayPal?",
    "Is the rain jacket machine washable?",
    "Which laptop bag fits a 16 inch laptop?",
    "Is there a student discount?",
    "Can I change the delivery address?",
)
REPLIES = (
    "Shipping takes 2-3 business days.",
    "Yes, it is available in that size.",
    "The warranty is two years.",
    "We accept PayPal and all major cards.",
    "Here are three options you might like.",
)
INTENTS = ("shipping", "availability", "warranty", "payment", "product_info")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real LoRA adapter on a tiny BERT (seconds); every version registers a copy."""
    from training.classifier import train_intent_adapter
    from training.data import base_examples
    from training.settings import TrainerConfig
    from training.synthetic import INTENTS as TRAINING_INTENTS
    from training.synthetic import base_dataset
    from training.testing import tiny_bert

    root = tmp_path_factory.mktemp("rollback-adapter")
    config = TrainerConfig(base_model_path=tiny_bert(root / "tiny"), epochs=1, device="cpu")
    examples = base_examples(base_dataset(0, per_intent=4))
    return train_intent_adapter(
        examples, root / "adapter", labels=TRAINING_INTENTS, config=config
    ).adapter_dir


def _session(
    rng: random.Random, session_id: str, user_id: str, version: str, negative: bool, start_ms: int
) -> list[dict[str, Any]]:
    """Two question/answer turns served by ``version``, feedback, and maybe a purchase."""
    events: list[dict[str, Any]] = []
    ts = start_ms

    def add(event_type: str, after_ms: int, **fields: Any) -> None:
        nonlocal ts
        ts += after_ms
        events.append(
            {
                "event_id": f"{session_id}-{len(events):02d}",
                "event_type": event_type,
                "schema_version": 1,
                "session_id": session_id,
                "user_id": user_id,
                "ts_ms": ts,
                **fields,
            }
        )

    add("fsm_state", 0, to_state="greeting")
    request_ids = []
    for turn in range(2):
        request_id = f"{session_id}-q{turn}"
        request_ids.append(request_id)
        add(
            "user_message",
            rng.randint(2_000, 40_000),
            text=rng.choice(QUESTIONS),
            request_id=request_id,
            predicted_intent=rng.choice(INTENTS),
            intent_confidence=round(rng.uniform(0.7, 0.99), 3),
            model_version=version,
        )
        add(
            "assistant_message",
            rng.randint(400, 6_000),
            text=rng.choice(REPLIES),
            request_id=request_id,
            response_time_ms=rng.randint(300, 5_000),
            model_version=version,
            prompt_version="p1",
        )
    if negative:
        kind = rng.choice(("thumbs_down", "rating"))
        add(
            "feedback",
            rng.randint(2_000, 30_000),
            kind=kind,
            request_id=rng.choice(request_ids),
            **({"rating": rng.choice((1, 2))} if kind == "rating" else {}),
        )
    elif rng.random() < 0.5:
        kind = rng.choice(("thumbs_up", "rating"))
        add(
            "feedback",
            rng.randint(2_000, 30_000),
            kind=kind,
            request_id=rng.choice(request_ids),
            **({"rating": rng.choice((3, 4, 5))} if kind == "rating" else {}),
        )
    roll = rng.random()
    if roll < 0.45:
        add("order", rng.randint(10_000, 90_000), order_id=f"o-{session_id}", amount=49.5)
    elif roll < 0.75:
        # Never clicked: flagged as cta_ignored, with or without negative feedback.
        cta_id = f"cta-{session_id}"
        add("cta_sent", rng.randint(1_000, 5_000), cta_id=cta_id, cta_type="product_card")
    return events


@dataclass
class PipelineRun:
    box: JobSandbox
    registries: dict[str, Registry]  # by model name
    served: dict[str, str]  # user_id -> version
    reference: Any
    counters: dict[str, dict[str, int]]  # what the job wrote, by version
    seconds: float


@pytest.fixture(scope="module")
def run(
    stack_endpoints: Any,
    kafka_admin: Any,
    tmp_path_factory: pytest.TempPathFactory,
    adapter: Path,
) -> Iterator[PipelineRun]:
    tmp = tmp_path_factory.mktemp("rollback-pipeline")
    with job_sandbox(stack_endpoints, kafka_admin, tmp, "rollback") as box:
        redis = box.redis()
        s3 = stack_endpoints.s3_settings().model_copy(update={"bucket": box.bucket})
        rng = random.Random(20260302)
        registries: dict[str, Registry] = {}
        served: dict[str, str] = {}
        events: list[dict[str, Any]] = []
        for model_name, shoppers, p_stable, p_canary in ASSISTANTS:
            registry = Registry(
                s3,
                RegistryConfig(model_name=model_name, cache_dir=tmp / "cache"),
                redis=redis,
                redis_prefix=box.redis_prefix,
            )
            stable, canary = registry.register(adapter), registry.register(adapter)
            registry.promote(stable, STABLE)
            registry.promote(canary, CANARY)
            registry.set_canary_share(CANARY_SHARE)
            registries[model_name] = registry
            router = ModelRouter(registry)  # what app servers call per request
            for n in range(shoppers):
                user_id = f"{model_name}-shopper-{n:03d}"
                version = router.adapter_for(user_id)
                served[user_id] = version
                for visit in range(rng.choice((1, 1, 2))):
                    negative = rng.random() < (p_canary if version == canary else p_stable)
                    # Visits of one shopper are hours apart: separate sessions.
                    start = BASE_TS_MS + visit * SPAN_MS + rng.randrange(SPAN_MS)
                    session_id = f"{user_id}-visit{visit}"
                    events += _session(rng, session_id, user_id, version, negative, start)
        deliveries = build_deliveries(events, rng, duplicate_share=0.03)
        box.produce((d.key, d.raw) for d in deliveries)
        started = time.monotonic()
        with running_job(box.context(**JOB_SETTINGS)) as job:
            job.stop_when_idle(idle_s=4, drain=True)
        seconds = time.monotonic() - started
        print(f"\nrollback pipeline: {len(deliveries)} records, job run {seconds:.0f} s")
        counters = {
            key[len(box.redis_prefix) + len("model:") :]: {
                name: int(value) for name, value in redis.hgetall(key).items()
            }
            for key in redis.scan_iter(match=f"{box.redis_prefix}model:*")
        }
        yield PipelineRun(box, registries, served, compute_reference(events), counters, seconds)


def _expected_counters(reference: Any) -> dict[str, dict[str, int]]:
    """``model:<version>`` as the contract implies: closed sessions by their model_version."""
    expected: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for row in reference.rows.values():
        counts = expected[row["model_version"] or "unknown"]
        counts["sessions"] += 1
        counts["negative_sessions"] += int(row["negative_feedback_count"] > 0)
        counts["flagged_sessions"] += int(row["flagged"])
    return {version: dict(counts) for version, counts in expected.items()}


def _rate(counts: dict[str, int]) -> float:
    return counts["negative_sessions"] / counts["sessions"]


def test_job_counts_closed_sessions_per_served_version(run: PipelineRun) -> None:
    expected = _expected_counters(run.reference)
    assert set(expected) == {"intent-v1", "intent-v2", "intent-fr-v1", "intent-fr-v2"}
    assert run.counters == expected
    # The generated data is what the two checks below need (not a lucky draw).
    assert expected["intent-v2"]["sessions"] >= MIN_CANARY_SESSIONS
    assert expected["intent-fr-v2"]["sessions"] >= MIN_CANARY_SESSIONS
    assert _rate(expected["intent-v2"]) - _rate(expected["intent-v1"]) > 3 * MARGIN
    assert _rate(expected["intent-fr-v2"]) - _rate(expected["intent-fr-v1"]) <= MARGIN
    # Flagged differs from negative (CTAs ignored without complaint): neither stands in for both.
    assert any(c["flagged_sessions"] > c["negative_sessions"] for c in run.counters.values())


def test_worse_canary_is_rolled_back(run: PipelineRun) -> None:
    registry, redis, prefix = run.registries["intent"], run.box.redis(), run.box.redis_prefix
    config = RollbackConfig(min_canary_sessions=MIN_CANARY_SESSIONS)
    assert registry.pointers().canary == "intent-v2"

    canary_since = registry.pointers().canary_since
    decision = check_canary(registry, redis, config, prefix)

    assert decision.action == "rollback", decision.reason
    assert decision.canary is not None and decision.stable is not None
    assert decision.canary.sessions == run.counters["intent-v2"]["sessions"]
    assert decision.canary.negative_sessions == run.counters["intent-v2"]["negative_sessions"]
    # Stable over the same window: its sessions since the canary started.
    assert decision.stable == read_outcomes(redis, prefix, "intent-v1").since(canary_since)
    pointers = registry.pointers()
    assert (pointers.stable, pointers.canary) == ("intent-v1", None)
    assert redis.hget(registry_key(prefix), "canary") == ""
    assert redis.hget(registry_key(prefix), "stable") == "intent-v1"
    log = [json.loads(entry) for entry in redis.lrange(registry_log_key(prefix), 0, -1)]
    assert [entry["action"] for entry in log][-2:] == ["rollback_canary", "auto_rollback"]
    logged = log[-1]
    assert logged["version"] == "intent-v2"
    assert logged["canary"]["sessions"] == run.counters["intent-v2"]["sessions"]
    # The log keeps rates to six decimals.
    assert logged["canary"]["negative_rate"] == pytest.approx(
        _rate(run.counters["intent-v2"]), abs=1e-6
    )
    assert logged["stable"]["negative_rate"] == pytest.approx(
        decision.stable.negative_rate, abs=1e-6
    )
    assert logged["test"]["log_statistic"] >= logged["test"]["log_threshold"]
    s3_log = registry.decisions()
    assert [d["action"] for d in s3_log][-2:] == ["rollback_canary", "auto_rollback"]
    assert s3_log[-1] == logged
    # Every shopper the canary served is back on stable.
    canary_users = [u for u, v in run.served.items() if v == "intent-v2"]
    router = ModelRouter(registry, refresh_s=0)
    assert canary_users and {router.adapter_for(u) for u in canary_users} == {"intent-v1"}
    assert check_canary(registry, redis, config, prefix).action == "no_canary"


def test_canary_no_worse_than_stable_is_kept(run: PipelineRun) -> None:
    registry, redis, prefix = run.registries["intent-fr"], run.box.redis(), run.box.redis_prefix
    canary_sessions = run.counters["intent-fr-v2"]["sessions"]
    log_before = redis.lrange(registry_log_key(prefix, "intent-fr"), 0, -1)

    young = RollbackConfig(min_canary_sessions=canary_sessions + 1)
    assert check_canary(registry, redis, young, prefix).action == "wait"
    config = RollbackConfig(min_canary_sessions=MIN_CANARY_SESSIONS)
    decision = check_canary(registry, redis, config, prefix)

    assert decision.action == "keep", decision.reason
    assert decision.canary is not None and decision.canary.sessions == canary_sessions
    pointers = registry.pointers()
    assert (pointers.stable, pointers.canary) == ("intent-fr-v1", "intent-fr-v2")
    assert redis.hget(registry_key(prefix, "intent-fr"), "canary") == "intent-fr-v2"
    assert redis.lrange(registry_log_key(prefix, "intent-fr"), 0, -1) == log_before
    assert not any(d["action"] == "auto_rollback" for d in registry.decisions())
    assert redis.exists(model_key(prefix, "intent-fr-v2"))

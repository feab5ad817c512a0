"""Feed the dashboard from the real pipeline: generated traffic -> Kafka -> feature job -> Redis.

``pipeline_flywheel(...)`` runs, in its own sandbox (topics, bucket, consumer groups,
key prefix; see ``tests/reference/job_harness.py``):

1. the registry's history written through the training code's Redis mirror
   (``training.online.mirror_registry``, the function ``Registry`` calls on every
   decision): ``intent-v2`` was stable, ``intent-v3`` replaced it, ``intent-v4`` is
   the canary for 10% of shoppers;
2. a generated day of shop traffic (``tests/reference/generator.py``: every rule of
   the contract, duplicates, out-of-order delivery, invalid records), whose messages
   carry the version the registry's router served each shopper at that time;
3. the streaming feature job on it (stop when idle, drain): sessions, ``stats:*``
   and ``model:*`` keys;
4. the sample pool's consumer on the job's flagged topic: ``pool`` and
   ``pool_samples_added``.

Nothing is written to Redis by hand except the registry mirror.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from reference.generator import GeneratedStream, generate_stream
from reference.job_harness import job_sandbox, running_job

from training.online import mirror_registry
from training.pool import PoolConsumer, PoolStore
from training.registry import Pointers, route
from training.settings import PoolConfig
from training.synthetic import INTENTS

SESSIONS = 400
SPAN_MS = 24 * 3600 * 1000  # a day of sessions, ending about an hour ago
RETIRED, STABLE, CANARY = "intent-v2", "intent-v3", "intent-v4"
CANARY_SHARE = 0.1
# Embeddings off: repeated questions by normalized text only (the sentence model would
# double the run time; its path is tested in tests/integration/test_feature_job_restart.py).
JOB_SETTINGS = {"embedding_enabled": False}


@dataclass(frozen=True)
class PipelineFlywheel:
    """What the pipeline left under ``prefix``: enough for a test to know what to look up."""

    prefix: str
    end_minute: int
    minutes: int
    flagged_session_id: str
    open_session_id: str | None  # None: the drained run closed every session
    stable: str
    canary: str
    records: int
    job_seconds: float


@dataclass(frozen=True)
class RegistryHistory:
    """When each version took over (event time), as the registry logged it."""

    stable_since_ms: int
    canary_since_ms: int

    def served(self, user_id: str, ts_ms: int) -> str:
        """The version the router gave this shopper at ``ts_ms``."""
        if ts_ms < self.stable_since_ms:
            return RETIRED
        canary = CANARY if ts_ms >= self.canary_since_ms else None
        pointers = Pointers(stable=STABLE, canary=canary, canary_share=CANARY_SHARE)
        return route(user_id, pointers)


def _mirror_registry_history(client: Any, prefix: str, history: RegistryHistory) -> None:
    """The registry decisions of the day, through the training code's Redis mirror."""
    steps = [
        (
            Pointers(stable=RETIRED, updated_ms=history.stable_since_ms - 86_400_000),
            {"action": "promote_stable", "version": RETIRED, "reason": "bootstrap"},
        ),
        (
            Pointers(stable=STABLE, updated_ms=history.stable_since_ms, stable_history=[RETIRED]),
            {
                "action": "promote_stable",
                "version": STABLE,
                "previous": RETIRED,
                "reason": "gate: +4.1 pts on the delivery-time slice",
            },
        ),
        (
            Pointers(
                stable=STABLE,
                canary=CANARY,
                canary_share=CANARY_SHARE,
                updated_ms=history.canary_since_ms,
                stable_history=[RETIRED],
            ),
            {"action": "promote_canary", "version": CANARY, "previous": None, "reason": "retrain"},
        ),
    ]
    for pointers, decision in steps:
        logged = {
            "model_name": "intent",
            "at_ms": pointers.updated_ms,
            **decision,
            "stable": pointers.stable,
            "canary": pointers.canary,
        }
        mirror_registry(client, prefix, "intent", pointers.to_dict(), logged)


def _served_by_registry(stream: GeneratedStream, history: RegistryHistory) -> None:
    """Rewrite each message's ``model_version`` to what the router served (duplicates alike)."""
    for delivery in stream.deliveries:
        if delivery.event is None:
            continue
        payload = json.loads(delivery.raw)
        if payload.get("model_version") is not None:
            payload["model_version"] = history.served(payload["user_id"], payload["ts_ms"])
            delivery.raw = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def _most_telling_flagged_session(client: Any, prefix: str) -> str:
    """The closed flagged session with the most reasons (then events): the one to look up."""
    best: tuple[int, int, str] | None = None
    for key in client.scan_iter(match=f"{prefix}session:*", count=500):
        row = client.hgetall(key)
        if row.get("flagged") != "1" or row.get("status") != "closed":
            continue
        rank = (len(row["reasons"].split(",")), int(row["event_count"]), row["session_id"])
        best = rank if best is None or rank > best else best
    if best is None:
        raise AssertionError(f"the pipeline flagged no session under {prefix}")
    return best[2]


def _delete_keys(client: Any, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])


@contextlib.contextmanager
def pipeline_flywheel(
    endpoints: Any, kafka_admin: Any, tmp_dir: Path, prefix: str, *, sessions: int = SESSIONS
) -> Iterator[PipelineFlywheel]:
    """Run the pipeline into ``prefix``; its keys, topics and bucket are removed afterwards."""
    now_ms = time.time_ns() // 1_000_000
    base_ms = now_ms - SPAN_MS - 3_600_000
    history = RegistryHistory(
        stable_since_ms=base_ms + SPAN_MS // 3, canary_since_ms=base_ms + 2 * SPAN_MS // 3
    )
    stream = generate_stream(sessions, seed=20260601, span_ms=SPAN_MS, base_ts_ms=base_ms)
    _served_by_registry(stream, history)
    with job_sandbox(endpoints, kafka_admin, tmp_dir, "dashboard") as box:
        # A readable prefix: the page shows it, and the README's screenshot comes from here.
        box.redis_prefix = prefix  # the sandbox's clean-up then deletes these keys too
        client = box.redis()
        try:
            with pytest.MonkeyPatch.context() as env:
                env.setenv("FLYWHEEL_REDIS_KEY_PREFIX", prefix)
                _mirror_registry_history(client, prefix, history)
                box.produce((d.key, d.raw) for d in stream.deliveries)
                started = time.monotonic()
                with running_job(box.context(**JOB_SETTINGS)) as job:
                    job.stop_when_idle(idle_s=4, drain=True)
                job_seconds = time.monotonic() - started
                store = PoolStore(endpoints.s3_settings().model_copy(update={"bucket": box.bucket}))
                report = PoolConsumer(
                    kafka=endpoints.kafka_settings(),
                    store=store,
                    config=PoolConfig(consumer_group=f"{box.consumer_group}-pool"),
                    labels=INTENTS,
                    topic=box.flagged_topic,
                    redis=client,
                    redis_prefix=prefix,
                ).run(idle_timeout_s=3.0)
                if report.new_samples == 0:
                    raise AssertionError(f"the pool took no samples from the job: {report}")
                yield PipelineFlywheel(
                    prefix=prefix,
                    end_minute=time.time_ns() // 60_000_000_000,
                    minutes=60,
                    flagged_session_id=_most_telling_flagged_session(client, prefix),
                    open_session_id=None,
                    stable=STABLE,
                    canary=CANARY,
                    records=len(stream.deliveries),
                    job_seconds=job_seconds,
                )
        finally:
            _delete_keys(client, prefix)
            client.close()

"""The retraining loop end to end on the real Kafka, S3 and Redis of the local stack.

bootstrap v1 -> v1 serves simulated traffic -> flagged sessions go to Kafka
(transactionally) -> ``run_loop`` consumes them into the pool, the new-samples trigger
fires, a candidate is trained, gated against v1 and promoted to canary. A bad candidate
is registered as rejected and moves nothing. The CLI drives the registry and the review
queue against the same bucket.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from schemas.flagged import FlaggedMessage
from training.classifier import Predictor
from training.loop import run_loop, train_gate_register
from training.pool import PoolStore
from training.registry import Registry
from training.settings import TrainingSettings
from training.synthetic import WEAK_SLICE
from training.traffic import flagged_session_messages

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def world(
    kafka_settings: Any,
    s3_settings: Any,
    s3_bucket: str,
    redis_settings: Any,
    redis_prefix: str,
    unique_topic: Any,
    tmp_path: Path,
) -> dict[str, Any]:
    settings = TrainingSettings.load(
        pool={"consumer_group": f"pool-{uuid.uuid4().hex[:8]}"},
        retrain={"work_dir": tmp_path / "work", "min_new_samples": 50},
        registry={"cache_dir": tmp_path / "cache"},
        trainer={"torch_threads": 1},  # see bench_training.py --threads 1,2
    )
    return {
        "settings": settings,
        "kafka": kafka_settings,
        "s3": s3_settings.model_copy(update={"bucket": s3_bucket}),
        "redis": redis_settings.client(),
        "redis_settings": redis_settings,
        "prefix": redis_prefix,
        "topic": unique_topic(partitions=2),
        "tmp": tmp_path,
    }


def _loop(world: dict[str, Any], **kwargs: Any) -> Any:
    return run_loop(
        world["settings"],
        s3=world["s3"],
        kafka=world["kafka"],
        redis=world["redis"],
        redis_prefix=world["prefix"],
        flagged_topic=world["topic"],
        idle_timeout_s=4,
        **kwargs,
    )


def _produce_flagged(world: dict[str, Any], messages: list[FlaggedMessage]) -> None:
    from confluent_kafka import Producer

    producer = Producer(
        {
            **world["kafka"].client_config(),
            "transactional.id": f"feature-job-{uuid.uuid4().hex[:8]}",
        }
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for message in messages:
        producer.produce(
            world["topic"], key=message.session_id.encode(), value=message.to_json().encode()
        )
    producer.commit_transaction(30)


def _cli_env(world: dict[str, Any]) -> dict[str, str]:
    s3 = world["s3"]
    return {
        "FLYWHEEL_S3_ENDPOINT_URL": s3.endpoint_url,
        "FLYWHEEL_S3_BUCKET": s3.bucket,
        "FLYWHEEL_S3_ACCESS_KEY_ID": s3.access_key_id.get_secret_value(),
        "FLYWHEEL_S3_SECRET_ACCESS_KEY": s3.secret_access_key.get_secret_value(),
        "FLYWHEEL_REDIS_URL": world["redis_settings"].url,
        "FLYWHEEL_REDIS_KEY_PREFIX": world["prefix"],
        "FLYWHEEL_KAFKA_BOOTSTRAP_SERVERS": world["kafka"].bootstrap_servers,
        "FLYWHEEL_KAFKA_FLAGGED_TOPIC": world["topic"],
        "FLYWHEEL_TRAINING_REGISTRY__CACHE_DIR": str(world["tmp"] / "cli-cache"),
        "FLYWHEEL_TRAINING_POOL__CONSUMER_GROUP": world["settings"].pool.consumer_group,
    }


def _cli(world: dict[str, Any], *args: str) -> Any:
    from jobs.cli import main

    return CliRunner().invoke(main, list(args), env=_cli_env(world), catch_exceptions=False)


def test_flagged_traffic_to_canary_through_the_real_stack(world: dict[str, Any]) -> None:
    settings, prefix, redis = world["settings"], world["prefix"], world["redis"]
    registry = Registry(world["s3"], settings.registry, redis=redis, redis_prefix=prefix)

    first = _loop(world)
    assert first.action == "bootstrap" and first.version == "intent-v1"
    assert registry.pointers().stable == "intent-v1"
    assert _loop(world).action == "skipped"  # nothing new in the pool yet

    v1 = Predictor.from_registry(registry)
    messages = flagged_session_messages(
        v1.predict, model_version="intent-v1", seed=1, sessions=200, edit_rate=0.1
    )
    _produce_flagged(world, messages)
    redis.hset(f"{prefix}stats:total", mapping={"sessions_closed": 400, "sessions_flagged": 90})

    second = _loop(world)
    assert second.consumed["messages"] == len(messages)
    assert second.trigger["reasons"] == ["new_samples", "flagged_rate"]
    assert second.action == "promoted_canary", second.gate
    assert (second.version, second.parent) == ("intent-v2", "intent-v1")
    pointers = registry.pointers()
    assert (pointers.stable, pointers.canary, pointers.canary_share) == (
        "intent-v1",
        "intent-v2",
        0.1,
    )
    assert redis.hget(f"{prefix}registry", "canary") == "intent-v2"

    manifest = registry.manifest("intent-v2")
    assert {o["topic"] for o in manifest["source_offsets"]} == {world["topic"]}
    pool_sources = [s for s in manifest["data_refs"]["sources"] if s["kind"] == "pool"]
    assert pool_sources and all(
        len(s["sha256"]) == 64 and s["uri"].startswith("s3://") for s in pool_sources
    )
    assert manifest["flag_stats"] == {"sessions_closed": 400, "sessions_flagged": 90}
    report = registry.eval_report("intent-v2")
    new, old = report["candidate"], report["current"]
    gain = (
        new["heldout"]["per_slice"][WEAK_SLICE]["accuracy"]
        - old["heldout"]["per_slice"][WEAK_SLICE]["accuracy"]
    )
    assert gain >= 0.20
    assert old["overall_accuracy"] - new["overall_accuracy"] <= 0.01
    assert old["core_accuracy"] - new["core_accuracy"] <= 0.01
    print(
        f"\nslice {old['heldout']['per_slice'][WEAK_SLICE]['accuracy']:.3f} -> "
        f"{new['heldout']['per_slice'][WEAK_SLICE]['accuracy']:.3f}, overall "
        f"{old['overall_accuracy']:.3f} -> {new['overall_accuracy']:.3f}, core "
        f"{old['core_accuracy']:.3f} -> {new['core_accuracy']:.3f}"
    )

    # Same pool, nothing new: the trigger counts from the last trained version.
    third = _loop(world)
    assert third.action == "skipped" and third.trigger["new_labeled_samples"] == 0

    # A deliberately bad candidate is registered as rejected and moves no pointer.
    bad_settings = settings.model_copy(
        update={"trainer": settings.trainer.model_copy(update={"epochs": 1})}
    )
    bad = train_gate_register(
        bad_settings, registry, PoolStore(world["s3"]).read_samples(), shuffle_labels=True
    )
    assert bad.action == "rejected" and bad.version == "intent-v3"
    assert registry.manifest("intent-v3")["status"] == "rejected"
    assert (registry.pointers().stable, registry.pointers().canary) == ("intent-v1", "intent-v2")
    assert registry.decisions()[-1]["action"] == "gate_reject"

    # The CLI, against the same bucket and Redis.
    status = json.loads(_cli(world, "model", "status").output)
    assert [v["status"] for v in status["versions"]] == ["bootstrap", "accepted", "rejected"]
    assert _cli(world, "retrain", "--no-consume").exit_code == 0
    missing = _cli(world, "model", "promote", "intent-v9", "--to", "stable")
    assert missing.exit_code == 1 and "VersionNotFoundError" in missing.output
    route = json.loads(_cli(world, "model", "route", "alice", "bob").output)
    assert {r["version"] for r in route.values()} <= {"intent-v1", "intent-v2"}

    # Review queue: export, "annotate" in Label Studio's export format, import back.
    review = world["tmp"] / "review.jsonl"
    assert _cli(world, "label", "export", "--out", str(review)).exit_code == 0
    tasks = [json.loads(line) for line in review.read_text().splitlines()]
    assert tasks and all(t["predictions"][0]["result"][0]["type"] == "choices" for t in tasks)
    annotated = [
        {
            **t,
            "id": i,
            "annotations": [
                {
                    "id": i,
                    "completed_by": 1,
                    "was_cancelled": False,
                    "result": [
                        {
                            "from_name": "intent",
                            "to_name": "text",
                            "type": "choices",
                            "value": {
                                "choices": [t["predictions"][0]["result"][0]["value"]["choices"][0]]
                            },
                        }
                    ],
                }
            ],
        }
        for i, t in enumerate(tasks[:10])
    ]
    export = world["tmp"] / "label-studio-export.json"
    export.write_text(json.dumps(annotated))
    before = json.loads(_cli(world, "pool", "status").output)
    imported = _cli(world, "label", "import", str(export))
    assert json.loads(imported.output)["imported"] == 10
    after = json.loads(_cli(world, "pool", "status").output)
    assert after["labeled_high"] == before["labeled_high"] + 10
    assert after["review_queue"] == before["review_queue"] - 10
    assert redis.hget(f"{prefix}pool", "labeled_high") == str(after["labeled_high"])

    # Rolling the canary back leaves stable serving everybody.
    assert json.loads(_cli(world, "model", "rollback", "--canary").output)["canary"] is None
    assert registry.pointers().stable == "intent-v1"

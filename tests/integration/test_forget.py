"""``flywheel forget --user-id``: the user leaves every store; later events are denied.

A real job run writes Parquet and Redis, the pool consumer builds the pool from the
flagged topic, a registry version stores a training set with the user's rows and a
review export holds their tasks. ``flywheel forget`` (the command line, as a user runs
it) must leave none of the user's rows and no session of theirs anywhere, keep everyone
else's, deny the user's later events (counted, never stored), and change nothing when run
again.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from reference.contract_reference import compute_reference
from reference.generator import generate_stream
from reference.job_harness import JobSandbox, job_sandbox, running_job

from features.privacy import denied_users_key, user_hash

pytestmark = [pytest.mark.integration, pytest.mark.flink]

REGISTRY_DATA = "registry/intent/versions/intent-v1/adapter/training_data.parquet"
REGISTRY_MANIFEST = "registry/intent/versions/intent-v1/manifest.json"


def _forget(box: JobSandbox, user_id: str, export: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "FLYWHEEL_S3_BUCKET": box.bucket,
        "FLYWHEEL_JOB_OUTPUT_BASE": box.output_base,
    }
    flywheel = str(Path(sys.executable).parent / "flywheel")
    return subprocess.run(
        [flywheel, "forget", "--user-id", user_id, "--export", str(export),
         "--requested-by", "privacy-team"],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def _everything(box: JobSandbox) -> dict[str, str]:
    """Every object of the sandbox's bucket but the audit records: key -> sha256."""
    client = box.endpoints.s3_settings().boto3_client()
    return {
        key: hashlib.sha256(
            client.get_object(Bucket=box.bucket, Key=key)["Body"].read()
        ).hexdigest()
        for key in box.object_keys("")
        if not key.startswith("privacy/")
    }


def _parquet(box: JobSandbox, key: str) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(box.get_object(key))).to_pylist()


def test_forget_removes_the_user_everywhere_and_denies_their_later_events(
    stack_endpoints: Any, kafka_admin: Any, tmp_path: Path
) -> None:
    from training.classifier import write_training_data
    from training.labelstudio import export_tasks, read_export, write_tasks
    from training.pool import PoolConsumer, PoolStore
    from training.settings import PoolConfig
    from training.synthetic import INTENTS

    stream = generate_stream(150, seed=77)
    reference = compute_reference(stream.events)
    flagged_users = collections.Counter(m["user_id"] for m in reference.flagged.values())
    target = flagged_users.most_common(1)[0][0]
    target_sessions = {r["session_id"] for r in reference.rows.values() if r["user_id"] == target}
    others = [r for r in reference.rows.values() if r["user_id"] != target]

    with job_sandbox(stack_endpoints, kafka_admin, tmp_path, "forget") as box:
        box.produce((d.key, d.raw) for d in stream.deliveries)
        with running_job(box.context(embedding_enabled=False)) as run:
            savepoint = run.stop_when_idle(idle_s=3, drain=True)
        s3 = stack_endpoints.s3_settings().model_copy(update={"bucket": box.bucket})
        store = PoolStore(s3, "pool")
        PoolConsumer(
            kafka=stack_endpoints.kafka_settings(), store=store,
            config=PoolConfig(consumer_group=f"pool-{uuid.uuid4().hex[:8]}"), labels=INTENTS,
            topic=box.flagged_topic, redis=box.redis(), redis_prefix=box.redis_prefix,
        ).run(idle_timeout_s=5)  # fmt: skip
        samples = store.read_samples().samples
        assert target in {s.user_id for s in samples}
        rows = [
            {"text": s.text, "label": s.predicted_intent, "origin": "pool", "slice": "flagged",
             "session_id": s.session_id, "request_id": s.request_id, "quality": s.quality,
             "split": "train"}
            for s in samples
        ]  # fmt: skip
        write_training_data(tmp_path / "training_data.parquet", rows)
        body = (tmp_path / "training_data.parquet").read_bytes()
        box.put_object(REGISTRY_DATA, body)
        manifest = {
            "version": "intent-v1",
            "files": {"training_data.parquet": hashlib.sha256(body).hexdigest()},
        }
        box.put_object(REGISTRY_MANIFEST, json.dumps(manifest).encode())
        export = tmp_path / "review.json"
        write_tasks(export_tasks(samples, include_labeled=True), export)

        first = _forget(box, target, export)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "deny list updated" in first.stdout

        # Parquet: the user's sessions gone, everyone else's all there.
        features = box.parquet_rows("flywheel/session_features")
        assert not [r for r in features if r["user_id"] == target]
        assert len(features) == len(others)
        pool_after = store.read_samples().samples
        assert pool_after and not [s for s in pool_after if s.session_id in target_sessions]
        assert len(pool_after) == len([s for s in samples if s.user_id != target])
        training = _parquet(box, REGISTRY_DATA)
        assert training and not [r for r in training if r["session_id"] in target_sessions]
        updated = json.loads(box.get_object(REGISTRY_MANIFEST))
        assert (
            updated["files"]["training_data.parquet"]
            == hashlib.sha256(box.get_object(REGISTRY_DATA)).hexdigest()
        )
        assert updated["forgotten"]
        tasks = read_export(export)
        assert tasks and not [t for t in tasks if t["data"]["session_id"] in target_sessions]
        # Redis: no session hash of theirs; the deny list has their hash, not their id.
        client = box.redis()
        for key in client.scan_iter(match=f"{box.redis_prefix}session:*"):
            assert client.hget(key, "user_id") != target
        denied = client.smembers(denied_users_key(box.redis_prefix))
        assert denied == {user_hash(target)}
        audits = box.object_keys("privacy/audit/")
        assert len(audits) == 1
        audit = box.get_object(audits[0]).decode()
        assert target not in audit and "privacy-team" in audit
        assert json.loads(audit)["removed"]["rows"]["parquet"] >= len(target_sessions)

        # Later events of the user: counted as denied, never stored.
        later = [
            {**e, "event_id": f"later-{n}", "ts_ms": e["ts_ms"] + 86_400_000}
            for n, e in enumerate(ev for ev in stream.events if ev["user_id"] == target)
        ]
        before = box.stats()
        box.produce((e["session_id"].encode(), json.dumps(e).encode()) for e in later)
        with running_job(box.context(embedding_enabled=False), savepoint=savepoint) as run:
            run.stop_when_idle(idle_s=3, drain=True)
        after = box.stats()
        assert after.get("denied", 0) - before.get("denied", 0) == len(later)
        assert after["events"] == before["events"]
        features = box.parquet_rows("flywheel/session_features")
        assert not [r for r in features if r["user_id"] == target]
        for key in client.scan_iter(match=f"{box.redis_prefix}session:*"):
            assert client.hget(key, "user_id") != target

        # The flagged topic keeps their messages until its retention ends: a pool
        # consumer reading it again from the start denies them and stores none.
        replay = PoolConsumer(
            kafka=stack_endpoints.kafka_settings(), store=store,
            config=PoolConfig(consumer_group=f"pool-{uuid.uuid4().hex[:8]}"), labels=INTENTS,
            topic=box.flagged_topic, redis=box.redis(), redis_prefix=box.redis_prefix,
        ).run(idle_timeout_s=5)  # fmt: skip
        assert replay.denied == flagged_users[target]
        assert replay.messages == len(reference.flagged)
        assert not [s for s in store.read_samples().samples if s.user_id == target]

        # Again: nothing more to remove, nothing changes.
        stored = _everything(box)
        again = _forget(box, target, export)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "deny list unchanged" in again.stdout and "rows none" in again.stdout
        assert _everything(box) == stored

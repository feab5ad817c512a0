"""Model registry on the real S3 (and Redis mirror) of the local stack."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from training.classifier import Predictor, train_intent_adapter
from training.data import base_examples
from training.errors import (
    AdapterError,
    RegistryError,
    RegistryPointerError,
    VersionNotFoundError,
)
from training.online import registry_key, registry_log_key
from training.registry import CANARY, STABLE, ModelRouter, Registry, user_bucket
from training.settings import RegistryConfig, TrainerConfig
from training.synthetic import INTENTS, base_dataset
from training.testing import tiny_bert

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three small real adapters (tiny BERT base, one epoch each, different seeds)."""
    root = tmp_path_factory.mktemp("adapters")
    base = tiny_bert(root / "tiny-bert")
    examples = base_examples(base_dataset(0, per_intent=4))
    out = []
    for seed in range(3):
        config = TrainerConfig(base_model_path=base, epochs=1, seed=seed, device="cpu")
        offsets = [
            {"topic": "flywheel.flagged", "partition": 0, "first_offset": 0, "last_offset": seed}
        ]
        result = train_intent_adapter(
            examples, root / f"a{seed}", labels=INTENTS, config=config, source_offsets=offsets
        )
        out.append(result.adapter_dir)
    return out


@pytest.fixture
def registry(
    s3_settings: Any, s3_bucket: str, redis_settings: Any, redis_prefix: str, tmp_path: Path
) -> Registry:
    return Registry(
        s3_settings.model_copy(update={"bucket": s3_bucket}),
        RegistryConfig(cache_dir=tmp_path / "cache"),
        redis=redis_settings.client(),
        redis_prefix=redis_prefix,
    )


def _objects(registry: Registry) -> list[str]:
    return sorted(registry._list(registry.root + "/"))


def test_register_writes_manifest_adapter_and_report(
    registry: Registry, adapters: list[Path]
) -> None:
    v1 = registry.register(adapters[0], status="bootstrap", eval_report={"decision": "bootstrap"})
    v2 = registry.register(
        adapters[1],
        parent=v1,
        status="accepted",
        eval_report={"decision": "promote", "candidate": {"slice_accuracy": 0.9}},
    )
    assert (v1, v2) == ("intent-v1", "intent-v2")
    assert registry.versions() == ["intent-v1", "intent-v2"]
    manifest = registry.manifest(v2)
    assert manifest["parent"] == "intent-v1" and manifest["status"] == "accepted"
    assert manifest["label_map"] == list(INTENTS)
    assert manifest["metrics"]["eval"]["slice_accuracy"] == 0.9
    assert manifest["source_offsets"][0]["last_offset"] == 1
    assert manifest["data_refs"]["training_data"] == (
        f"s3://{registry.bucket}/registry/intent/versions/intent-v2/adapter/training_data.parquet"
    )
    assert len(manifest["data_refs"]["sha256"]) == 64
    assert manifest["training_config"]["trainer"]["seed"] == 1
    keys = _objects(registry)
    assert "registry/intent/versions/intent-v2/manifest.json" in keys
    assert "registry/intent/versions/intent-v2/eval_report.json" in keys
    assert "registry/intent/versions/intent-v2/adapter/adapter_model.safetensors" in keys
    # Downloads are verified against the manifest and load as a Predictor.
    local = registry.download(v2)
    assert json.loads((local / "label_map.json").read_text())["labels"] == list(INTENTS)
    predictor = Predictor.from_registry(registry, v2)
    assert predictor.version == "intent-v2"
    assert predictor.predict(["hello"])[0].intent in INTENTS
    with pytest.raises(RegistryError, match="immutable"):
        registry.register(adapters[2], version=v2)
    with pytest.raises(VersionNotFoundError):
        registry.register(adapters[2], parent="intent-v9")


def test_promote_rollback_and_redis_mirror(
    registry: Registry, adapters: list[Path], redis_settings: Any, redis_prefix: str
) -> None:
    v1, v2, v3 = (registry.register(a) for a in adapters)
    registry.promote(v1, STABLE)
    registry.promote(v2, CANARY, reason="gate passed")
    pointers = registry.pointers()
    assert (pointers.stable, pointers.canary, pointers.canary_share) == (v1, v2, 0.10)
    redis = redis_settings.client()
    mirrored = redis.hgetall(registry_key(redis_prefix))
    assert (mirrored["stable"], mirrored["canary"], mirrored["canary_share"]) == (v1, v2, "0.1")
    # Canary -> stable, then a bad stable is rolled back to the previous one.
    registry.promote(v2, STABLE)
    assert (registry.pointers().stable, registry.pointers().canary) == (v2, None)
    registry.promote(v3, STABLE)
    assert registry.rollback(STABLE, reason="bad release").stable == v2
    assert registry.rollback(STABLE).stable == v1
    with pytest.raises(RegistryPointerError, match="no previous stable"):
        registry.rollback(STABLE)
    registry.promote(v3, CANARY)
    assert registry.rollback(CANARY).canary is None
    with pytest.raises(RegistryPointerError, match="no canary"):
        registry.rollback(CANARY)
    log = [json.loads(x) for x in redis.lrange(registry_log_key(redis_prefix), 0, -1)]
    actions = [entry["action"] for entry in log]
    assert actions[-4:] == [
        "rollback_stable",
        "rollback_stable",
        "promote_canary",
        "rollback_canary",
    ]
    assert log[-4]["reason"] == "bad release" and log[-4]["restored"] == v2
    s3_log = registry.decisions()
    assert [d["action"] for d in s3_log][-4:] == actions[-4:]
    assert registry.status()["pointers"]["stable"] == v1


def test_bad_pointers_and_versions_are_clear_errors_and_change_nothing(
    registry: Registry, adapters: list[Path]
) -> None:
    v1 = registry.register(adapters[0])
    registry.promote(v1, STABLE)
    before = registry.pointers()
    with pytest.raises(VersionNotFoundError, match="intent-v7"):
        registry.promote("intent-v7", CANARY)
    with pytest.raises(VersionNotFoundError):
        registry.promote("intent-v7", STABLE)
    with pytest.raises(RegistryError, match="already the stable"):
        registry.promote(v1, CANARY)
    assert registry.pointers() == before
    # A version whose adapter files vanished cannot be promoted.
    v2 = registry.register(adapters[1])
    registry.client.delete_object(
        Bucket=registry.bucket,
        Key=f"{registry.version_prefix(v2)}/adapter/adapter_model.safetensors",
    )
    with pytest.raises(AdapterError, match="adapter_model.safetensors"):
        registry.promote(v2, STABLE)
    assert registry.pointers() == before
    # A corrupt file in the registry is caught by the manifest's sha256 on download.
    v3 = registry.register(adapters[2])
    registry.client.put_object(
        Bucket=registry.bucket,
        Key=f"{registry.version_prefix(v3)}/adapter/label_map.json",
        Body=b'{"labels": ["x", "y"]}',
    )
    with pytest.raises(AdapterError, match="sha256"):
        registry.download(v3)
    # A pointer file naming a missing version: readers get a clear error, stable stays put.
    broken = {**before.to_dict(), "canary": "intent-v42"}
    registry.client.put_object(
        Bucket=registry.bucket,
        Key=f"{registry.root}/pointers.json",
        Body=json.dumps(broken).encode(),
    )
    with pytest.raises(RegistryPointerError, match="intent-v42"):
        registry.pointers(validate=True)
    with pytest.raises(RegistryPointerError):
        ModelRouter(registry).adapter_for("alice")
    assert registry.pointers().stable == v1


def test_router_sends_the_canary_share_to_the_canary(
    registry: Registry, adapters: list[Path]
) -> None:
    v1, v2 = registry.register(adapters[0]), registry.register(adapters[1])
    with pytest.raises(RegistryPointerError, match="no stable"):
        ModelRouter(registry).adapter_for("alice")
    registry.promote(v1, STABLE)
    registry.promote(v2, CANARY)
    clock = [0.0]
    router = ModelRouter(registry, refresh_s=30, clock=lambda: clock[0])
    users = [f"user-{i}" for i in range(2000)]
    served = {u: router.adapter_for(u) for u in users}
    assert all(served[u] == (v2 if user_bucket(u) < 1000 else v1) for u in users)
    assert 150 < sum(v == v2 for v in served.values()) < 250
    registry.set_canary_share(0.5)
    assert router.adapter_for(users[0]) == served[users[0]]  # cached until the refresh
    clock[0] = 31.0
    assert sum(router.adapter_for(u) == v2 for u in users) > 900
    registry.rollback(CANARY)
    clock[0] = 62.0
    assert {router.adapter_for(u) for u in users} == {v1}


def test_registry_objects_hold_no_personal_data(
    registry: Registry, adapters: list[Path], tmp_path: Path
) -> None:
    """Contract section 6: pool texts that were not redacted (an older pool) are redacted
    in the training rows stored with the version, user patterns included; no object of
    the version holds a raw value."""
    import io

    import pyarrow.parquet as pq

    from features.redaction import Redactor
    from training.data import TrainingExample

    raw_values = [
        "li.wei88@example.com", "13812345678", "4111 1111 1111 1111", "11010519491231002X",
        "ab12Cd34Ef56", "192.168.31.7", "VIP-204811",
    ]  # fmt: skip
    texts = [
        "我的手机13812345678, mail li.wei88@example.com",
        "card 4111 1111 1111 1111 and 身份证11010519491231002X",
        "https://x.example/r?token=ab12Cd34Ef56 from 192.168.31.7",
        "Member VIP-204811 asks when it arrives",
    ]
    pool = [
        TrainingExample(text=t, label=INTENTS[n % len(INTENTS)], origin="pool", session_id=f"s{n}")
        for n, t in enumerate(texts)
    ]
    examples = base_examples(base_dataset(0, per_intent=2)) + pool
    config = TrainerConfig(base_model_path=adapters[0].parent / "tiny-bert", epochs=1, device="cpu")
    result = train_intent_adapter(
        examples, tmp_path / "pii", labels=INTENTS, config=config,
        redactor=Redactor((r"VIP-\d{6}",)),
    )  # fmt: skip
    version = registry.register(result.adapter_dir, status="candidate")

    contents = []
    for key in _objects(registry):
        body = registry.client.get_object(Bucket=registry.bucket, Key=key)["Body"].read()
        if key.endswith(".parquet"):
            contents.append(pq.read_table(io.BytesIO(body)).to_pandas().to_json(force_ascii=False))
        else:
            contents.append(body.decode("utf-8", errors="replace"))
    everything = "\n".join(contents)
    assert version in everything
    leaked = [v for v in raw_values if v in everything]
    assert not leaked, f"raw personal data in the registry: {leaked}"
    for placeholder in ("<PHONE>", "<EMAIL>", "<CARD>", "<ID>", "<URL_SECRET>", "<IP>"):
        assert placeholder in everything, placeholder


def _slow_reads(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """Widen the read-decide-write window of pointer moves so that writers overlap."""
    read = registry.pointers

    def slow(**kwargs: Any) -> Any:
        pointers = read(**kwargs)
        time.sleep(0.4)
        return pointers

    monkeypatch.setattr(registry, "pointers", slow)


def _race(*moves: Callable[[], Any]) -> None:
    errors: list[BaseException] = []

    def run(move: Callable[[], Any]) -> None:
        try:
            move()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(m,)) for m in moves]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


def _writers(
    s3_settings: Any, s3_bucket: str, redis: Any, redis_prefix: str, tmp_path: Path
) -> list[Registry]:
    s3 = s3_settings.model_copy(update={"bucket": s3_bucket})
    return [
        Registry(s3, RegistryConfig(cache_dir=tmp_path / f"c{n}"), redis=redis,
                 redis_prefix=redis_prefix)
        for n in range(3)
    ]  # fmt: skip


def test_concurrent_writers_take_turns_and_lose_no_change(
    s3_settings: Any, s3_bucket: str, redis_settings: Any, redis_prefix: str,
    adapters: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Two retrains registering at once, a promotion and a share change at once, and a
    rollback during a promotion: with the lease in Redis every change survives."""
    first, second, third = _writers(
        s3_settings, s3_bucket, redis_settings.client(), redis_prefix, tmp_path
    )
    for writer in (first, second, third):
        _slow_reads(writer, monkeypatch)
    v1 = first.register(adapters[0], status="bootstrap")
    first.promote(v1, STABLE)

    names: list[str] = []
    _race(
        lambda: names.append(first.register(adapters[1], status="accepted")),
        lambda: names.append(second.register(adapters[2], status="accepted")),
    )
    assert sorted(names) == ["intent-v2", "intent-v3"]
    assert first.versions() == ["intent-v1", "intent-v2", "intent-v3"]
    assert {first.manifest(n)["status"] for n in names} == {"accepted"}

    _race(lambda: first.promote("intent-v2", CANARY), lambda: second.set_canary_share(0.5))
    pointers = third.pointers()
    assert (pointers.canary, pointers.canary_share) == ("intent-v2", 0.5)

    _race(lambda: first.promote("intent-v3", STABLE), lambda: second.rollback(CANARY))
    pointers = third.pointers()
    assert pointers.stable == "intent-v3" and pointers.canary is None
    assert pointers.stable_history == ["intent-v1"]
    actions = [d["action"] for d in third.decisions()]
    assert {"promote_stable", "rollback_canary", "canary_share", "promote_canary"} <= set(actions)


def test_without_the_lease_concurrent_pointer_moves_lose_a_change(
    s3_settings: Any, s3_bucket: str, adapters: list[Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The control: the same race without Redis (no lease) loses one of the two changes,
    which is what the lease prevents."""
    s3 = s3_settings.model_copy(update={"bucket": s3_bucket})
    first, second = (Registry(s3, RegistryConfig(cache_dir=tmp_path / f"n{n}")) for n in range(2))
    v1 = first.register(adapters[0], status="bootstrap")
    first.promote(v1, STABLE)
    v2 = first.register(adapters[1], status="accepted")
    for writer in (first, second):
        _slow_reads(writer, monkeypatch)
    _race(lambda: first.promote(v2, CANARY), lambda: second.set_canary_share(0.5))
    pointers = first.pointers()
    assert (pointers.canary, pointers.canary_share) != (v2, 0.5)


def test_a_lease_left_by_a_dead_writer_expires(
    s3_settings: Any, s3_bucket: str, redis_settings: Any, redis_prefix: str,
    adapters: list[Path], tmp_path: Path,
) -> None:  # fmt: skip
    s3 = s3_settings.model_copy(update={"bucket": s3_bucket})
    config = RegistryConfig(cache_dir=tmp_path / "c", lock_lease="PT1S", lock_timeout="PT5S")
    redis = redis_settings.client()
    registry = Registry(s3, config, redis=redis, redis_prefix=redis_prefix)
    redis.set(f"{redis_prefix}registry:lock:intent", "a-writer-that-died", px=1000)
    v1 = registry.register(adapters[0], status="bootstrap")  # waits about 1 s, then goes
    assert registry.versions() == [v1]
    redis.set(f"{redis_prefix}registry:lock:intent", "a-writer-still-working", px=60_000)
    quick = Registry(
        s3, RegistryConfig(cache_dir=tmp_path / "q", lock_timeout="PT1S"), redis=redis,
        redis_prefix=redis_prefix,
    )  # fmt: skip
    with pytest.raises(RegistryError, match="locked by another writer"):
        quick.promote(v1, STABLE)
    redis.delete(f"{redis_prefix}registry:lock:intent")

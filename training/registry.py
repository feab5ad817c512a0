"""Model registry on S3, with stable/canary pointers (the router is ``training.router``).

Layout under ``s3://<bucket>/<registry.prefix>/<model_name>/``::

    pointers.json                           {"stable", "canary", "canary_share",
                                             "updated_ms", "stable_history"}
    versions/<version>/adapter/...          adapter weights, adapter_config.json,
                                            label_map.json, training_config.json,
                                            data_ref.json, source_offsets.json,
                                            training_data.parquet
    versions/<version>/eval_report.json     the gate's report (when there was a gate)
    versions/<version>/manifest.json        written last: a version exists iff its
                                            manifest does
    log/<updated_ms>-<action>-<version>.json  every pointer decision

Versions are named ``<model_name>-v<N>`` (``intent-v1``, ``intent-v2``, ...); that name is
what app servers put in events' ``model_version``. Pointers are mirrored to Redis
(``fw:registry`` hash, ``fw:registry:log`` list) when a Redis client is given.

Writers (new versions, pointer moves) take turns under a lease in Redis
(``RegistryLock``); without Redis one writer at a time is assumed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from connectors.settings import S3Settings, to_ms
from schemas.redis_layout import RedisKeys
from training.classifier import (
    DATA_REF_FILE,
    LABEL_MAP_FILE,
    SOURCE_OFFSETS_FILE,
    TRAINING_CONFIG_FILE,
    TRAINING_DATA_FILE,
    adapter_task,
    check_adapter_dir,
    read_label_map,
)
from training.errors import (
    AdapterError,
    RegistryError,
    RegistryPointerError,
    VersionNotFoundError,
)
from training.online import mirror_registry
from training.settings import RegistryConfig

log = logging.getLogger(__name__)
_T = TypeVar("_T")

CANARY = "canary"
STABLE = "stable"


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True, kw_only=True)
class Pointers:
    """Which version serves whom."""

    stable: str | None = None
    canary: str | None = None
    canary_share: float = 0.10
    updated_ms: int = 0
    stable_history: list[str] = field(default_factory=list)
    # Stable's fw:model counters when the canary started: rollback compares the same window.
    canary_since: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> Pointers:
        return cls(
            stable=payload.get("stable") or None,
            canary=payload.get("canary") or None,
            canary_share=float(payload.get("canary_share", 0.10)),
            updated_ms=int(payload.get("updated_ms", 0)),
            stable_history=list(payload.get("stable_history") or []),
            canary_since=dict(payload["canary_since"]) if payload.get("canary_since") else None,
        )


# Deletes the lock only if it still holds our token (a lease that expired and was taken
# by another writer must not be released by us).
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RegistryLock:
    """A lease in Redis that serializes the registry's writers (``SET NX PX``).

    Creating a version and moving a pointer read, decide and write S3 objects; two
    writers at once (two retrains, a rollback during a promotion) would overwrite each
    other's changes. S3 servers without conditional writes (S3Proxy, older MinIO) cannot
    compare-and-set, so the writers take turns under this lease instead.
    """

    def __init__(self, redis: Any, key: str, *, lease_ms: int, timeout_ms: int) -> None:
        self.redis = redis
        self.key = key
        self.lease_ms = lease_ms
        self.timeout_ms = timeout_ms
        self._depth = 0
        self._token = ""
        self._held_by = threading.get_ident()

    def __enter__(self) -> RegistryLock:
        if self._depth and self._held_by == threading.get_ident():
            self._depth += 1  # re-entrant within one writer (promote inside register...)
            return self
        import uuid

        token = uuid.uuid4().hex
        deadline = time.monotonic() + self.timeout_ms / 1000
        while not self.redis.set(self.key, token, nx=True, px=self.lease_ms):
            if time.monotonic() >= deadline:
                holder = self.redis.get(self.key)
                raise RegistryError(
                    f"the registry is locked by another writer ({self.key} = {holder!r}) for "
                    f"more than {self.timeout_ms / 1000:.0f} s; if that writer died, the lock "
                    f"frees itself within {self.lease_ms / 1000:.0f} s"
                )
            time.sleep(0.05)
        self._token, self._depth, self._held_by = token, 1, threading.get_ident()
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.redis.eval(_RELEASE_LUA, 1, self.key, self._token)


def _writes(method: Callable[..., _T]) -> Callable[..., _T]:
    """Run a registry method under the registry's write lock."""

    @functools.wraps(method)
    def locked(self: Registry, *args: Any, **kwargs: Any) -> _T:
        with self.writing():
            return method(self, *args, **kwargs)

    return locked


class Registry:
    """Versions, manifests and pointers of one model on S3."""

    def __init__(
        self,
        s3: S3Settings,
        config: RegistryConfig | None = None,
        *,
        redis: Any = None,
        redis_prefix: str = "fw:",
        client: Any = None,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self.s3 = s3
        self.config = config or RegistryConfig()
        self.bucket = s3.bucket
        self.model_name = self.config.model_name
        self.root = f"{self.config.prefix}/{self.model_name}"
        self.client = client or s3.boto3_client()
        self.redis = redis
        self.redis_prefix = redis_prefix
        self.clock_ms = clock_ms
        self._lock = (
            RegistryLock(
                redis,
                RedisKeys(redis_prefix).registry_lock(self.model_name),
                lease_ms=to_ms(self.config.lock_lease),
                timeout_ms=to_ms(self.config.lock_timeout),
            )
            if redis is not None
            else contextlib.nullcontext()
        )

    def writing(self) -> contextlib.AbstractContextManager[Any]:
        """Hold the registry's write lock (no lock without Redis: one writer at a time)."""
        return self._lock

    # ------------------------------------------------------------- S3 helpers

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def version_prefix(self, version: str) -> str:
        return f"{self.root}/versions/{version}"

    def _put_json(self, key: str, payload: Any) -> None:
        body = json.dumps(payload, indent=2, sort_keys=True, default=str).encode("utf-8")
        self.client.put_object(
            Bucket=self.bucket, Key=key, Body=body, ContentType="application/json"
        )

    def _get(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise

    def _list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            # A key ending in "/" is a folder marker (s3a, consoles), never an object of ours.
            keys += [o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith("/")]
        return keys

    # ------------------------------------------------------------- versions

    def versions(self) -> list[str]:
        """Registered versions, oldest first."""
        pattern = re.compile(rf"^{re.escape(self.root)}/versions/([^/]+)/manifest\.json$")
        names = [
            m.group(1) for k in self._list(f"{self.root}/versions/") if (m := pattern.match(k))
        ]
        return sorted(names, key=self._number)

    def _number(self, version: str) -> int:
        match = re.fullmatch(rf"{re.escape(self.model_name)}-v(\d+)", version)
        return int(match.group(1)) if match else -1

    def next_version(self) -> str:
        numbers = [self._number(v) for v in self.versions()]
        return f"{self.model_name}-v{max(numbers, default=0) + 1}"

    def exists(self, version: str) -> bool:
        return self._get(f"{self.version_prefix(version)}/manifest.json") is not None

    def manifest(self, version: str) -> dict[str, Any]:
        """The version's manifest, or VersionNotFoundError."""
        body = self._get(f"{self.version_prefix(version)}/manifest.json")
        if body is None:
            raise VersionNotFoundError(
                f"{self.model_name} version {version!r} is not in the registry "
                f"({self.uri(self.root)})"
            )
        return dict(json.loads(body))

    def eval_report(self, version: str) -> dict[str, Any] | None:
        body = self._get(f"{self.version_prefix(version)}/eval_report.json")
        return None if body is None else dict(json.loads(body))

    def latest(self) -> str | None:
        versions = self.versions()
        return versions[-1] if versions else None

    @_writes
    def register(
        self,
        adapter_dir: Path | str,
        *,
        parent: str | None = None,
        eval_report: Mapping[str, Any] | None = None,
        status: str = "candidate",
        extra: Mapping[str, Any] | None = None,
        version: str | None = None,
    ) -> str:
        """Upload an adapter directory as a new version; returns its name.

        The adapter is checked first (AdapterError), the manifest written last.
        """
        adapter = check_adapter_dir(adapter_dir)
        training_config = _read_json(adapter / TRAINING_CONFIG_FILE)
        labels = read_label_map(adapter) if adapter_task(training_config) == "intent" else None
        if parent is not None and not self.exists(parent):
            raise VersionNotFoundError(f"parent version {parent!r} is not in the registry")
        version = version or self.next_version()
        if self.exists(version):
            raise RegistryError(f"version {version!r} already exists; versions are immutable")
        prefix = self.version_prefix(version)
        files: dict[str, str] = {}
        for path in sorted(p for p in adapter.rglob("*") if p.is_file()):
            rel = path.relative_to(adapter).as_posix()
            body = path.read_bytes()
            files[rel] = hashlib.sha256(body).hexdigest()
            self.client.put_object(Bucket=self.bucket, Key=f"{prefix}/adapter/{rel}", Body=body)
        if eval_report is not None:
            self._put_json(f"{prefix}/eval_report.json", eval_report)
        data_ref = (
            _read_json(adapter / DATA_REF_FILE) if (adapter / DATA_REF_FILE).is_file() else {}
        )
        if data_ref and (adapter / TRAINING_DATA_FILE).is_file():
            data_ref = {
                **data_ref,
                "training_data": self.uri(f"{prefix}/adapter/{TRAINING_DATA_FILE}"),
            }
        offsets = (
            _read_json(adapter / SOURCE_OFFSETS_FILE)
            if (adapter / SOURCE_OFFSETS_FILE).is_file()
            else []
        )
        manifest = {
            "version": version,
            "model_name": self.model_name,
            "task": training_config.get("task", "intent"),
            "created_ms": self.clock_ms(),
            "parent": parent,
            "status": status,
            "label_map": labels,
            "metrics": {
                "training": training_config.get("stats", {}),
                "eval": _eval_summary(eval_report),
            },
            "data_refs": data_ref,
            "source_offsets": offsets,
            "training_config": training_config,
            "eval_report": self.uri(f"{prefix}/eval_report.json")
            if eval_report is not None
            else None,
            "adapter_uri": self.uri(f"{prefix}/adapter/"),
            "files": files,
            **(dict(extra) if extra else {}),
        }
        self._put_json(f"{prefix}/manifest.json", manifest)
        self._log({"action": "register", "version": version, "status": status, "parent": parent})
        return version

    def download(self, version: str, dest: Path | str | None = None) -> Path:
        """The version's adapter directory on local disk, verified against the manifest."""
        manifest = self.manifest(version)
        target = (
            Path(dest)
            if dest is not None
            else Path(self.config.cache_dir) / self.model_name / version
        )
        files: Mapping[str, str] = manifest.get("files") or {}
        if not files:
            raise AdapterError(f"{version}: the manifest lists no adapter files")
        if all(_sha256_file(target / rel) == digest for rel, digest in files.items()):
            return target
        prefix = self.version_prefix(version)
        target.mkdir(parents=True, exist_ok=True)
        for rel, digest in files.items():
            body = self._get(f"{prefix}/adapter/{rel}")
            if body is None:
                raise AdapterError(
                    f"{version}: adapter file {rel} is missing from {self.uri(prefix)}"
                )
            if hashlib.sha256(body).hexdigest() != digest:
                raise AdapterError(
                    f"{version}: adapter file {rel} does not match its manifest sha256 (corrupt)"
                )
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            (target / rel).write_bytes(body)
        return check_adapter_dir(target)

    def _check_files_present(self, version: str) -> None:
        manifest = self.manifest(version)
        present = set(self._list(f"{self.version_prefix(version)}/adapter/"))
        missing = [
            rel
            for rel in manifest.get("files") or {}
            if f"{self.version_prefix(version)}/adapter/{rel}" not in present
        ]
        if manifest.get("task", "intent") == "intent" and LABEL_MAP_FILE not in (
            manifest.get("files") or {}
        ):
            missing.append(LABEL_MAP_FILE)
        if missing:
            raise AdapterError(f"{version}: adapter files missing in the registry: {missing}")

    # ------------------------------------------------------------- pointers

    def _pointers_key(self) -> str:
        return f"{self.root}/pointers.json"

    def pointers(self, *, validate: bool = False) -> Pointers:
        """Current pointers; ``validate`` raises RegistryPointerError for a missing version."""
        body = self._get(self._pointers_key())
        pointers = (
            Pointers(canary_share=self.config.canary_share)
            if body is None
            else Pointers.from_dict(json.loads(body))
        )
        if validate:
            for role in (STABLE, CANARY):
                name = getattr(pointers, role)
                if name and not self.exists(name):
                    raise RegistryPointerError(
                        f"the {role} pointer names {name!r}, which is not in the registry; "
                        f"repair it with `flywheel model promote <version> --to {role}`"
                    )
        return pointers

    def _save_pointers(self, pointers: Pointers, decision: dict[str, Any]) -> Pointers:
        now = self.clock_ms()
        pointers = Pointers(**{**pointers.to_dict(), "updated_ms": now})
        self._put_json(self._pointers_key(), pointers.to_dict())
        self._log(
            {**decision, "at_ms": now, "stable": pointers.stable, "canary": pointers.canary},
            pointers,
        )
        return pointers

    @_writes
    def promote(self, version: str, to: str = CANARY, *, reason: str = "") -> Pointers:
        """Point ``canary`` or ``stable`` at a registered version."""
        if to not in (CANARY, STABLE):
            raise ValueError(f"promote to 'canary' or 'stable', not {to!r}")
        self._check_files_present(version)  # raises VersionNotFoundError / AdapterError first
        current = self.pointers()
        if to == CANARY:
            if version == current.stable:
                raise RegistryError(f"{version} is already the stable version")
            updated = Pointers(
                **{
                    **current.to_dict(),
                    "canary": version,
                    "canary_since": self._stable_counts(current),
                }
            )
        else:
            history = list(current.stable_history)
            if current.stable and current.stable != version:
                history.append(current.stable)
            canary = None if current.canary == version else current.canary
            updated = Pointers(
                **{
                    **current.to_dict(),
                    "stable": version,
                    "canary": canary,
                    "stable_history": history,
                }
            )
        return self._save_pointers(
            updated,
            {
                "action": f"promote_{to}",
                "version": version,
                "previous": getattr(current, to),
                "reason": reason,
            },
        )

    def _stable_counts(self, pointers: Pointers) -> dict[str, int] | None:
        """Stable's session counters now (None without Redis or a stable version)."""
        if self.redis is None or not pointers.stable:
            return None
        from training.online import model_key, read_hash_ints

        key = model_key(self.redis_prefix, pointers.stable)
        return read_hash_ints(self.redis, key, ("sessions", "negative_sessions"))

    @_writes
    def rollback(self, which: str = CANARY, *, reason: str = "") -> Pointers:
        """Canary: stop serving it. Stable: restore the previous stable version."""
        current = self.pointers()
        if which == CANARY:
            if not current.canary:
                raise RegistryPointerError("there is no canary to roll back")
            updated = Pointers(**{**current.to_dict(), "canary": None})
            return self._save_pointers(
                updated, {"action": "rollback_canary", "version": current.canary, "reason": reason}
            )
        if which != STABLE:
            raise ValueError(f"roll back 'canary' or 'stable', not {which!r}")
        if not current.stable_history:
            raise RegistryPointerError(
                f"no previous stable version to roll back to (stable is {current.stable!r})"
            )
        previous = current.stable_history[-1]
        if not self.exists(previous):
            raise RegistryPointerError(
                f"the previous stable version {previous!r} is not in the registry; nothing changed"
            )
        updated = Pointers(
            **{
                **current.to_dict(),
                "stable": previous,
                "stable_history": current.stable_history[:-1],
            }
        )
        return self._save_pointers(
            updated,
            {
                "action": "rollback_stable",
                "version": current.stable,
                "restored": previous,
                "reason": reason,
            },
        )

    @_writes
    def set_canary_share(self, share: float) -> Pointers:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"canary share must be within 0..1, got {share}")
        current = self.pointers()
        updated = Pointers(**{**current.to_dict(), "canary_share": share})
        return self._save_pointers(
            updated, {"action": "canary_share", "share": share, "previous": current.canary_share}
        )

    # ------------------------------------------------------------- log

    def _log(self, decision: dict[str, Any], pointers: Pointers | None = None) -> None:
        now = decision.get("at_ms") or self.clock_ms()
        decision = {"model_name": self.model_name, "at_ms": now, **decision}
        name = f"{now:013d}-{decision['action']}-{decision.get('version') or 'none'}.json"
        self._put_json(f"{self.root}/log/{name}", decision)
        if self.redis is not None:
            mirror_registry(
                self.redis,
                self.redis_prefix,
                self.model_name,
                (pointers or self.pointers()).to_dict(),
                decision,
            )

    def log_decision(self, decision: Mapping[str, Any]) -> None:
        """Record a decision that moved no pointer (e.g. a gate rejection)."""
        self._log(dict(decision))

    def decisions(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest ``limit`` logged decisions, oldest first."""
        keys = sorted(self._list(f"{self.root}/log/"))[-limit:]
        return [json.loads(self._get(k) or b"{}") for k in keys]

    def status(self) -> dict[str, Any]:
        pointers = self.pointers()
        return {
            "model_name": self.model_name,
            "registry": self.uri(self.root),
            "pointers": pointers.to_dict(),
            "versions": [
                {
                    "version": v,
                    "status": (m := self.manifest(v)).get("status"),
                    "parent": m.get("parent"),
                    "created_ms": m.get("created_ms"),
                    "eval": m.get("metrics", {}).get("eval"),
                }
                for v in self.versions()
            ],
        }


def _eval_summary(report: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not report:
        return None
    candidate = report.get("candidate") or {}
    current = report.get("current") or {}
    return {
        "decision": report.get("decision"),
        "overall_accuracy": candidate.get("overall_accuracy"),
        "core_accuracy": candidate.get("core_accuracy"),
        "slice_accuracy": candidate.get("slice_accuracy"),
        "current_version": current.get("version"),
        "current_overall_accuracy": current.get("overall_accuracy"),
        "current_slice_accuracy": current.get("slice_accuracy"),
    }


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{path} is not valid JSON ({exc})") from exc


def _sha256_file(path: Path) -> str | None:
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


# The router (what app servers call) has its own module; imported here for callers of
# ``training.registry.ModelRouter``.
from training.router import BUCKETS, ModelRouter, route, user_bucket  # noqa: E402

__all__ = [
    "BUCKETS",
    "CANARY",
    "ModelRouter",
    "Pointers",
    "Registry",
    "STABLE",
    "route",
    "user_bucket",
]

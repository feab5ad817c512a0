"""``flywheel forget --user-id ID``: remove a user everywhere we store, deny them from now on.

Contract section 6. In order:

1. the user's hash goes on the deny list (Redis set ``<prefix>privacy:denied_users``),
   so the feature job and the pool consumer drop (and count) their events from now on,
   and a session of theirs that is still open closes without output;
2. Redis: every ``<prefix>session:<id>`` hash whose ``user_id`` is theirs is deleted;
3. every Parquet and JSON Lines object under the Parquet bases (the job's output base by
   default: session features, the backfill's flagged records and dead letters), the sample
   pool and the registry's stored training sets is read, and rewritten without the user's
   rows (rows with their ``user_id``, or with the ``session_id`` of one of their
   sessions); a file left empty is deleted; a registry manifest gets the new sha256 of a
   rewritten training set and a ``forgotten`` entry;
4. review exports given with ``--export`` are rewritten the same way;
5. an audit record (request id, who, when, what was removed: counts only, no personal
   data) is written to ``s3://<bucket>/privacy/audit/``.

Running it again finds nothing more to remove. What it cannot reach: the raw events and
dead-letter topics (each under its retention), Flink checkpoints (until state expires or
the next checkpoints replace them), copies outside the configured stores.
"""

from __future__ import annotations

import getpass
import hashlib
import io
import json
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from features.privacy import denied_users_key, user_hash
from schemas.redis_layout import RedisKeys

AUDIT_PREFIX = "privacy/audit"
PARQUET_MAGIC = b"PAR1"


class _Objects:
    """Objects under one base (``s3://bucket/prefix`` or a local folder): list, read, write."""

    def __init__(self, base: str, s3_client_factory: Any) -> None:
        parts = urlsplit(base)
        self.base = base.rstrip("/")
        if parts.scheme in ("s3", "s3a"):
            self.bucket: str | None = parts.netloc
            self.prefix = parts.path.strip("/")
            self.client = s3_client_factory()
        else:
            self.bucket = None
            self.root = Path(parts.path if parts.scheme == "file" else base)

    def keys(self) -> Iterator[str]:
        if self.bucket is None:
            if self.root.is_dir():
                yield from (str(p) for p in sorted(self.root.rglob("*")) if p.is_file())
            return
        paginator = self.client.get_paginator("list_objects_v2")
        prefix = self.prefix + "/" if self.prefix else ""
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                if not item["Key"].endswith("/"):
                    yield item["Key"]

    def read(self, key: str) -> bytes:
        if self.bucket is None:
            return Path(key).read_bytes()
        return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def write(self, key: str, body: bytes) -> None:
        if self.bucket is None:
            Path(key).write_bytes(body)
        else:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body)

    def delete(self, key: str) -> None:
        if self.bucket is None:
            Path(key).unlink(missing_ok=True)
        else:
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def name(self, key: str) -> str:
        return key if self.bucket is None else f"s3://{self.bucket}/{key}"


@dataclass
class ForgetReport:
    """What one ``forget`` removed (counts only: it becomes the audit record)."""

    request_id: str
    newly_denied: bool = False
    redis_keys: int = 0
    rows: dict[str, int] = field(default_factory=dict)  # store -> rows removed
    files_rewritten: int = 0
    files_deleted: int = 0
    exports_rewritten: int = 0

    def audit(self, requested_by: str, at_ms: int) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "action": "forget_user",
            "requested_by": requested_by,
            "at_ms": at_ms,
            "newly_denied": self.newly_denied,
            "removed": {
                "redis_keys": self.redis_keys,
                "rows": dict(sorted(self.rows.items())),
                "files_rewritten": self.files_rewritten,
                "files_deleted": self.files_deleted,
                "exports_rewritten": self.exports_rewritten,
            },
        }


def _mentions(value: Any, user_id: str, sessions: set[str]) -> bool:
    """Whether a JSON value holds the user's id or one of their sessions, at any depth."""
    if isinstance(value, dict):
        if value.get("user_id") == user_id or value.get("session_id") in sessions:
            return True
        return any(_mentions(v, user_id, sessions) for v in value.values())
    if isinstance(value, list):
        return any(_mentions(v, user_id, sessions) for v in value)
    return False


def _raw_mentions(line: dict[str, Any], pattern: re.Pattern[str]) -> bool:
    raw = line.get("raw") or line.get("message")
    return isinstance(raw, str) and pattern.search(raw) is not None


class Forgetter:
    """Removes one user from every store it is given (see the module docstring)."""

    def __init__(self, user_id: str, s3_client_factory: Any) -> None:
        if not user_id.strip():
            raise click.UsageError("--user-id must not be empty")
        self.user_id = user_id
        self.s3_client_factory = s3_client_factory
        self.report = ForgetReport(request_id=uuid.uuid4().hex)
        self.sessions: set[str] = set()
        # The id inside a raw JSON text (a dead letter's or a rejected record's `raw`).
        self._raw = re.compile(r'"user_id"\s*:\s*' + re.escape(json.dumps(user_id)))

    # --- Redis -------------------------------------------------------------------------

    def deny(self, redis: Any, prefix: str) -> None:
        self.report.newly_denied = bool(
            redis.sadd(denied_users_key(prefix), user_hash(self.user_id))
        )

    def forget_redis(self, redis: Any, prefix: str) -> None:
        keys = RedisKeys(prefix)
        for key in redis.scan_iter(match=keys.session_pattern, count=1000):
            if redis.type(key) == "hash" and redis.hget(key, "user_id") == self.user_id:
                self.sessions.add(str(key)[len(keys.session("")) :])
                self.report.redis_keys += redis.delete(key)

    # --- files -------------------------------------------------------------------------

    def collect_sessions(self, bases: Iterable[str]) -> None:
        """The user's session ids, from every Parquet file with user_id and session_id."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        for base in bases:
            objects = _Objects(base, self.s3_client_factory)
            for key in objects.keys():
                if key.rsplit("/", 1)[-1].startswith((".", "_")) or "/checkpoints/" in key:
                    continue
                data = objects.read(key)
                if not data.startswith(PARQUET_MAGIC):
                    continue
                table = pq.read_table(io.BytesIO(data))
                if {"user_id", "session_id"} <= set(table.column_names):
                    mask = pc.equal(table.column("user_id"), self.user_id)
                    ids = table.filter(pc.fill_null(mask, False)).column("session_id")
                    self.sessions.update(str(s) for s in ids.to_pylist() if s is not None)

    def forget_files(self, base: str, store: str) -> None:
        objects = _Objects(base, self.s3_client_factory)
        rewritten: dict[str, str] = {}  # key -> new sha256 (for registry manifests)
        for key in list(objects.keys()):
            name = key.rsplit("/", 1)[-1]
            if name.startswith((".", "_")) or "/checkpoints/" in key:
                continue  # Flink's in-progress files, markers and checkpoints: not datasets
            if name.endswith(".jsonl"):
                removed, body = self._without_user_jsonl(objects.read(key))
            else:
                data = objects.read(key)
                # Flink's filesystem sink names Parquet files part-<uuid>-<n>-<n>, no suffix.
                if not data.startswith(PARQUET_MAGIC):
                    continue
                removed, body = self._without_user_parquet(data)
            if not removed:
                continue
            self.report.rows[store] = self.report.rows.get(store, 0) + removed
            if body is None:
                objects.delete(key)
                self.report.files_deleted += 1
            else:
                objects.write(key, body)
                self.report.files_rewritten += 1
                rewritten[key] = hashlib.sha256(body).hexdigest()
        if store == "registry":
            self._update_manifests(objects, rewritten)

    def _without_user_parquet(self, body: bytes) -> tuple[int, bytes | None]:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(body))
        keep = pa.array([True] * table.num_rows)
        if "user_id" in table.column_names:
            keep = pc.and_(
                keep, pc.fill_null(pc.not_equal(table.column("user_id"), self.user_id), True)
            )
        if "session_id" in table.column_names and self.sessions:
            mine = pc.is_in(table.column("session_id"), value_set=pa.array(sorted(self.sessions)))
            keep = pc.and_(keep, pc.invert(pc.fill_null(mine, False)))
        kept = table.filter(keep)
        removed = table.num_rows - kept.num_rows
        if not removed:
            return 0, body
        if kept.num_rows == 0:
            return removed, None
        out = io.BytesIO()
        pq.write_table(kept, out)
        return removed, out.getvalue()

    def _without_user_jsonl(self, body: bytes) -> tuple[int, bytes | None]:
        kept: list[bytes] = []
        removed = 0
        for line in body.splitlines():
            try:
                value = json.loads(line)
            except ValueError:
                kept.append(line)
                continue
            if isinstance(value, dict) and (
                _mentions(value, self.user_id, self.sessions) or _raw_mentions(value, self._raw)
            ):
                removed += 1
            else:
                kept.append(line)
        if not removed:
            return 0, body
        return removed, (b"\n".join(kept) + b"\n") if kept else None

    def _update_manifests(self, objects: _Objects, rewritten: dict[str, str]) -> None:
        for key, digest in rewritten.items():
            head, sep, rel = key.partition("/adapter/")
            if not sep:
                continue
            manifest_key = f"{head}/manifest.json"
            try:
                manifest = json.loads(objects.read(manifest_key))
            except Exception:  # noqa: BLE001 - no manifest: nothing to keep in step
                continue
            manifest.setdefault("files", {})[rel] = digest
            manifest.setdefault("forgotten", []).append(
                {"request_id": self.report.request_id, "file": rel, "at_ms": _now_ms()}
            )
            body = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode("utf-8")
            objects.write(manifest_key, body)

    def forget_exports(self, paths: Iterable[Path]) -> None:
        from training.labelstudio import read_export, write_tasks

        for path in paths:
            tasks = read_export(path)
            kept = [t for t in tasks if not _mentions(t, self.user_id, self.sessions)]
            if len(kept) != len(tasks):
                write_tasks(kept, path)
                self.report.rows["exports"] = (
                    self.report.rows.get("exports", 0) + len(tasks) - len(kept)
                )
                self.report.exports_rewritten += 1


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def write_audit(s3_client: Any, bucket: str, record: dict[str, Any]) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(record["at_ms"] / 1000))
    key = f"{AUDIT_PREFIX}/{stamp}-{record['request_id']}.json"
    s3_client.put_object(Bucket=bucket, Key=key, Body=json.dumps(record, indent=2).encode())
    return f"s3://{bucket}/{key}"


@click.command("forget")
@click.option("--user-id", required=True, help="The user to forget (as in events' user_id).")
@click.option(
    "--parquet",
    "parquet_bases",
    multiple=True,
    metavar="BASE",
    help="Also rewrite the datasets under this output base (a backfill's --out); "
    "the job's output base is always included.",
)
@click.option(
    "--export",
    "exports",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A review export file (flywheel label export) to rewrite without the user.",
)
@click.option(
    "--requested-by",
    default=None,
    help="Who asked (for the audit record; default: this OS user).",
)
def forget(
    user_id: str,
    parquet_bases: tuple[str, ...],
    exports: tuple[Path, ...],
    requested_by: str | None,
) -> None:
    """Remove a user from Redis, Parquet, the pool, stored training sets and exports, and
    deny their events from now on (contract section 6). Idempotent."""
    from jobs.commands import _load
    from jobs.streaming import output_base
    from training.settings import TrainingSettings

    ctx = _load({})
    training = TrainingSettings.load()
    forgetter = Forgetter(user_id, ctx.s3.boto3_client)
    redis = ctx.redis.client()
    prefix = ctx.redis.key_prefix
    forgetter.deny(redis, prefix)
    forgetter.forget_redis(redis, prefix)
    bucket = ctx.s3.bucket
    stores = [(base, "parquet") for base in dict.fromkeys([output_base(ctx), *parquet_bases])]
    stores += [
        (f"s3://{bucket}/{training.pool.prefix.strip('/')}", "pool"),
        (f"s3://{bucket}/{training.registry.prefix.strip('/')}", "registry"),
    ]
    forgetter.collect_sessions(base for base, _ in stores)
    for base, store in stores:
        forgetter.forget_files(base, store)
    forgetter.forget_exports(exports)
    record = forgetter.report.audit(requested_by or getpass.getuser(), _now_ms())
    where = write_audit(ctx.s3.boto3_client(), bucket, record)
    removed = record["removed"]
    click.echo(
        f"forgot the user: deny list {'updated' if record['newly_denied'] else 'unchanged'}, "
        f"{removed['redis_keys']} Redis key(s), rows {removed['rows'] or 'none'}, "
        f"{removed['files_rewritten']} file(s) rewritten, {removed['files_deleted']} deleted, "
        f"{removed['exports_rewritten']} export(s); audit record {where}"
    )

"""Finding where a restarted job resumes: the newest retained checkpoint or savepoint.

Flink keeps each completed checkpoint as ``<checkpoint_dir>/<job id>/chk-<n>/_metadata``
(retained on cancel and on failure) and savepoints as
``<checkpoint_dir>/savepoints/savepoint-*/_metadata``. ``flywheel run`` started again
after a crash resumes from the newest of them, so nothing is written twice.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

_CHECKPOINT = re.compile(r"(?:^|/)[0-9a-f]{32}/chk-\d+$")
_SAVEPOINT = re.compile(r"(?:^|/)savepoints/savepoint-[^/]+$")


class StaleCheckpointError(RuntimeError):
    """The newest retained checkpoint is older than the state it holds may live."""


@dataclass(frozen=True)
class RetainedCheckpoint:
    """One completed checkpoint or savepoint: its directory URI and when it completed."""

    path: str
    completed_ms: int

    @property
    def kind(self) -> str:
        return "savepoint" if _SAVEPOINT.search(self.path) else "checkpoint"


def _local_candidates(root: Path) -> list[RetainedCheckpoint]:
    found = []
    for metadata in [*root.glob("*/chk-*/_metadata"), *root.glob("savepoints/*/_metadata")]:
        directory = metadata.parent.relative_to(root).as_posix()
        if _CHECKPOINT.search(directory) or _SAVEPOINT.search(directory):
            found.append(
                RetainedCheckpoint(metadata.parent.as_uri(), int(metadata.stat().st_mtime * 1000))
            )
    return found


def _s3_candidates(uri: str, s3_client: Any) -> list[RetainedCheckpoint]:
    parts = urlsplit(uri)
    bucket, prefix = parts.netloc, parts.path.lstrip("/").rstrip("/")
    found = []
    paginator = s3_client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix + "/" if prefix else ""):
        for item in page.get("Contents", []):
            key: str = item["Key"]
            if not key.endswith("/_metadata"):
                continue
            directory = key[: -len("/_metadata")]
            relative = directory[len(prefix) + 1 :] if prefix else directory
            if _CHECKPOINT.search(relative) or _SAVEPOINT.search(relative):
                completed_ms = int(item["LastModified"].timestamp() * 1000)
                uri = f"{parts.scheme}://{bucket}/{directory}"
                found.append(RetainedCheckpoint(uri, completed_ms))
    return found


def newest_retained(
    checkpoint_dir: str, s3_client_factory: Any = None
) -> RetainedCheckpoint | None:
    """The most recently completed checkpoint or savepoint under ``checkpoint_dir``."""
    parts = urlsplit(checkpoint_dir)
    if parts.scheme in ("s3", "s3a", "s3p"):
        candidates = _s3_candidates(checkpoint_dir, s3_client_factory())
    else:
        root = Path(unquote(parts.path)) if parts.scheme == "file" else Path(checkpoint_dir)
        candidates = _local_candidates(root) if root.is_dir() else []
    if not candidates:
        return None
    return max(candidates, key=lambda c: (c.completed_ms, c.path))


def resume_point(
    checkpoint_dir: str,
    *,
    state_ttl: timedelta,
    s3_client_factory: Any = None,
    now_ms: int | None = None,
) -> RetainedCheckpoint | None:
    """Where a restarted job resumes, or None for a first start.

    Raises ``StaleCheckpointError`` when the newest one is older than ``state_ttl``: the
    open sessions it holds would expire on restore and be lost without a word.
    """
    newest = newest_retained(checkpoint_dir, s3_client_factory)
    if newest is None:
        return None
    now_ms = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    age = timedelta(milliseconds=now_ms - newest.completed_ms)
    if age > state_ttl:
        raise StaleCheckpointError(
            f"the newest {newest.kind} in {checkpoint_dir} ({newest.path}) completed "
            f"{_human(age)} ago, longer than state_ttl ({_human(state_ttl)}): the open "
            "sessions it holds would expire on restore. Resume from it anyway with "
            f"--from-savepoint {newest.path}, or start over with --fresh."
        )
    return newest


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 86_400:
        return f"{seconds / 86_400:.1f} days"
    if seconds >= 3_600:
        return f"{seconds / 3_600:.1f} h"
    return f"{seconds} s"


__all__ = ["RetainedCheckpoint", "StaleCheckpointError", "newest_retained", "resume_point"]

"""Which retained checkpoint a restarted job resumes from."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from jobs.checkpoints import StaleCheckpointError, newest_retained, resume_point

JOB_A = "a" * 32
JOB_B = "b" * 32


def _retain(root: Path, relative: str, mtime_s: float) -> Path:
    directory = root / relative
    directory.mkdir(parents=True)
    (directory / "_metadata").write_bytes(b"x")
    os.utime(directory / "_metadata", (mtime_s, mtime_s))
    return directory


def test_nothing_retained_is_a_first_start(tmp_path: Path) -> None:
    assert newest_retained(tmp_path.as_uri()) is None
    assert newest_retained((tmp_path / "missing").as_uri()) is None
    # A checkpoint still being written has no _metadata yet.
    (tmp_path / JOB_A / "chk-1").mkdir(parents=True)
    assert resume_point(tmp_path.as_uri(), state_ttl=timedelta(days=2)) is None


def test_newest_completed_of_every_run_and_savepoint_wins(tmp_path: Path) -> None:
    _retain(tmp_path, f"{JOB_A}/chk-7", 1_000)
    newest = _retain(tmp_path, f"{JOB_B}/chk-2", 3_000)
    _retain(tmp_path, "savepoints/savepoint-bbbbbb-0123456789ab", 2_000)
    _retain(tmp_path, "unrelated/_other", 9_000)
    found = newest_retained(tmp_path.as_uri())
    assert found is not None and found.path == newest.as_uri() and found.kind == "checkpoint"
    savepoint = _retain(tmp_path, "savepoints/savepoint-cccccc-0123456789ab", 4_000)
    found = newest_retained(str(tmp_path))
    assert found is not None and found.path == savepoint.as_uri() and found.kind == "savepoint"


def test_a_checkpoint_older_than_state_ttl_is_refused(tmp_path: Path) -> None:
    path = _retain(tmp_path, f"{JOB_A}/chk-1", 1_000)
    now_ms = 1_000_000 + 3 * 86_400_000
    with pytest.raises(StaleCheckpointError, match="longer than state_ttl") as caught:
        resume_point(tmp_path.as_uri(), state_ttl=timedelta(days=2), now_ms=now_ms)
    assert path.as_uri() in str(caught.value) and "--fresh" in str(caught.value)
    found = resume_point(tmp_path.as_uri(), state_ttl=timedelta(days=4), now_ms=now_ms)
    assert found is not None and found.path == path.as_uri()

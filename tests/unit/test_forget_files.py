"""``flywheel forget``'s file rewriting and the deny list, on local files (no services)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from features.privacy import DenyList, user_hash
from jobs.forget import Forgetter


def test_the_deny_list_holds_hashes_and_answers_by_id() -> None:
    deny = DenyList({user_hash("u-1")})
    assert deny.denies("u-1") and not deny.denies("u-2") and not deny.denies("")
    assert "u-1" not in user_hash("u-1") and len(user_hash("u-1")) == 64
    assert not DenyList().denies("u-1")


def _write(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_rows_by_user_and_by_their_sessions_go_files_left_empty_are_deleted(tmp_path: Path) -> None:
    base = tmp_path / "out"
    _write(base / "session_features/dt=2026-01-01/part-0.parquet", [
        {"session_id": "s1", "user_id": "alice", "n": 1},
        {"session_id": "s2", "user_id": "bob", "n": 2},
    ])  # fmt: skip
    _write(base / "session_features/dt=2026-01-02/part-0.parquet", [
        {"session_id": "s3", "user_id": "alice", "n": 3},
    ])  # fmt: skip
    _write(base / "pool/edits/part-0.parquet", [  # no user_id column: by session
        {"session_id": "s3", "request_id": "a"},
        {"session_id": "s2", "request_id": "b"},
    ])  # fmt: skip
    dlq = base / "dlq/part-0.jsonl"
    dlq.parent.mkdir(parents=True)
    dlq.write_text(
        json.dumps({"reason": "invalid_json", "raw": '{"user_id": "alice", "text": "hi'})
        + "\n"
        + json.dumps({"reason": "invalid_json", "raw": '{"user_id": "alice2"}'})
        + "\n"
        + "not json at all\n"
    )
    forgetter = Forgetter("alice", s3_client_factory=None)
    forgetter.collect_sessions([str(base)])
    assert forgetter.sessions == {"s1", "s3"}
    forgetter.forget_files(str(base), "parquet")

    kept = pq.read_table(base / "session_features/dt=2026-01-01/part-0.parquet").to_pylist()
    assert kept == [{"session_id": "s2", "user_id": "bob", "n": 2}]
    assert not (base / "session_features/dt=2026-01-02/part-0.parquet").exists()
    assert pq.read_table(base / "pool/edits/part-0.parquet").to_pylist() == [
        {"session_id": "s2", "request_id": "b"}
    ]
    lines = dlq.read_text().splitlines()
    assert len(lines) == 2 and "alice2" in lines[0] and lines[1] == "not json at all"
    report = forgetter.report
    assert report.rows == {"parquet": 4} and report.files_deleted == 1
    assert report.files_rewritten == 3

    again = Forgetter("alice", s3_client_factory=None)
    again.collect_sessions([str(base)])
    again.forget_files(str(base), "parquet")
    assert again.report.rows == {} and again.report.files_rewritten == 0

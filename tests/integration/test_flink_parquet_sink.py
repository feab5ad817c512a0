"""PyFlink (the pinned 1.20 wheel) writes Parquet to the stack's S3 server and to a local path.

This is the configuration the feature job uses: ``deploy.jars.configure_pyflink``
registers the flink-s3-fs-hadoop plugin with the PyFlink JVM and returns the
options (``pipeline.jars`` + ``s3.*``) to set on the job's configuration.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest

from deploy.jars import configure_pyflink

pytestmark = [pytest.mark.integration, pytest.mark.flink]

ROWS = [
    ("s1", 3, True, 0.25, ["cta_ignored", "stuck_loop"], "2026-01-01"),
    ("s2", 5, False, None, [], "2026-01-01"),
    ("s3", 7, True, 0.5, ["explicit_negative"], "2026-01-02"),
]

SINK_DDL = """
CREATE TABLE sink (
  session_id STRING,
  event_count BIGINT,
  flagged BOOLEAN,
  min_intent_confidence DOUBLE,
  reasons ARRAY<STRING>,
  dt STRING
) PARTITIONED BY (dt) WITH (
  'connector' = 'filesystem',
  'path' = '{path}',
  'format' = 'parquet'
)
"""


@pytest.fixture(scope="module")
def flink_options(s3_settings: Any) -> dict[str, str]:
    """Flink options for jobs of this session (the PyFlink JVM is set up once)."""
    return configure_pyflink(s3_settings)


def _table_env(options: dict[str, str], streaming: bool) -> Any:
    from pyflink.table import EnvironmentSettings, TableEnvironment

    mode = (
        EnvironmentSettings.in_streaming_mode()
        if streaming
        else EnvironmentSettings.in_batch_mode()
    )
    env = TableEnvironment.create(mode)
    config = env.get_config()
    for key, value in options.items():
        config.set(key, value)
    config.set("parallelism.default", "1")
    if streaming:
        # The streaming file sink commits files on checkpoints (and at end of input).
        config.set("execution.checkpointing.interval", "1 s")
    return env


def _write(options: dict[str, str], path: str, streaming: bool) -> None:
    from pyflink.table import DataTypes

    env = _table_env(options, streaming)
    env.execute_sql(SINK_DDL.format(path=path))
    schema = DataTypes.ROW(
        [
            DataTypes.FIELD("session_id", DataTypes.STRING()),
            DataTypes.FIELD("event_count", DataTypes.BIGINT()),
            DataTypes.FIELD("flagged", DataTypes.BOOLEAN()),
            DataTypes.FIELD("min_intent_confidence", DataTypes.DOUBLE()),
            DataTypes.FIELD("reasons", DataTypes.ARRAY(DataTypes.STRING())),
            DataTypes.FIELD("dt", DataTypes.STRING()),
        ]
    )
    env.from_elements(ROWS, schema).execute_insert("sink").wait()


def _rows(dataset: ds.Dataset) -> list[tuple[Any, ...]]:
    table = dataset.to_table()
    records = table.to_pylist()
    return sorted(
        (
            r["session_id"],
            r["event_count"],
            r["flagged"],
            r["min_intent_confidence"],
            list(r["reasons"]),
            str(r["dt"]),
        )
        for r in records
    )


def _s3_dataset(s3_settings: Any, bucket: str, prefix: str) -> ds.Dataset:
    return ds.dataset(
        f"{bucket}/{prefix}",
        filesystem=s3_settings.pyarrow_filesystem(),
        format="parquet",
        partitioning="hive",
    )


@pytest.mark.parametrize("streaming", [False, True], ids=["batch", "streaming"])
def test_parquet_lands_in_s3_partitioned_by_date(
    flink_options: dict[str, str], s3_settings: Any, s3_bucket: str, streaming: bool
) -> None:
    prefix = f"session_features-{uuid.uuid4().hex[:8]}"

    _write(flink_options, f"s3://{s3_bucket}/{prefix}", streaming)

    keys = [
        item["Key"]
        for item in s3_settings.boto3_client()
        .list_objects_v2(Bucket=s3_bucket, Prefix=prefix)
        .get("Contents", [])
        if not item["Key"].endswith("/")  # folder markers that s3a writes
    ]
    assert {key.split("/")[1] for key in keys} == {"dt=2026-01-01", "dt=2026-01-02"}
    assert not [key for key in keys if "/." in key or "inprogress" in key]  # all committed
    assert _rows(_s3_dataset(s3_settings, s3_bucket, prefix)) == sorted(ROWS)


def test_parquet_lands_in_a_local_directory(flink_options: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "session_features"

    _write(flink_options, out.as_uri(), streaming=False)

    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "dt=2026-01-01",
        "dt=2026-01-02",
    ]
    dataset = ds.dataset(str(out), format="parquet", partitioning="hive")
    assert _rows(dataset) == sorted(ROWS)

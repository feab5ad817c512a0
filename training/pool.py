"""The sample pool: flagged sessions from Kafka -> labeled samples as Parquet on S3.

Layout under ``s3://<bucket>/<pool.prefix>/``::

    samples/part-<topic>-<partition>-<first_offset>-<last_offset>.parquet   intent samples
    edits/part-<topic>-<partition>-<first_offset>-<last_offset>.parquet     edit pairs
    rejected/part-<topic>-<partition>-<first_offset>-<last_offset>.jsonl    unreadable messages
    labels/human-<sha256 prefix>.parquet                                    imported human labels

Object names are derived from the Kafka offsets they hold, so replaying the same
offsets overwrites the same objects; readers deduplicate by (session_id, request_id)
anyway, because a replay may cut batches differently.

The consumer that fills it from ``flywheel.flagged`` is ``training.pool_consumer``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from connectors.settings import S3Settings
from training.data import (
    EditPair,
    PoolSample,
    apply_human_labels,
    dedupe_edits,
    dedupe_samples,
    pool_counts,
    trust_user_labels,
)
from training.errors import PoolError

log = logging.getLogger(__name__)


def _schemas() -> dict[str, Any]:
    import pyarrow as pa

    source = [
        ("source_topic", pa.string()),
        ("source_partition", pa.int32()),
        ("source_offset", pa.int64()),
        ("added_ms", pa.int64()),
    ]
    samples = pa.schema(
        [
            ("session_id", pa.string()),
            ("request_id", pa.string()),
            ("text", pa.string()),
            ("predicted_intent", pa.string()),
            ("confidence", pa.float64()),
            ("reasons", pa.list_(pa.string())),
            ("model_version", pa.string()),
            ("label", pa.string()),
            ("label_source", pa.string()),
            ("quality", pa.string()),
            ("note", pa.string()),
            ("user_id", pa.string()),
            ("session_start_ms", pa.int64()),
            ("ts_ms", pa.int64()),
            *source,
        ]
    )
    edits = pa.schema(
        [
            ("session_id", pa.string()),
            ("request_id", pa.string()),
            ("prompt", pa.string()),
            ("response", pa.string()),
            ("corrected_response", pa.string()),
            ("model_version", pa.string()),
            *source,
        ]
    )
    labels = pa.schema(
        [
            ("session_id", pa.string()),
            ("request_id", pa.string()),
            ("label", pa.string()),
            ("annotator", pa.string()),
            ("added_ms", pa.int64()),
        ]
    )
    return {"samples": samples, "edits": edits, "labels": labels}


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectRef:
    """One S3 object a reader used, with the SHA-256 of the bytes it read."""

    uri: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolSnapshot:
    """The deduplicated pool and the objects it was read from."""

    samples: list[PoolSample]
    objects: list[ObjectRef]

    def sources(self) -> list[dict[str, Any]]:
        return [
            {"kind": "pool", "uri": o.uri, "size": o.size, "sha256": o.sha256} for o in self.objects
        ]


class PoolStore:
    """Reads and writes the pool's Parquet objects on S3."""

    def __init__(
        self,
        s3: S3Settings,
        prefix: str = "pool",
        *,
        client: Any = None,
        max_corrections_per_user: int | None = None,
        redact_patterns: Sequence[str] = (),
    ) -> None:
        from features.redaction import Redactor

        self.redactor = Redactor(tuple(redact_patterns))
        # With a cap, readers see end users' untrusted corrections as the review queue
        # sees them (``trust_user_labels``): the same as the next training set does.
        self.max_corrections_per_user = max_corrections_per_user
        self.s3 = s3
        self.bucket = s3.bucket
        self.prefix = prefix.strip("/")
        self.client = client or s3.boto3_client()

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def key(self, kind: str, name: str) -> str:
        return f"{self.prefix}/{kind}/{name}"

    @staticmethod
    def part_name(topic: str, partition: int, first: int, last: int, suffix: str) -> str:
        return f"part-{topic}-{partition}-{first:020d}-{last:020d}.{suffix}"

    # ------------------------------------------------------------- writing

    def _put(self, key: str, body: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body)
        except Exception as exc:  # botocore raises many types; the message names the cause
            raise PoolError(f"cannot write {self.uri(key)}: {exc}") from exc

    def _put_table(self, key: str, rows: Sequence[Mapping[str, Any]], kind: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(list(rows), schema=_schemas()[kind])
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        self._put(key, buffer.getvalue())

    def write_batch(
        self,
        topic: str,
        partition: int,
        first: int,
        last: int,
        samples: Sequence[PoolSample],
        edits: Sequence[EditPair],
        rejected: Sequence[Mapping[str, Any]],
    ) -> list[str]:
        """Write one partition's batch; returns the keys written."""
        keys = []
        if samples:
            key = self.key("samples", self.part_name(topic, partition, first, last, "parquet"))
            self._put_table(key, [s.to_row() for s in samples], "samples")
            keys.append(key)
        if edits:
            key = self.key("edits", self.part_name(topic, partition, first, last, "parquet"))
            self._put_table(key, [e.to_row() for e in edits], "edits")
            keys.append(key)
        if rejected:
            key = self.key("rejected", self.part_name(topic, partition, first, last, "jsonl"))
            body = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejected)
            self._put(key, body.encode("utf-8"))
            keys.append(key)
        return keys

    def write_human_labels(self, rows: Sequence[Mapping[str, Any]]) -> str:
        """Write imported labels (texts redacted); the object name is the hash of its content."""
        rows = [
            {**r, "text": self.redactor.redact(r["text"])}
            if isinstance(r.get("text"), str)
            else dict(r)
            for r in rows
        ]
        digest = hashlib.sha256(
            json.dumps([dict(r) for r in rows], sort_keys=True).encode("utf-8")
        ).hexdigest()[:16]
        key = self.key("labels", f"human-{digest}.parquet")
        self._put_table(key, rows, "labels")
        return key

    # ------------------------------------------------------------- reading

    def _list(self, kind: str) -> list[str]:
        keys = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}/{kind}/"):
                # A key ending in "/" is a folder marker (s3a, consoles), never a record.
                keys += [o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith("/")]
        except Exception as exc:
            raise PoolError(
                f"cannot list {self.uri(self.prefix + '/' + kind + '/')}: {exc}"
            ) from exc
        return sorted(keys)

    def _read(self, key: str) -> tuple[bytes, ObjectRef]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as exc:
            raise PoolError(f"cannot read {self.uri(key)}: {exc}") from exc
        return body, ObjectRef(
            uri=self.uri(key), size=len(body), sha256=hashlib.sha256(body).hexdigest()
        )

    def _read_rows(self, kind: str) -> tuple[list[dict[str, Any]], list[ObjectRef]]:
        import pyarrow.parquet as pq

        rows: list[dict[str, Any]] = []
        refs = []
        for key in self._list(kind):
            body, ref = self._read(key)
            try:
                rows += pq.read_table(io.BytesIO(body)).to_pylist()
            except Exception as exc:
                raise PoolError(f"{ref.uri} is not a readable Parquet file: {exc}") from exc
            refs.append(ref)
        return rows, refs

    def read_samples(self) -> PoolSnapshot:
        """All samples, deduplicated, with imported human labels applied.

        With ``max_corrections_per_user``, corrections that ``trust_user_labels`` does
        not trust come back as review samples (with a ``note``), so ``label export``
        offers them to human labelers.
        """
        rows, refs = self._read_rows("samples")
        samples = dedupe_samples(PoolSample.from_row(r) for r in rows)
        label_rows, label_refs = self._read_rows("labels")
        human: dict[tuple[str, str], tuple[str, int]] = {}
        for row in sorted(label_rows, key=lambda r: r["added_ms"] or 0):
            human[(row["session_id"], row["request_id"])] = (row["label"], row["added_ms"] or 0)
        samples = apply_human_labels(samples, human)
        if self.max_corrections_per_user is not None:
            kept, review = trust_user_labels(
                samples, max_corrections_per_user=self.max_corrections_per_user
            )
            order = {s.key: n for n, s in enumerate(samples)}
            samples = sorted(kept + review, key=lambda s: order[s.key])
        return PoolSnapshot(samples=samples, objects=refs + label_refs)

    def read_edits(self) -> tuple[list[EditPair], list[ObjectRef]]:
        rows, refs = self._read_rows("edits")
        return dedupe_edits(EditPair.from_row(r) for r in rows), refs

    def read_rejected(self) -> list[dict[str, Any]]:
        out = []
        for key in self._list("rejected"):
            body, _ = self._read(key)
            out += [json.loads(line) for line in body.decode("utf-8").splitlines() if line.strip()]
        return out

    def sample_keys(self) -> set[tuple[str, str]]:
        return {s.key for s in self.read_samples().samples}

    def counts(self) -> dict[str, int]:
        return pool_counts(self.read_samples().samples)


def ensure_bucket(s3: S3Settings, client: Any = None) -> None:
    """Create the configured bucket when it does not exist yet."""
    client = client or s3.boto3_client()
    try:
        client.head_bucket(Bucket=s3.bucket)
    except Exception:
        client.create_bucket(Bucket=s3.bucket)


def __getattr__(name: str) -> Any:
    # The consumer moved to training.pool_consumer (store | consumer were one file);
    # imported lazily here for old callers (an eager import would be circular).
    if name in ("ConsumeReport", "PoolConsumer"):
        from training import pool_consumer

        return getattr(pool_consumer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ObjectRef", "PoolSnapshot", "PoolStore", "ensure_bucket"]

"""Settings of the feature job (streaming and backfill), env prefix ``FLYWHEEL_JOB_``."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

if TYPE_CHECKING:
    from features.config import FeatureConfig
    from features.redaction import Redactor
    from features.rules import RuleSet

from connectors.settings import FlywheelSettings, to_ms


class FeatureJobSettings(FlywheelSettings):
    """Windows, thresholds, sinks and runtime of the feature job.

    Every window of the contract is a ``timedelta`` here; the job hands
    ``*_ms`` ints to ``features/``.
    """

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_JOB_", extra="forbid", frozen=True)

    # Contract windows and thresholds (section 2 and 3 defaults).
    session_gap: timedelta = timedelta(minutes=30)
    max_out_of_order: timedelta = timedelta(seconds=10)
    # An event more than this ahead of its Kafka record's timestamp is a `future_event`.
    max_future_skew: timedelta = timedelta(minutes=10)
    idle_timeout: timedelta = timedelta(seconds=60)
    cta_window: timedelta = timedelta(minutes=10)
    silence_gap: timedelta = timedelta(minutes=5)
    stall_turns: int = Field(3, ge=1)
    repeat_lookback: int = Field(3, ge=1)
    repeat_similarity: float = Field(0.85, ge=0.0, le=1.0)
    low_confidence: float = Field(0.6, ge=0.0, le=1.0)
    slow_response_ms: int = Field(15_000, ge=0)
    rules_path: Path | None = None
    # Regexes whose matches are personal data too (redacted as <ID> in every text that
    # leaves the job, contract section 6), beside the kinds the contract names.
    redact_patterns: tuple[str, ...] = ()

    # Embeddings for repeated questions.
    embedding_enabled: bool = True
    embedding_model_path: Path | None = None
    embedding_batch_size: int = Field(64, ge=1)
    # A text waits at most this long for others to share its batch (a batch of one costs
    # several times more CPU per text); the job looks for finished vectors when a batch
    # should be back, then again every quarter batch time, but at most this often.
    embedding_max_delay: timedelta = timedelta(milliseconds=100)
    embedding_poll_interval: timedelta = timedelta(milliseconds=10)
    # Vectors kept per subtask by text (least recently used out first): a repeated text
    # is not encoded again. 20,000 vectors of 384 floats are about 31 MiB; 0 = no cache.
    embedding_cache_entries: int = Field(20_000, ge=0)
    # Torch (or onnxruntime) threads of the encoder child; 0 = the library's default.
    embedding_threads: int = Field(1, ge=0)
    # "torch" runs the sentence model as saved; "onnx-int8" its int8 ONNX export, made
    # offline from the same folder on first use (or by `flywheel encoder export`) and kept
    # in embedding_export_dir (default ~/.cache/flywheel/encoders): about 1.7x the texts/s
    # on one core, >= 99.9% of repeat decisions equal to torch's. Streaming and backfill
    # read the same setting, so they stay identical to each other.
    embedding_backend: Literal["torch", "onnx-int8"] = "torch"
    embedding_export_dir: Path | None = None

    # Sinks.
    output_base: str | None = None  # s3://bucket/prefix or a local path; Parquet lands below
    redis_enabled: bool = True
    # Redis writes wait at most this long to go out together in one pipeline; 0 = one
    # round trip per write.
    redis_flush_interval: timedelta = timedelta(milliseconds=50)
    flagged_transaction_timeout: timedelta = timedelta(minutes=10)
    # A flagged message must fit one Kafka record (producer max.request.size and the
    # broker's message.max.bytes are about 1 MiB by default); longer ones are cut to fit.
    flagged_max_message_bytes: int = Field(1_000_000, ge=10_000)

    # Runtime.
    parallelism: int = Field(1, ge=1)
    consumer_group: str = "flywheel-feature-job"
    starting_offsets: Literal["earliest", "latest", "committed"] = "earliest"
    checkpoint_interval: timedelta = timedelta(seconds=10)
    checkpoint_dir: str | None = None  # default: <output_base>/checkpoints
    tolerable_failed_checkpoints: int = Field(3, ge=0)
    # Aligned by default: with unaligned checkpoints a TaskManager lost mid-backlog lost
    # the events in flight at its last checkpoint in 2 of 11 runs of the cluster fault test
    # (tests/integration/test_fault_cluster.py), none in aligned runs. Unaligned ones cut
    # event-to-Redis latency under backpressure; turn them on knowingly.
    unaligned_checkpoints: bool = False
    # rocksdb checkpoints incrementally (only what changed since the last one); hashmap
    # keeps state on the heap and writes all of it at every checkpoint.
    state_backend: Literal["hashmap", "rocksdb"] = "hashmap"
    # Streaming only: the backfill always runs "process" (jobs/streaming.py says why).
    python_execution_mode: Literal["thread", "process"] = "thread"
    state_ttl: timedelta = timedelta(days=2)

    @field_validator(
        "session_gap",
        "max_out_of_order",
        "max_future_skew",
        "idle_timeout",
        "cta_window",
        "silence_gap",
        "checkpoint_interval",
        "embedding_max_delay",
        "embedding_poll_interval",
        "flagged_transaction_timeout",
    )
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be a positive duration")
        return value

    @field_validator("redact_patterns")
    @classmethod
    def _regexes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from features.redaction import Redactor

        Redactor(value)  # names the pattern that does not compile
        return value

    def redactor(self) -> Redactor:
        """The redaction of texts that leave the job (contract section 6)."""
        from features.redaction import Redactor

        return Redactor(self.redact_patterns)

    @field_validator("embedding_model_path")
    @classmethod
    def _a_saved_sentence_model(cls, value: Path | None) -> Path | None:
        # Checked here, not when the encoder starts inside a TaskManager: there a missing
        # folder would restart the job again and again instead of failing it once.
        if value is None:
            return None
        if not value.is_dir():
            raise ValueError(f"no such folder: {value}")
        if not any((value / name).is_file() for name in ("modules.json", "config.json")):
            raise ValueError(
                f"{value} is not a saved sentence-transformers model (no modules.json or "
                "config.json): save one with SentenceTransformer(...).save(path)"
            )
        return value.resolve()

    @field_validator("flagged_transaction_timeout")
    @classmethod
    def _within_broker_max(cls, value: timedelta) -> timedelta:
        # Kafka refuses producer transactions longer than transaction.max.timeout.ms (15 min).
        if value > timedelta(minutes=15):
            raise ValueError("must not exceed the broker's transaction.max.timeout.ms (15 min)")
        return value

    # Durations as the integer milliseconds the operators and Flink take.
    @property
    def checkpoint_interval_ms(self) -> int:
        return to_ms(self.checkpoint_interval)

    @property
    def flagged_transaction_timeout_ms(self) -> int:
        return to_ms(self.flagged_transaction_timeout)

    @property
    def max_out_of_order_ms(self) -> int:
        return to_ms(self.max_out_of_order)

    @property
    def max_future_skew_ms(self) -> int:
        return to_ms(self.max_future_skew)

    @property
    def idle_timeout_ms(self) -> int:
        return to_ms(self.idle_timeout)

    @property
    def embedding_max_delay_ms(self) -> int:
        return to_ms(self.embedding_max_delay)

    @property
    def embedding_poll_interval_ms(self) -> int:
        return to_ms(self.embedding_poll_interval)

    @property
    def redis_flush_interval_ms(self) -> int:
        return to_ms(self.redis_flush_interval)

    @property
    def state_ttl_ms(self) -> int:
        return to_ms(self.state_ttl)

    def feature_config(self) -> FeatureConfig:
        """The ``features.FeatureConfig`` these settings describe."""
        from features import FeatureConfig

        return FeatureConfig(
            session_gap_ms=to_ms(self.session_gap),
            max_out_of_order_ms=to_ms(self.max_out_of_order),
            idle_timeout_ms=to_ms(self.idle_timeout),
            cta_window_ms=to_ms(self.cta_window),
            silence_gap_ms=to_ms(self.silence_gap),
            stall_turns=self.stall_turns,
            repeat_lookback=self.repeat_lookback,
            repeat_similarity=self.repeat_similarity,
            low_confidence=self.low_confidence,
            slow_response_ms=self.slow_response_ms,
        )

    def rule_set(self) -> RuleSet:
        """Rules from ``rules_path`` or the contract's defaults; fails naming a bad rule."""
        from features import RuleSet

        if self.rules_path is None:
            return RuleSet.default()
        return RuleSet.from_yaml(self.rules_path)

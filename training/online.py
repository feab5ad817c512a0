"""Redis keys the training loop reads and writes (all under the configured prefix, ``fw:``).

* ``fw:pool`` hash: ``samples_total``, ``labeled_high``, ``labeled_medium``, ``review_queue``
* ``fw:stats:total`` / ``fw:stats:minute:<epoch_minute>`` hashes: field ``pool_samples_added``
  (minute hashes expire after two days)
* ``fw:registry`` hash: ``stable``, ``canary``, ``canary_share``, ``updated_ms``; and
  ``fw:registry:log`` list of JSON decisions (newest last). A registry for another model
  name than the default uses ``fw:registry:<name>`` and ``fw:registry:<name>:log``.
* ``fw:model:<model_version>`` hash (written by the feature job): ``sessions``,
  ``negative_sessions``, ``flagged_sessions``.

Redis is optional: every function takes ``client=None`` and then does nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from schemas.redis_layout import DEFAULT_MODEL_NAME, MS_PER_MINUTE, RedisKeys

# The keys themselves live in schemas/redis_layout.py; these name them for training.


def pool_key(prefix: str) -> str:
    return RedisKeys(prefix).pool


def stats_total_key(prefix: str) -> str:
    return RedisKeys(prefix).stats_total


def stats_minute_key(prefix: str, epoch_minute: int) -> str:
    return RedisKeys(prefix).stats_minute(epoch_minute)


def registry_key(prefix: str, model_name: str = DEFAULT_MODEL_NAME) -> str:
    return RedisKeys(prefix).registry(model_name)


def registry_log_key(prefix: str, model_name: str = DEFAULT_MODEL_NAME) -> str:
    return RedisKeys(prefix).registry_log(model_name)


def canary_check_key(prefix: str, model_name: str = DEFAULT_MODEL_NAME) -> str:
    """String: JSON of the latest automatic canary check (any outcome), for the dashboard."""
    return RedisKeys(prefix).canary_check(model_name)


def model_key(prefix: str, model_version: str) -> str:
    return RedisKeys(prefix).model(model_version)


def record_pool_added(client: Any, prefix: str, added: int, now_ms: int) -> None:
    """Count new pool samples in the total and the current UTC minute."""
    if client is None or added <= 0:
        return
    minute_key = stats_minute_key(prefix, now_ms // MS_PER_MINUTE)
    pipe = client.pipeline()
    pipe.hincrby(stats_total_key(prefix), "pool_samples_added", added)
    pipe.hincrby(minute_key, "pool_samples_added", added)
    pipe.expire(minute_key, RedisKeys(prefix).stats_minute_ttl_s)
    pipe.execute()


def write_pool_counts(client: Any, prefix: str, counts: Mapping[str, int]) -> None:
    if client is None:
        return
    client.hset(pool_key(prefix), mapping={k: str(v) for k, v in counts.items()})


def mirror_registry(
    client: Any,
    prefix: str,
    model_name: str,
    pointers: Mapping[str, Any],
    decision: Mapping[str, Any] | None,
) -> None:
    """Copy the registry pointers (and append a decision) to Redis."""
    if client is None:
        return
    pipe = client.pipeline()
    pipe.hset(
        registry_key(prefix, model_name),
        mapping={
            "stable": pointers.get("stable") or "",
            "canary": pointers.get("canary") or "",
            "canary_share": str(pointers.get("canary_share", 0.0)),
            "updated_ms": str(pointers.get("updated_ms", 0)),
        },
    )
    if decision is not None:
        pipe.rpush(registry_log_key(prefix, model_name), json.dumps(decision, sort_keys=True))
    pipe.execute()


def read_hash_ints(client: Any, key: str, fields: tuple[str, ...]) -> dict[str, int]:
    """Integer fields of a hash; missing or malformed fields read as 0."""
    values = client.hmget(key, list(fields))
    out = {}
    for name, value in zip(fields, values, strict=True):
        try:
            out[name] = int(float(value)) if value not in (None, "") else 0
        except (TypeError, ValueError):
            out[name] = 0
    return out


__all__ = [
    "mirror_registry",
    "model_key",
    "pool_key",
    "read_hash_ints",
    "record_pool_added",
    "registry_key",
    "registry_log_key",
    "stats_minute_key",
    "stats_total_key",
    "write_pool_counts",
]

"""Read the flywheel's Redis keys into plain dicts for the dashboard API.

Every function takes a redis-py client (``decode_responses=True``) and a
:class:`RedisKeys`; none writes. Counters that are missing read as 0, and a
counter that is not a number is left out and reported under ``warnings`` so a
single bad write cannot blank the whole page.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from schemas.redis_layout import MS_PER_MINUTE, RedisKeys

# Counters of `stats:total` / `stats:minute:<m>` the page always shows (0 when absent).
CORE_COUNTERS = (
    "events",
    "duplicates",
    "dlq",
    "explicit_signals",
    "negative_feedback",
    "implicit_signals",
    "sessions_closed",
    "sessions_flagged",
    "pool_samples_added",
)
POOL_FIELDS = ("samples_total", "labeled_high", "labeled_medium", "review_queue")
MODEL_FIELDS = ("sessions", "negative_sessions", "flagged_sessions")
REGISTRY_LOG_LIMIT = 20
MAX_SESSION_ID_CHARS = 128


def _number(value: str) -> int | float:
    """Parse a Redis counter; raises ValueError for anything else."""
    try:
        return int(value)
    except ValueError:
        result = float(value)
        if result != result or result in (float("inf"), float("-inf")):
            raise ValueError(f"not a finite number: {value!r}") from None
        return result


def _counters(
    key: str, raw: Mapping[str, str], warnings: list[str], always: Iterable[str] = ()
) -> dict[str, int | float]:
    counters: dict[str, int | float] = {name: 0 for name in always}
    for field, value in raw.items():
        try:
            counters[field] = _number(value)
        except ValueError:
            warnings.append(f"{key} field {field!r} is not a number: {value!r}")
    return counters


def _by_prefix(counters: Mapping[str, int | float], prefix: str) -> dict[str, int | float]:
    """Sub-counters such as ``dlq:<reason>``, keyed by what follows the prefix."""
    return {
        name[len(prefix) :]: value
        for name, value in sorted(counters.items())
        if name.startswith(prefix) and len(name) > len(prefix)
    }


def ratio(part: float, whole: float) -> float | None:
    """part / whole, or None when there is nothing to divide by."""
    return part / whole if whole else None


def read_summary(client: Any, keys: RedisKeys) -> dict[str, Any]:
    """All-time counters, rates, pool and registry: what the page's cards show."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.stats_total)
    pipe.hgetall(keys.pool)
    pipe.hgetall(keys.registry())
    raw_total, raw_pool, registry = pipe.execute()
    warnings: list[str] = []
    totals = _counters(keys.stats_total, raw_total, warnings, CORE_COUNTERS)
    closed = totals["sessions_closed"]
    flagged_by_reason = _by_prefix(totals, "flagged:")
    return {
        "totals": {name: totals[name] for name in CORE_COUNTERS},
        "rates": {
            "negative_feedback_rate": ratio(
                totals["negative_feedback"], totals["explicit_signals"]
            ),
            "flagged_rate": ratio(totals["sessions_flagged"], closed),
        },
        "flagged_by_reason": {
            reason: {"count": count, "rate": ratio(count, closed)}
            for reason, count in flagged_by_reason.items()
        },
        "dlq_by_reason": _by_prefix(totals, "dlq:"),
        "implicit_by_signal": _by_prefix(totals, "implicit:"),
        "pool": _counters(keys.pool, raw_pool, warnings, POOL_FIELDS),
        "registry": dict(registry),
        "warnings": warnings,
    }


def read_minutes(client: Any, keys: RedisKeys, end_minute: int, count: int) -> dict[str, Any]:
    """Per-minute counters for the ``count`` minutes ending at ``end_minute``, oldest first."""
    minutes = list(range(end_minute - count + 1, end_minute + 1))
    pipe = client.pipeline(transaction=False)
    for minute in minutes:
        pipe.hgetall(keys.stats_minute(minute))
    warnings: list[str] = []
    rows = []
    for minute, raw in zip(minutes, pipe.execute(), strict=True):
        counters = _counters(keys.stats_minute(minute), raw, warnings, CORE_COUNTERS)
        rows.append({"minute": minute, "ts_ms": minute * MS_PER_MINUTE, **counters})
    window = {name: sum(row[name] for row in rows) for name in CORE_COUNTERS}
    return {
        "end_minute": end_minute,
        "count": count,
        "minutes": rows,
        "window_totals": window,
        "warnings": warnings,
    }


def _parse_log_entry(text: str) -> dict[str, Any]:
    try:
        entry = json.loads(text)
    except json.JSONDecodeError as exc:
        return {"raw": text, "error": f"invalid JSON: {exc.msg}"}
    return entry if isinstance(entry, dict) else {"raw": text, "error": "not a JSON object"}


def read_models(client: Any, keys: RedisKeys) -> dict[str, Any]:
    """Registry (stable, canary, canary share) and each model version's closed-session rates."""
    versions = {
        key[len(keys.prefix) + len("model:") :]
        for key in client.scan_iter(match=keys.model_pattern, count=500)
    }
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.registry())
    pipe.lrange(keys.registry_log(), -REGISTRY_LOG_LIMIT, -1)
    pipe.get(keys.canary_check())
    registry, log, canary_check = pipe.execute()
    stable = registry.get("stable", "")
    canary = registry.get("canary", "")
    warnings: list[str] = []
    canary_share: float | None = None
    if canary and registry.get("canary_share", "") != "":
        try:
            canary_share = float(_number(registry["canary_share"]))
        except ValueError:
            warnings.append(f"{keys.registry()} canary_share is not a number")
    versions.update(v for v in (stable, canary) if v)
    ordered = sorted(versions, key=lambda v: (v != stable, v != canary, v))

    pipe = client.pipeline(transaction=False)
    for version in ordered:
        pipe.hgetall(keys.model(version))
    models = []
    for version, raw in zip(ordered, pipe.execute(), strict=True):
        counters = _counters(keys.model(version), raw, warnings, MODEL_FIELDS)
        share: float | None = None
        if version == canary:
            share = canary_share
        elif version == stable:
            share = 1.0 - canary_share if canary and canary_share is not None else 1.0
        role = "stable" if version == stable else "canary" if version == canary else "retired"
        models.append(
            {
                "version": version,
                "role": role,
                "traffic_share": share,
                **{name: counters[name] for name in MODEL_FIELDS},
                "negative_rate": ratio(counters["negative_sessions"], counters["sessions"]),
                "flagged_rate": ratio(counters["flagged_sessions"], counters["sessions"]),
            }
        )
    return {
        "registry": dict(registry),
        "stable": stable or None,
        "canary": canary or None,
        "canary_share": canary_share,
        "models": models,
        # The log is appended to (RPUSH); newest first here.
        "log": [_parse_log_entry(text) for text in reversed(log)],
        # The latest automatic canary check: numbers, test statistic, threshold, action.
        "canary_check": _parse_log_entry(canary_check) if canary_check else None,
        "warnings": warnings,
    }


def read_session(client: Any, keys: RedisKeys, session_id: str) -> dict[str, Any] | None:
    """One session's live feature hash, or None when Redis holds no such session."""
    key = keys.session(session_id)
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(key)
    pipe.pttl(key)
    fields, ttl_ms = pipe.execute()
    if not fields:
        return None
    reasons = [reason for reason in fields.get("reasons", "").split(",") if reason]
    updated = fields.get("updated_ms", "")
    return {
        "session_id": session_id,
        "key": key,
        "fields": dict(fields),
        "status": fields.get("status") or None,
        "reasons": reasons,
        "flagged": fields.get("flagged") == "1" or bool(reasons),
        "updated_ms": int(updated) if updated.isdigit() else None,
        "ttl_ms": ttl_ms if ttl_ms >= 0 else None,
    }

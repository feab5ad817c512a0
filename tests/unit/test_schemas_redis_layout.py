"""schemas.redis_layout: the one home of the Redis keys, as the README's table lists them."""

from __future__ import annotations

from schemas.redis_layout import STATS_MINUTE_TTL, RedisKeys


def test_every_key_under_the_prefix() -> None:
    keys = RedisKeys("fw:")
    assert keys.session("s1") == "fw:session:s1"
    assert keys.stats_total == "fw:stats:total"
    assert keys.stats_minute(29_500_000) == "fw:stats:minute:29500000"
    assert keys.stats_minute_ttl_s == STATS_MINUTE_TTL.total_seconds() == 2 * 24 * 3600
    assert keys.model("intent-v2") == "fw:model:intent-v2"
    assert keys.model_prefix == "fw:model:"
    assert keys.counted("s1") == "fw:counted:s1"
    assert keys.counted_offsets == "fw:counted:offsets"
    assert keys.pool == "fw:pool"
    assert keys.registry() == "fw:registry"
    assert keys.registry("response") == "fw:registry:response"
    assert keys.registry_log() == "fw:registry:log"
    assert keys.canary_check() == "fw:registry:canary_check"
    assert keys.registry_lock() == "fw:registry:lock:intent"
    assert keys.denied_users == "fw:privacy:denied_users"


def test_scan_patterns_escape_the_prefix() -> None:
    keys = RedisKeys("t[1]*:")
    assert keys.model_pattern == r"t\[1\]\*:model:*"
    assert keys.session_pattern == r"t\[1\]\*:session:*"


def test_the_writers_and_readers_use_the_layout() -> None:
    from features.privacy import denied_users_key
    from jobs.dashboard import store
    from training import online

    assert store.RedisKeys is RedisKeys
    assert online.model_key("p:", "v1") == RedisKeys("p:").model("v1")
    assert online.registry_log_key("p:", "response") == RedisKeys("p:").registry_log("response")
    assert denied_users_key("p:") == RedisKeys("p:").denied_users

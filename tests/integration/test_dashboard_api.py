"""The dashboard's JSON API against the real Redis of the local stack.

Each test writes exactly the keys it reads, under its own prefix.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from connectors.settings import RedisSettings
from jobs.dashboard.app import create_app
from jobs.dashboard.settings import DashboardSettings

pytestmark = pytest.mark.integration

NOW_MS = 1_717_400_000_000  # a fixed clock: 2024-06-03T07:33:20Z
NOW_MINUTE = NOW_MS // 60_000


@pytest.fixture
def settings(redis_settings: RedisSettings, redis_prefix: str) -> RedisSettings:
    return redis_settings.model_copy(update={"key_prefix": redis_prefix})


@pytest.fixture
def redis(settings: RedisSettings) -> Iterator[Any]:
    client = settings.client()
    yield client
    client.close()


@pytest.fixture
def api(settings: RedisSettings) -> TestClient:
    app = create_app(settings, DashboardSettings(history_minutes=5), clock_ms=lambda: NOW_MS)
    return TestClient(app)


def test_summary_reads_totals_rates_and_breakdowns(
    api: TestClient, redis: Any, settings: Any
) -> None:
    p = settings.key_prefix
    redis.hset(
        f"{p}stats:total",
        mapping={
            "events": 1000, "duplicates": 4, "dlq": 7, "dlq:invalid_json": 5, "dlq:late_event": 2,
            "explicit_signals": 40, "negative_feedback": 10, "implicit_signals": 30,
            "implicit:no_order": 20, "implicit:long_silence": 10, "sessions_closed": 200,
            "sessions_flagged": 50, "flagged:cta_ignored": 30, "flagged:abandoned": 25,
            "pool_samples_added": 45,
        },
    )  # fmt: skip
    redis.hset(f"{p}pool", mapping={"samples_total": 45, "labeled_high": 30, "review_queue": 9})
    redis.hset(f"{p}registry", mapping={"stable": "m1", "canary": "m2", "canary_share": "0.2"})

    body = api.get("/api/summary").json()

    assert body["now_ms"] == NOW_MS
    assert body["totals"]["events"] == 1000
    assert body["totals"]["pool_samples_added"] == 45
    assert body["rates"] == {"negative_feedback_rate": 0.25, "flagged_rate": 0.25}
    assert body["flagged_by_reason"] == {
        "abandoned": {"count": 25, "rate": 0.125},
        "cta_ignored": {"count": 30, "rate": 0.15},
    }
    assert body["dlq_by_reason"] == {"invalid_json": 5, "late_event": 2}
    assert body["implicit_by_signal"] == {"long_silence": 10, "no_order": 20}
    assert body["pool"] == {
        "samples_total": 45, "labeled_high": 30, "labeled_medium": 0, "review_queue": 9,
    }  # fmt: skip
    assert body["registry"]["canary"] == "m2"
    assert body["warnings"] == []


def test_summary_of_an_empty_redis_is_zeros_not_errors(api: TestClient) -> None:
    body = api.get("/api/summary").json()
    assert set(body["totals"].values()) == {0}
    assert body["rates"] == {"negative_feedback_rate": None, "flagged_rate": None}
    assert body["flagged_by_reason"] == {} and body["dlq_by_reason"] == {}


def test_a_counter_that_is_not_a_number_is_reported_not_fatal(
    api: TestClient, redis: Any, settings: Any
) -> None:
    redis.hset(f"{settings.key_prefix}stats:total", mapping={"events": "12", "dlq": "oops"})
    body = api.get("/api/summary").json()
    assert body["totals"]["events"] == 12
    assert body["totals"]["dlq"] == 0
    assert len(body["warnings"]) == 1 and "'dlq'" in body["warnings"][0]


def test_minutes_are_oldest_first_and_zero_filled(
    api: TestClient, redis: Any, settings: Any
) -> None:
    p = settings.key_prefix
    redis.hset(f"{p}stats:minute:{NOW_MINUTE}", mapping={"events": 9, "explicit_signals": 2})
    redis.hset(f"{p}stats:minute:{NOW_MINUTE - 2}", mapping={"events": 5, "flagged:stuck_loop": 1})
    redis.hset(f"{p}stats:minute:{NOW_MINUTE - 5}", mapping={"events": 100})  # outside 5 minutes

    body = api.get("/api/minutes").json()  # n defaults to history_minutes (5)

    assert body["end_minute"] == NOW_MINUTE and body["count"] == 5
    rows = body["minutes"]
    assert [r["minute"] for r in rows] == list(range(NOW_MINUTE - 4, NOW_MINUTE + 1))
    assert [r["events"] for r in rows] == [0, 0, 5, 0, 9]
    assert rows[2]["flagged:stuck_loop"] == 1
    assert rows[-1]["ts_ms"] == NOW_MINUTE * 60_000
    assert body["window_totals"]["events"] == 14
    assert body["window_totals"]["explicit_signals"] == 2

    older = api.get(f"/api/minutes?n=1&end_minute={NOW_MINUTE - 5}").json()
    assert [r["events"] for r in older["minutes"]] == [100]


@pytest.mark.parametrize("query", ["n=0", "n=2881", "n=ten", "end_minute=-1"])
def test_minutes_rejects_bad_parameters(api: TestClient, query: str) -> None:
    response = api.get(f"/api/minutes?{query}")
    assert response.status_code == 422, response.text


def test_models_list_stable_then_canary_with_shares_and_rates(
    api: TestClient, redis: Any, settings: Any
) -> None:
    p = settings.key_prefix
    redis.hset(f"{p}registry", mapping={"stable": "v2", "canary": "v3", "canary_share": "0.25"})
    redis.rpush(f"{p}registry:log", '{"action": "promote", "version": "v2"}', "not json")
    redis.hset(f"{p}model:v1", mapping={"sessions": 10, "negative_sessions": 5})
    redis.hset(
        f"{p}model:v2", mapping={"sessions": 100, "negative_sessions": 8, "flagged_sessions": 20}
    )

    body = api.get("/api/models").json()

    assert (body["stable"], body["canary"], body["canary_share"]) == ("v2", "v3", 0.25)
    rows = {m["version"]: m for m in body["models"]}
    assert [m["version"] for m in body["models"]] == ["v2", "v3", "v1"]
    assert rows["v2"] == {
        "version": "v2", "role": "stable", "traffic_share": 0.75, "sessions": 100,
        "negative_sessions": 8, "flagged_sessions": 20, "negative_rate": 0.08,
        "flagged_rate": 0.2,
    }  # fmt: skip
    assert rows["v3"]["role"] == "canary" and rows["v3"]["traffic_share"] == 0.25
    assert rows["v3"]["sessions"] == 0 and rows["v3"]["negative_rate"] is None
    assert rows["v1"]["role"] == "retired" and rows["v1"]["traffic_share"] is None
    assert rows["v1"]["negative_rate"] == 0.5
    # Newest decision first; a malformed entry is shown, not dropped.
    assert body["log"][0]["raw"] == "not json" and "invalid JSON" in body["log"][0]["error"]
    assert body["log"][1] == {"action": "promote", "version": "v2"}
    assert body["canary_check"] is None


def test_models_show_the_latest_canary_check(api: TestClient, redis: Any, settings: Any) -> None:
    from training.rollback import ModelOutcomes, decide
    from training.settings import RollbackConfig

    decision = decide(
        ModelOutcomes(version="v2", sessions=900, negative_sessions=90),
        ModelOutcomes(version="v3", sessions=200, negative_sessions=26),
        RollbackConfig(),
    )
    redis.hset(f"{settings.key_prefix}registry", mapping={"stable": "v2", "canary": "v3"})
    redis.set(
        f"{settings.key_prefix}registry:canary_check",
        json.dumps({**decision.to_dict(), "at_ms": 1_767_225_600_000}),
    )
    check = api.get("/api/models").json()["canary_check"]
    assert check["action"] == decision.action
    assert check["canary"]["negative_rate"] == 0.13 and check["stable"]["sessions"] == 900
    assert check["test"]["log_threshold"] > 0


def test_models_scan_matches_the_prefix_literally(
    redis_settings: RedisSettings, redis_prefix: str
) -> None:
    """A prefix with glob characters must not pick up another prefix's models."""
    mine = redis_settings.model_copy(update={"key_prefix": f"{redis_prefix}a*["})
    redis = mine.client()
    redis.hset(f"{redis_prefix}a*[model:mine", "sessions", 1)
    redis.hset(f"{redis_prefix}abc[model:other", "sessions", 1)  # matched by an unescaped glob
    api = TestClient(create_app(mine, DashboardSettings()))
    versions = [m["version"] for m in api.get("/api/models").json()["models"]]
    assert versions == ["mine"]


def test_session_returns_the_stored_hash(api: TestClient, redis: Any, settings: Any) -> None:
    key = f"{settings.key_prefix}session:s/1 é"
    fields = {
        "session_id": "s/1 é", "user_turns": "3", "reasons": "abandoned,cta_ignored",
        "flagged": "1", "status": "open", "updated_ms": "1717400000000",
        "min_intent_confidence": "",
    }  # fmt: skip
    redis.hset(key, mapping=fields)
    redis.expire(key, 7 * 24 * 3600)

    response = api.get("/api/session/s%2F1%20%C3%A9")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["fields"] == fields
    assert body["reasons"] == ["abandoned", "cta_ignored"]
    assert body["status"] == "open" and body["flagged"] is True
    assert body["updated_ms"] == 1_717_400_000_000
    assert 0 < body["ttl_ms"] <= 7 * 24 * 3600 * 1000


def test_unknown_session_is_404_naming_the_key(api: TestClient, settings: Any) -> None:
    response = api.get("/api/session/nope")
    assert response.status_code == 404
    assert f"{settings.key_prefix}session:nope" in response.json()["detail"]


def test_overlong_session_id_is_rejected(api: TestClient) -> None:
    response = api.get("/api/session/" + "x" * 129)
    assert response.status_code == 422
    assert "1-128" in response.json()["detail"]


def test_config_tells_the_page_how_often_to_poll(api: TestClient, settings: Any) -> None:
    assert api.get("/api/config").json() == {
        "refresh_ms": 5000, "history_minutes": 5, "key_prefix": settings.key_prefix,
    }  # fmt: skip


def test_page_and_assets_are_served_from_the_package(api: TestClient) -> None:
    page = api.get("/")
    assert page.status_code == 200 and 'data-testid="kpi-events"' in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        response = api.get(asset)
        assert response.status_code == 200 and len(response.content) > 1000, asset
    # Nothing fetched from elsewhere at run time.
    assert "http://" not in page.text.replace('xmlns="http://www.w3.org', "")
    assert "https://" not in page.text


def test_unreachable_redis_gives_503_without_the_password() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused
        port = sock.getsockname()[1]
        settings = RedisSettings(url=f"redis://:hunter2@127.0.0.1:{port}/0")
        api = TestClient(create_app(settings, DashboardSettings()))
        started = time.monotonic()
        response = api.get("/api/summary")
    assert time.monotonic() - started < 10
    assert response.status_code == 503
    detail = response.json()["detail"]
    assert f"127.0.0.1:{port}" in detail and "hunter2" not in detail

"""The Grafana dashboard's Redis queries, run against the real Redis of the local stack.

Grafana itself is not started here; this checks that every query the panels send
through the redis-datasource plugin reads the documented keys and returns the
figure the panel claims to show.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from pathlib import Path
from typing import Any

import pytest

from connectors.settings import RedisSettings

pytestmark = pytest.mark.integration

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "flywheel-dashboard.json"
KEY_FAMILIES = re.compile(
    r"^\$\{prefix\}(stats:total|pool|registry|registry:log|model:\$model|session:\$session)$"
)


def _targets() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target for panel in dashboard["panels"] for target in panel.get("targets", [])]


def _interpolate(text: str, prefix: str, model: str = "", session: str = "") -> str:
    return text.replace("${prefix}", prefix).replace("$model", model).replace("$session", session)


def _run_custom(client: Any, query: str) -> Any:
    """As the plugin does: split like a shell, then send command and arguments."""
    return client.execute_command(*shlex.split(query))


def test_dashboard_is_for_the_redis_plugin_and_reads_documented_keys() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["__inputs"][0]["pluginId"] == "redis-datasource"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["prefix"]["query"] == "fw:"
    targets = _targets()
    assert len(targets) >= 15
    for target in targets:
        assert target["datasource"]["type"] == "redis-datasource"
        if target.get("query"):
            assert "${prefix}" in target["query"], target
        else:
            assert KEY_FAMILIES.match(target["keyName"]), target["keyName"]
            assert target["command"] in ("hget", "hgetall")


@pytest.fixture
def seeded(redis_settings: RedisSettings, redis_prefix: str) -> tuple[Any, str]:
    client = redis_settings.client()
    p = redis_prefix
    client.hset(
        f"{p}stats:total",
        mapping={
            "events": 500,
            "explicit_signals": 40,
            "implicit_signals": 30,
            "negative_feedback": 10,
            "sessions_closed": 80,
            "sessions_flagged": 20,
            "flagged:abandoned": 12,
            "dlq": 3,
            "dlq:invalid_json": 3,
        },
    )
    seconds, _ = client.time()
    if seconds % 60 >= 55:  # keep seeding and reading within one minute
        time.sleep(61 - seconds % 60)
        seconds, _ = client.time()
    last_complete = seconds // 60 - 1
    client.hset(
        f"{p}stats:minute:{last_complete}",
        mapping={"events": 42, "explicit_signals": 4, "pool_samples_added": 2},
    )
    client.hset(f"{p}model:m1", mapping={"sessions": 9})
    client.hset(f"{p}session:s1", mapping={"user_turns": "3"})
    client.rpush(f"{p}registry:log", '{"action": "promote"}')
    return client, p


def test_every_query_runs_and_reads_the_right_figures(seeded: tuple[Any, str]) -> None:
    client, prefix = seeded
    results: dict[tuple[str, str], Any] = {}
    for target in _targets():
        if target.get("query"):
            query = _interpolate(target["query"], prefix, "m1", "s1")
            value = _run_custom(client, query)
            results[("cli", target["query"].split("${prefix}")[-1].strip())] = value
        else:
            key = _interpolate(target["keyName"], prefix, "m1", "s1")
            if target["command"] == "hget":
                value = client.hget(key, target["field"])
                results[("hget", target["field"])] = value
            else:
                value = client.hgetall(key)
            assert value is not None, key

    assert results[("hget", "events")] == "500"
    assert float(results[("cli", "negative_feedback explicit_signals")]) == 0.25
    assert float(results[("cli", "sessions_flagged sessions_closed")]) == 0.25
    # The per-minute panels read the last complete UTC minute's bucket.
    assert results[("cli", "events")] == "42"
    assert results[("cli", "explicit_signals")] == "4"
    assert results[("cli", "implicit_signals")] == "0"
    assert results[("cli", "pool_samples_added")] == "2"
    assert results[("cli", "registry:log -20 -1")] == ['{"action": "promote"}']


def test_rate_query_is_empty_when_nothing_was_counted(
    redis_settings: RedisSettings, redis_prefix: str
) -> None:
    client = redis_settings.client()
    rate = next(t for t in _targets() if t.get("query", "").endswith("sessions_closed"))
    assert _run_custom(client, _interpolate(rate["query"], redis_prefix)) == ""

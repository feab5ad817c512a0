"""The dashboard in headless Chromium against the real Redis of the local stack.

Every figure is checked against what Redis holds at the time, read here with a
plain client, so the tests do not depend on how the data got there.
"""

from __future__ import annotations

import base64
import math
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from dashboard_server import REPO_ROOT, serve
from flywheel_pipeline import PipelineFlywheel

from connectors.settings import RedisSettings

pytestmark = [pytest.mark.browser, pytest.mark.integration]

README_SCREENSHOT = REPO_ROOT / "deploy" / "screenshots" / "dashboard.png"
# The suite leaves the clone as it found it: the screenshot goes to pytest's temp dir,
# and only `FLYWHEEL_REFRESH_SCREENSHOT=1` (deploy/run.sh screenshot) refreshes the README's.
REFRESH_SCREENSHOT_ENV = "FLYWHEEL_REFRESH_SCREENSHOT"
WAIT_S = 15

# One consistent reading of every figure on the page (JS runs between renders).
SNAPSHOT_JS = """
const all = (sel) => [...document.querySelectorAll(sel)];
const attrs = (n) => ({value: n.dataset.value, text: n.textContent.trim()});
const keyed = (sel) => Object.fromEntries(all(sel).map((n) => [n.dataset.key, {
  value: n.dataset.value, count: n.dataset.count, text: n.textContent.trim()}]));
return {
  kpis: Object.fromEntries(all('[data-testid^="kpi-"]').map((n) => [n.dataset.testid, attrs(n)])),
  pool: Object.fromEntries(all('[data-testid^="pool-"]').map((n) => [n.dataset.testid, attrs(n)])),
  endMinute: Number(document.querySelector('[data-testid="minutes-chart"]').dataset.endMinute),
  count: Number(document.querySelector('[data-testid="minutes-chart"]').dataset.count),
  minuteTotals: keyed('[data-testid="minutes-total"]'),
  flagged: keyed('[data-testid="flagged-reasons"] g[data-key]'),
  dlq: keyed('[data-testid="dlq-reasons"] g[data-key]'),
  implicit: keyed('[data-testid="implicit-signals"] g[data-key]'),
  models: all('[data-testid="model-row"]').map((row) => ({
    version: row.dataset.version, role: row.dataset.role,
    fields: Object.fromEntries(all.call(null, '[data-testid="model-row"][data-version="'
      + CSS.escape(row.dataset.version) + '"] [data-field]').map((n) => [n.dataset.field,
      n.dataset.value])),
  })),
  status: document.querySelector('[data-testid="connection-status"]').dataset.state,
};
"""


def _wait(driver: Any, condition: Any, what: str) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        # The page re-renders on every refresh, so an element may go stale mid-check.
        return WebDriverWait(
            driver,
            WAIT_S,
            poll_frequency=0.1,
            ignored_exceptions=(StaleElementReferenceException,),
        ).until(condition)
    except TimeoutException:
        logs = driver.get_log("browser") if hasattr(driver, "get_log") else []
        pytest.fail(f"timed out waiting for {what}; browser console: {logs}")


def _by_testid(driver: Any, testid: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')


def _load(driver: Any, url: str) -> None:
    driver.get(url)
    _wait(
        driver,
        lambda d: d.execute_script("return document.body.dataset.loaded === 'true'"),
        "the dashboard's first render",
    )


def _num(text: str) -> float:
    return float(text)


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _assert_rate(shown: str, expected: float | None) -> None:
    if expected is None:
        assert shown == ""
    else:
        assert math.isclose(_num(shown), expected, rel_tol=1e-9), (shown, expected)


def _ints(raw: dict[str, str]) -> dict[str, int]:
    return {name: int(value) for name, value in raw.items()}


def test_page_shows_the_figures_redis_holds(
    browser: Any,
    dashboard_url: str,
    flywheel_state: PipelineFlywheel,
    dashboard_redis: RedisSettings,
) -> None:
    _load(browser, dashboard_url)
    page = browser.execute_script(SNAPSHOT_JS)
    assert page["status"] == "ok"

    prefix = dashboard_redis.key_prefix
    redis = dashboard_redis.client()
    total = _ints(redis.hgetall(f"{prefix}stats:total"))
    assert total["events"] > 0, "nothing to check: the data fixture wrote no events"
    kpis = page["kpis"]
    assert int(kpis["kpi-events"]["value"]) == total["events"]
    assert kpis["kpi-events"]["text"] == f"{total['events']:,}"
    assert int(kpis["kpi-explicit-signals"]["value"]) == total["explicit_signals"]
    assert int(kpis["kpi-implicit-signals"]["value"]) == total["implicit_signals"]
    assert int(kpis["kpi-dlq"]["value"]) == total.get("dlq", 0)
    negative_rate = _ratio(total["negative_feedback"], total["explicit_signals"])
    _assert_rate(kpis["kpi-negative-rate"]["value"], negative_rate)
    assert negative_rate is not None
    assert kpis["kpi-negative-rate"]["text"] == f"{negative_rate * 100:.1f}%"
    flagged_rate = _ratio(total["sessions_flagged"], total["sessions_closed"])
    _assert_rate(kpis["kpi-flagged-rate"]["value"], flagged_rate)

    # Per-minute series: the window the page drew, summed from the minute hashes.
    end, count = page["endMinute"], page["count"]
    assert count == 60
    window: dict[str, int] = {}
    for minute in range(end - count + 1, end + 1):
        for name, value in _ints(redis.hgetall(f"{prefix}stats:minute:{minute}")).items():
            window[name] = window.get(name, 0) + value
    assert window.get("events", 0) > 0, "the charted window holds no events"
    for name in ("events", "explicit_signals", "implicit_signals", "negative_feedback"):
        assert int(page["minuteTotals"][name]["value"]) == window.get(name, 0), name
    assert int(kpis["kpi-events-note"]["value"]) == window["events"]
    assert int(page["pool"]["pool-added-window"]["value"]) == window.get("pool_samples_added", 0)
    assert int(page["pool"]["pool-added-total"]["value"]) == total["pool_samples_added"]

    # Breakdowns by reason / signal.
    flagged = {k[len("flagged:") :]: v for k, v in total.items() if k.startswith("flagged:")}
    assert set(page["flagged"]) == set(flagged)
    for reason, n in flagged.items():
        assert int(page["flagged"][reason]["count"]) == n
        _assert_rate(page["flagged"][reason]["value"], n / total["sessions_closed"])
    dlq = {k[len("dlq:") :]: v for k, v in total.items() if k.startswith("dlq:")}
    assert {k: int(v["value"]) for k, v in page["dlq"].items()} == dlq
    implicit = {k[len("implicit:") :]: v for k, v in total.items() if k.startswith("implicit:")}
    assert {k: int(v["value"]) for k, v in page["implicit"].items()} == implicit

    # Pool, registry and model versions.
    for field, value in _ints(redis.hgetall(f"{prefix}pool")).items():
        assert int(page["pool"][f"pool-{field}"]["value"]) == value, field
    registry = redis.hgetall(f"{prefix}registry")
    models = {row["version"]: row for row in page["models"]}
    assert page["models"][0]["version"] == registry["stable"]
    assert models[registry["stable"]]["role"] == "stable"
    assert models[registry["canary"]]["role"] == "canary"
    canary_share = float(registry["canary_share"])
    assert math.isclose(float(models[registry["canary"]]["fields"]["traffic_share"]), canary_share)
    assert math.isclose(
        float(models[registry["stable"]]["fields"]["traffic_share"]), 1 - canary_share
    )
    versions = {key[len(f"{prefix}model:") :] for key in redis.scan_iter(f"{prefix}model:*")}
    assert set(models) == versions | {registry["stable"], registry["canary"]}
    for version in versions:
        stats = _ints(redis.hgetall(f"{prefix}model:{version}"))
        shown = models[version]["fields"]
        assert int(shown["sessions"]) == stats["sessions"]
        _assert_rate(shown["negative_rate"], _ratio(stats["negative_sessions"], stats["sessions"]))
        _assert_rate(shown["flagged_rate"], _ratio(stats["flagged_sessions"], stats["sessions"]))


def test_page_follows_new_writes(
    browser: Any,
    dashboard_url: str,
    flywheel_state: PipelineFlywheel,
    dashboard_redis: RedisSettings,
) -> None:
    _load(browser, dashboard_url)
    redis = dashboard_redis.client()
    events = redis.hincrby(f"{dashboard_redis.key_prefix}stats:total", "events", 7)
    _wait(
        browser,
        lambda d: _by_testid(d, "kpi-events").get_attribute("data-value") == str(events),
        f"the events card to show {events} after a write",
    )


def test_session_lookup_shows_live_features_and_screenshot(
    browser: Any,
    dashboard_url: str,
    flywheel_state: PipelineFlywheel,
    dashboard_redis: RedisSettings,
    tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By

    _load(browser, dashboard_url)
    session_id = flywheel_state.flagged_session_id
    field = _by_testid(browser, "session-input")
    field.clear()
    field.send_keys(session_id)
    _by_testid(browser, "session-submit").click()
    result = _wait(
        browser,
        lambda d: (
            _by_testid(d, "session-result")
            if _by_testid(d, "session-result").get_attribute("data-session-id") == session_id
            else False
        ),
        f"session {session_id} to show",
    )
    assert result is not None
    stored = dashboard_redis.client().hgetall(f"{dashboard_redis.key_prefix}session:{session_id}")
    # The page re-renders the session on every refresh: read it in one script so no
    # element goes stale between two reads.
    page = browser.execute_script(
        """
        const root = document.querySelector('[data-testid="session-result"]');
        const fields = {};
        root.querySelectorAll('[data-field]').forEach((n) => {
          fields[n.getAttribute('data-field')] = {
            value: n.getAttribute('data-value'), text: n.innerText.trim() };
        });
        const status = document.querySelector('[data-testid="session-status"]');
        const reasons = [...document.querySelectorAll('[data-testid="session-reason"]')]
          .map((b) => b.getAttribute('data-value'));
        return {fields, status: status && status.getAttribute('data-value'), reasons,
                displayed: root.offsetParent !== null};
        """
    )
    assert page["displayed"]
    shown = page["fields"]
    skipped_in_grid = {"session_id", "status", "reasons", "flagged"}  # shown in the header
    assert set(shown) == set(stored) - skipped_in_grid
    for name, node in shown.items():
        assert node["value"] == stored[name], name
    assert shown["no_order"]["text"] == ("yes" if stored["no_order"] == "1" else "no")
    assert shown["user_turns"]["text"] == stored["user_turns"]
    assert page["status"] == stored["status"]
    assert page["reasons"] == stored["reasons"].split(",")
    assert browser.current_url.endswith(f"#session={session_id}")

    # A later write to the session shows up without another click (live features).
    dashboard_redis.client().hset(
        f"{dashboard_redis.key_prefix}session:{session_id}", "user_turns", "9"
    )
    _wait(
        browser,
        lambda d: (
            d.find_element(
                By.CSS_SELECTOR, '[data-testid="session-result"] [data-field="user_turns"]'
            ).get_attribute("data-value")
            == "9"
        ),
        "the session's new user_turns",
    )
    target = tmp_path / "dashboard.png"
    if os.environ.get(REFRESH_SCREENSHOT_ENV) == "1":
        target = README_SCREENSHOT
    _save_full_page(browser, target)
    assert target.stat().st_size > 10_000


def test_unknown_session_says_so(
    browser: Any, dashboard_url: str, flywheel_state: PipelineFlywheel
) -> None:
    _load(browser, dashboard_url)
    _by_testid(browser, "session-input").send_keys("no-such-session")
    _by_testid(browser, "session-submit").click()
    error = _wait(
        browser,
        lambda d: (
            _by_testid(d, "session-error")
            if _by_testid(d, "session-error").is_displayed()
            else False
        ),
        "the unknown-session message",
    )
    assert "no session 'no-such-session'" in error.text
    assert not _by_testid(browser, "session-result").is_displayed()


def test_unreachable_redis_is_reported_on_the_page(browser: Any) -> None:
    with _closed_port() as port:
        settings = RedisSettings(url=f"redis://:s3cret@127.0.0.1:{port}/0")
        server = serve(settings, timedelta(seconds=1))
        url = next(server)
        try:
            browser.get(url)
            banner = _wait(
                browser,
                lambda d: (
                    _by_testid(d, "error-banner")
                    if _by_testid(d, "error-banner").is_displayed()
                    else False
                ),
                "the Redis error banner",
            )
            assert f"127.0.0.1:{port}" in banner.text
            assert "s3cret" not in banner.text
            status = _by_testid(browser, "connection-status")
            assert status.get_attribute("data-state") == "error"
        finally:
            server.close()


class _closed_port:
    """A loopback port nothing listens on, for as long as the block runs."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        return int(self._sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


def _save_full_page(driver: Any, path: Path) -> None:
    """PNG of the whole page (not only the viewport) through the DevTools protocol."""
    driver.execute_script("window.scrollTo(0, 0)")
    width = driver.execute_script("return document.documentElement.scrollWidth")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        },
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))

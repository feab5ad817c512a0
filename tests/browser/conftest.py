"""Fixtures for the dashboard's browser tests: Chromium, a live server, seeded Redis.

The data the page shows comes from one fixture, ``flywheel_state``; swap it for
one that runs the real pipeline and the tests stay as they are (they compare the
page with what Redis holds, never with what the seeder meant to write).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from dashboard_server import REPO_ROOT, serve
from flywheel_seed import SeededFlywheel, seed_flywheel

from connectors.settings import RedisSettings

ENSURE_BROWSER = REPO_ROOT / "deploy" / "ensure_browser.sh"
CHROMIUM = os.environ.get("FLYWHEEL_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FLYWHEEL_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--window-size=1440,1000",
)


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """Paths of Chromium and chromedriver, installed (as root) when missing."""
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        result = subprocess.run(
            ["sh", str(ENSURE_BROWSER)], capture_output=True, text=True, timeout=900
        )
        if result.returncode != 0:
            pytest.skip(
                f"Chromium cannot be installed here ({ENSURE_BROWSER} exited "
                f"{result.returncode}): {result.stderr.strip()[-300:]}"
            )
    return CHROMIUM, CHROMEDRIVER


@pytest.fixture
def browser(chromium: tuple[str, str]) -> Iterator[object]:
    """A headless Chromium driven by selenium, offline, with a throwaway profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager download
    binary, driver_path = chromium
    profile = tempfile.mkdtemp(prefix="flywheel-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def dashboard_redis(redis_settings: RedisSettings, redis_prefix: str) -> RedisSettings:
    """The stack's Redis with this test's own key prefix."""
    return redis_settings.model_copy(update={"key_prefix": redis_prefix})


@pytest.fixture
def flywheel_state(dashboard_redis: RedisSettings) -> SeededFlywheel:
    """The flywheel's Redis state the page shows (seeded as the jobs would write it)."""
    client = dashboard_redis.client()
    try:
        return seed_flywheel(client, dashboard_redis.key_prefix, time.time_ns() // 1_000_000)
    finally:
        client.close()


@pytest.fixture
def dashboard_url(dashboard_redis: RedisSettings) -> Iterator[str]:
    """A running dashboard reading this test's keys, polling every second."""
    yield from serve(dashboard_redis, timedelta(seconds=1))

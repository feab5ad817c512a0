"""Fixtures for the dashboard's browser tests: Chromium, a live server, pipeline-fed Redis.

The data the page shows comes from one fixture, ``flywheel_state``: one run per
module of the real pipeline (generated traffic -> Kafka -> streaming feature job
-> Redis, the pool consumer on the job's flagged topic; see ``flywheel_pipeline``).
The tests compare the page with what Redis holds, never with what the generator
meant to produce. Tests that use it are marked ``flink`` here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from dashboard_server import REPO_ROOT, serve
from flywheel_pipeline import PipelineFlywheel, pipeline_flywheel

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


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test fed by the pipeline runs a PyFlink job: mark it ``flink``."""
    for item in items:
        if "flywheel_state" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.flink)


@pytest.fixture(scope="module")
def pipeline_state(
    stack_endpoints: object, kafka_admin: object, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PipelineFlywheel]:
    """One run of the real pipeline per module, under a readable prefix of its own."""
    prefix = f"fw-e2e-{uuid.uuid4().hex[:6]}:"
    tmp_dir = tmp_path_factory.mktemp("dashboard-pipeline")
    with pipeline_flywheel(stack_endpoints, kafka_admin, tmp_dir, prefix) as state:
        print(f"\ndashboard pipeline: {state.records} records, job run {state.job_seconds:.0f} s")
        yield state


@pytest.fixture
def flywheel_state(pipeline_state: PipelineFlywheel) -> PipelineFlywheel:
    """The flywheel's Redis state the page shows, as the pipeline wrote it."""
    return pipeline_state


@pytest.fixture
def dashboard_redis(
    redis_settings: RedisSettings, pipeline_state: PipelineFlywheel
) -> RedisSettings:
    """The stack's Redis, read under the pipeline run's key prefix."""
    return redis_settings.model_copy(update={"key_prefix": pipeline_state.prefix})


@pytest.fixture
def dashboard_url(dashboard_redis: RedisSettings) -> Iterator[str]:
    """A running dashboard reading this test's keys, polling every second."""
    yield from serve(dashboard_redis, timedelta(seconds=1))

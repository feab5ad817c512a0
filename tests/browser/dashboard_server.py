"""Run the dashboard in-process for a test, on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import uvicorn

from connectors.settings import RedisSettings
from jobs.dashboard.app import create_app
from jobs.dashboard.settings import DashboardSettings

REPO_ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(redis_settings: RedisSettings, refresh: timedelta) -> Iterator[str]:
    """Run the dashboard in a background thread; yields its base URL."""
    settings = DashboardSettings(port=_free_port(), refresh=refresh)
    app = create_app(redis_settings, settings)
    server = uvicorn.Server(
        uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="dashboard", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("dashboard server did not start")
        time.sleep(0.05)
    try:
        yield f"http://{settings.host}:{settings.port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)

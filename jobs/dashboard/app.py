"""The dashboard's FastAPI app: a JSON API over Redis plus one static page."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import redis
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from connectors.settings import RedisSettings, to_ms
from jobs.dashboard import store
from jobs.dashboard.settings import DashboardSettings
from schemas.redis_layout import MS_PER_MINUTE, RedisKeys

STATIC_DIR = Path(__file__).parent / "static"
MAX_MINUTES = 2880  # the per-minute hashes live 2 days


def redacted_url(url: str) -> str:
    """The Redis URL without a password, for error messages."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@")
    return parsed._replace(netloc=netloc).geturl()


def create_app(
    redis_settings: RedisSettings,
    dashboard_settings: DashboardSettings,
    *,
    clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
) -> FastAPI:
    """Build the app; ``clock_ms`` says which minute is "now" (UTC epoch ms)."""
    client = redis_settings.client()
    keys = RedisKeys(redis_settings.key_prefix)
    app = FastAPI(title="Flywheel dashboard", docs_url="/api/docs", redoc_url=None)
    app.state.redis = client

    @app.exception_handler(redis.RedisError)
    async def _redis_down(request: Request, exc: redis.RedisError) -> JSONResponse:
        detail = f"Redis at {redacted_url(redis_settings.url)} failed: {exc}"
        return JSONResponse(status_code=503, content={"detail": detail})

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        client.ping()
        return {"ok": True}

    @app.get("/api/config")
    def config() -> dict[str, Any]:
        """What the page needs to know before it polls."""
        return {
            "refresh_ms": to_ms(dashboard_settings.refresh),
            "history_minutes": dashboard_settings.history_minutes,
            "key_prefix": keys.prefix,
        }

    @app.get("/api/summary")
    def summary() -> dict[str, Any]:
        """All-time counters and rates, pool and registry."""
        return {"now_ms": clock_ms(), **store.read_summary(client, keys)}

    @app.get("/api/minutes")
    def minutes(
        n: int = Query(default=dashboard_settings.history_minutes, ge=1, le=MAX_MINUTES),
        end_minute: int | None = Query(default=None, ge=0, description="UTC epoch minute"),
    ) -> dict[str, Any]:
        """Per-minute counters of the last ``n`` minutes (ending now unless ``end_minute``)."""
        now_ms = clock_ms()
        last = now_ms // MS_PER_MINUTE if end_minute is None else end_minute
        return {"now_ms": now_ms, **store.read_minutes(client, keys, last, n)}

    @app.get("/api/models")
    def models() -> dict[str, Any]:
        """Model versions with their traffic share and closed-session rates."""
        return {"now_ms": clock_ms(), **store.read_models(client, keys)}

    @app.get("/api/session/{session_id:path}")
    def session(session_id: str) -> dict[str, Any]:
        """One session's live features from ``<prefix>session:<id>``."""
        if not 1 <= len(session_id) <= store.MAX_SESSION_ID_CHARS:
            raise HTTPException(
                status_code=422,
                detail=f"session_id must be 1-{store.MAX_SESSION_ID_CHARS} characters",
            )
        found = store.read_session(client, keys, session_id)
        if found is None:
            raise HTTPException(
                status_code=404,
                detail=f"no session {session_id!r}: Redis has no key {keys.session(session_id)}",
            )
        return {"now_ms": clock_ms(), **found}

    return app

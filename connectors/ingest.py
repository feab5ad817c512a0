"""HTTP ingestion: a FastAPI service that validates events and writes them to Kafka.

Endpoints (OpenAPI document at ``/openapi.json``, interactive docs at ``/docs``):

* ``POST /events`` - one event object or a JSON array of events. Every event is
  validated with :func:`schemas.parse` first; if any is invalid the answer is
  ``422`` listing ``index``, ``field``, ``reason`` and ``message`` per problem and
  nothing is written. Otherwise the service answers ``202`` only after Kafka
  acknowledged every event (``acks=all``, idempotent producer).
* ``POST /feedback`` - shortcut for a ``feedback`` event: ``kind``, ``session_id``,
  ``user_id`` and the optional feedback fields; ``event_id`` (UUIDv7) and ``ts_ms``
  (now) are filled in when missing.
* ``GET /healthz`` - 200 when Kafka answers and the events topic exists, else 503.

Bodies larger than ``max_request_bytes`` and arrays of more than ``max_batch_events``
get ``413``; a body that is not ``application/json`` gets ``415`` (so a web page cannot
post ``text/plain`` cross-origin without a preflight). When ``auth_token`` is set,
``/events`` and ``/feedback`` need ``Authorization: Bearer <token>`` (else ``401``); the
service refuses to start on a non-loopback address without one. Each client (remote
address) may send ``rate_limit_per_s`` requests per second with bursts of
``rate_limit_burst``; beyond that ``429`` with ``Retry-After``. ``/healthz`` and the
docs stay open for load balancers and humans.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from connectors.producer import (
    BufferFullError,
    DeliveryError,
    EncodedEvent,
    EventProducer,
    InvalidEventError,
    ProducerSettings,
    encode_event,
)
from connectors.settings import FlywheelSettings
from schemas import FEEDBACK_KINDS, SUPPORTED_SCHEMA_VERSION, ParseError, decode_json, load_schema

logger = logging.getLogger(__name__)


class IngestSettings(FlywheelSettings):
    """HTTP ingestion service settings (``FLYWHEEL_INGEST_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="FLYWHEEL_INGEST_",
        extra="forbid",
        frozen=True,
        validate_default=True,
        env_nested_delimiter="__",
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_request_bytes: int = Field(
        default=1_048_576, ge=1, description="Largest accepted request body (else 413)."
    )
    max_batch_events: int = Field(
        default=5_000, ge=1, description="Most events in one POST /events array (else 413)."
    )
    auth_token: SecretStr | None = Field(
        default=None, description="When set, POST endpoints need 'Authorization: Bearer <token>'."
    )
    ack_timeout: timedelta = Field(
        default=timedelta(seconds=30),
        description="How long a request waits for Kafka's acknowledgements before a 503.",
    )
    health_timeout: timedelta = timedelta(seconds=3)
    rate_limit_per_s: float = Field(
        default=200.0, ge=0, description="Requests per second per client (0: no limit)."
    )
    rate_limit_burst: int = Field(default=400, ge=1, description="Requests a client may burst.")
    producer: ProducerSettings = Field(default_factory=ProducerSettings)

    @model_validator(mode="after")
    def _token_when_exposed(self) -> IngestSettings:
        if self.auth_token is None and not _is_loopback(self.host):
            raise ValueError(
                f"auth_token: required when host is not a loopback address (host={self.host!r});"
                " set FLYWHEEL_INGEST_AUTH_TOKEN, or listen on 127.0.0.1"
            )
        return self


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


class RateLimiter:
    """Token buckets per client: ``per_s`` requests per second, bursts of ``burst``.

    ``clock`` is seconds (monotonic); buckets of clients idle long enough to be full again
    are dropped, so memory stays bounded by the clients of the last ``burst / per_s`` s.
    """

    def __init__(self, per_s: float, burst: int, clock: Any = time.monotonic) -> None:
        self.per_s = per_s
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)
        self._last_sweep = clock()

    def acquire(self, client: str) -> float:
        """0 when the request may go; else seconds until it could."""
        if self.per_s <= 0:
            return 0.0
        now = self.clock()
        tokens, at = self._buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.per_s)
        if now - self._last_sweep > self.burst / self.per_s:
            self._sweep(now)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            return 0.0
        self._buckets[client] = (tokens, now)
        return float((1.0 - tokens) / self.per_s)

    def _sweep(self, now: float) -> None:
        full_after = self.burst / self.per_s
        self._buckets = {c: v for c, v in self._buckets.items() if now - v[1] < full_after}
        self._last_sweep = now


# --------------------------------------------------------------------------- documents


class FieldProblem(BaseModel):
    """Why one event was rejected."""

    index: int | None = Field(description="Position in the request's array (0 for one object).")
    field: str | None = Field(description="Offending field; null when the whole body is bad.")
    reason: str = Field(description="One of schemas.PARSE_REASONS.")
    message: str


class RejectedBody(BaseModel):
    """422: nothing from this request was written."""

    detail: str
    errors: list[FieldProblem]


class Accepted(BaseModel):
    """202: Kafka acknowledged every event of the request."""

    accepted: int
    event_ids: list[str]


class NotAcknowledged(BaseModel):
    """503: some events may not be stored; resending them (same event_ids) is safe."""

    detail: str
    event_ids: list[str]


class FeedbackRequest(BaseModel):
    """Body of POST /feedback (unknown fields are ignored)."""

    kind: str = Field(description=f"One of {', '.join(FEEDBACK_KINDS)}.")
    session_id: str
    user_id: str
    request_id: str | None = Field(default=None, description="Response or prediction it is about.")
    rating: int | None = Field(default=None, description="1..5; required when kind is rating.")
    corrected_text: str | None = None
    corrected_intent: str | None = None
    event_id: str | None = Field(default=None, description="Generated (UUIDv7) when missing.")
    ts_ms: int | None = Field(default=None, description="Epoch ms UTC; now when missing.")


class Health(BaseModel):
    status: str
    detail: str = ""
    topic: str = ""
    partitions: int = 0


class _Rejected(Exception):
    def __init__(self, problems: list[FieldProblem]) -> None:
        self.problems = problems


def _problem(index: int | None, error: ParseError) -> FieldProblem:
    return FieldProblem(index=index, field=error.field, reason=error.reason, message=error.message)


# --------------------------------------------------------------------------- app

_bearer = HTTPBearer(auto_error=False, description="Needed when FLYWHEEL_INGEST_AUTH_TOKEN is set.")


def _limit_rate(request: Request) -> None:
    """429 with Retry-After once a client is over its rate."""
    limiter: RateLimiter = request.app.state.rate_limiter
    client = request.client.host if request.client is not None else "unknown"
    wait_s = limiter.acquire(client)
    if wait_s > 0:
        raise HTTPException(
            status_code=429,
            detail="too many requests",
            headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
        )


def _require_json(request: Request) -> None:
    """415 unless the body is declared application/json."""
    declared = request.headers.get("content-type", "")
    media_type = declared.split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise HTTPException(
            status_code=415, detail="the request body must be Content-Type: application/json"
        )


def _authorize(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 unless the bearer token matches (when a token is configured)."""
    expected: bytes | None = request.app.state.auth_token
    if expected is None:
        return
    given = credentials.credentials.encode() if credentials is not None else b""
    if not hmac.compare_digest(given, expected):
        raise HTTPException(
            status_code=401,
            detail="missing or invalid bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )


def create_app(
    settings: IngestSettings | None = None, *, producer: EventProducer | None = None
) -> FastAPI:
    """The ingestion app; owns (creates and closes) its producer unless one is given."""
    settings = settings if settings is not None else IngestSettings.load()
    state: dict[str, EventProducer] = {}
    if producer is not None:
        state["producer"] = producer

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = producer is None
        if owned:
            state["producer"] = EventProducer(settings.producer)
        try:
            yield
        finally:
            if owned:
                await asyncio.to_thread(state.pop("producer").close)

    app = FastAPI(
        title="Flywheel ingestion",
        version="1",
        summary="Validated, acknowledged writes of raw assistant events to Kafka.",
        lifespan=lifespan,
    )
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
    app.state.auth_token = (
        settings.auth_token.get_secret_value().encode() if settings.auth_token is not None else None
    )
    ack_timeout = settings.ack_timeout.total_seconds()

    @app.exception_handler(_Rejected)
    async def _rejected(request: Request, exc: _Rejected) -> JSONResponse:
        body = RejectedBody(
            detail=f"{len(exc.problems)} problem(s); nothing was written", errors=exc.problems
        )
        return JSONResponse(status_code=422, content=body.model_dump())

    async def read_body(request: Request) -> bytes:
        limit = settings.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPException(413, f"request body larger than {limit} bytes")
        size = 0
        chunks: list[bytes] = []
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, f"request body larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def write(encoded: list[EncodedEvent]) -> JSONResponse:
        ids = [e.event_id for e in encoded]
        try:
            await asyncio.wait_for(state["producer"].send_many_async(encoded), timeout=ack_timeout)
        except DeliveryError as exc:
            logger.warning("ingest: %s", exc)
            return _unavailable(f"Kafka did not acknowledge: {exc}", exc.event_ids)
        except TimeoutError:
            return _unavailable(f"Kafka did not acknowledge within {ack_timeout:g}s", ids)
        except BufferFullError as exc:
            return _unavailable(str(exc), ids)
        except Exception as exc:  # e.g. a fatal producer error: still answer with data
            logger.exception("ingest: write failed")
            return _unavailable(f"write failed: {exc}", ids)
        return JSONResponse(
            status_code=202, content=Accepted(accepted=len(ids), event_ids=ids).model_dump()
        )

    common_responses: dict[int | str, dict[str, Any]] = {
        202: {"model": Accepted},
        401: {"description": "Missing or wrong bearer token."},
        413: {"description": "Body or batch too large."},
        415: {"description": "The body is not application/json."},
        429: {"description": "Over this client's rate; see Retry-After."},
        422: {"model": RejectedBody},
        503: {"model": NotAcknowledged},
    }

    @app.post(
        "/events",
        status_code=202,
        responses=common_responses,
        dependencies=[Depends(_limit_rate), Depends(_authorize), Depends(_require_json)],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                {"$ref": "#/components/schemas/Event"},
                                {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                            ]
                        }
                    }
                },
            }
        },
    )
    async def post_events(request: Request) -> JSONResponse:
        """Validate one event or an array of events, then write them to Kafka.

        All or nothing on validation: one bad event rejects the request (422). A missing
        event_id is generated; the ids are returned.
        """
        decoded = decode_json(await read_body(request))
        if isinstance(decoded, ParseError):
            raise _Rejected([_problem(None, decoded)])
        items = decoded if isinstance(decoded, list) else [decoded]
        if len(items) > settings.max_batch_events:
            raise HTTPException(
                413, f"{len(items)} events in one request; at most {settings.max_batch_events}"
            )
        encoded, problems = _encode_all(items)
        if problems:
            raise _Rejected(problems)
        return await write(encoded)

    @app.post(
        "/feedback",
        status_code=202,
        responses=common_responses,
        dependencies=[Depends(_limit_rate), Depends(_authorize), Depends(_require_json)],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/FeedbackRequest"}}
                },
            }
        },
    )
    async def post_feedback(request: Request) -> JSONResponse:
        """Record explicit feedback (thumbs, rating, edit, correction) as a feedback event."""
        decoded = decode_json(await read_body(request))
        if isinstance(decoded, ParseError):
            raise _Rejected([_problem(None, decoded)])
        if not isinstance(decoded, dict):
            raise _Rejected(
                [FieldProblem(index=None, field=None, reason="not_an_object",
                              message="expected a JSON object")]
            )  # fmt: skip
        fields = {k: v for k, v in decoded.items() if v is not None}
        fields["event_type"] = "feedback"
        fields.setdefault("schema_version", SUPPORTED_SCHEMA_VERSION)
        fields.setdefault("ts_ms", time.time_ns() // 1_000_000)
        encoded, problems = _encode_all([fields])
        if problems:
            raise _Rejected(problems)
        return await write(encoded)

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}})
    async def healthz() -> JSONResponse:
        """200 when Kafka answers and the events topic exists; 503 otherwise."""
        active = state.get("producer")
        if active is None:
            return JSONResponse(status_code=503, content=Health(status="starting").model_dump())
        topic = active.topic
        try:
            metadata = await asyncio.to_thread(
                active.list_topics, settings.health_timeout.total_seconds()
            )
        except Exception as exc:
            return JSONResponse(
                status_code=503,
                content=Health(
                    status="unavailable", detail=f"Kafka: {exc}", topic=topic
                ).model_dump(),
            )
        meta = metadata.topics.get(topic)
        if meta is None or meta.error is not None:
            detail = f"topic {topic} missing" if meta is None else f"topic {topic}: {meta.error}"
            return JSONResponse(
                status_code=503,
                content=Health(status="unavailable", detail=detail, topic=topic).model_dump(),
            )
        return JSONResponse(
            content=Health(status="ok", topic=topic, partitions=len(meta.partitions)).model_dump()
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=__doc__,
                routes=app.routes,
            )
            components = document.setdefault("components", {}).setdefault("schemas", {})
            components.update(_event_components())
            components["FeedbackRequest"] = FeedbackRequest.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _encode_all(items: list[Any]) -> tuple[list[EncodedEvent], list[FieldProblem]]:
    encoded: list[EncodedEvent] = []
    problems: list[FieldProblem] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append(
                FieldProblem(index=index, field=None, reason="not_an_object",
                             message="expected a JSON object")
            )  # fmt: skip
            continue
        try:
            encoded.append(encode_event(item))
        except InvalidEventError as exc:
            problems.append(_problem(index, exc.error))
    return encoded, problems


def _unavailable(detail: str, event_ids: list[str]) -> JSONResponse:
    return JSONResponse(
        status_code=503,
        content=NotAcknowledged(detail=detail, event_ids=event_ids).model_dump(),
        headers={"Retry-After": "1"},
    )


def _event_components() -> dict[str, Any]:
    """The event JSON Schema as OpenAPI components (its $defs hoisted, refs rewritten)."""
    schema = load_schema("event.v1")
    defs = schema.pop("$defs", {})
    schema.pop("$schema", None)

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: rewrite(v) for k, v in node.items()}
            ref = out.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                out["$ref"] = "#/components/schemas/Event_" + ref.removeprefix("#/$defs/")
            return out
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    components = {"Event": rewrite(schema)}
    for name, definition in defs.items():
        components["Event_" + name] = rewrite(definition)
    return components


# --------------------------------------------------------------------------- serving


def serve(settings: IngestSettings | None = None, *, log_level: str = "info") -> None:
    """Run the service with uvicorn until interrupted."""
    import uvicorn

    settings = settings if settings is not None else IngestSettings.load()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=log_level)


@contextmanager
def running_server(
    settings: IngestSettings | None = None,
    *,
    producer: EventProducer | None = None,
    startup_timeout: float = 30.0,
) -> Iterator[str]:
    """Serve on a background thread; yields the base URL (port 0 picks a free one)."""
    import uvicorn

    settings = settings if settings is not None else IngestSettings.load()
    config = uvicorn.Config(
        create_app(settings, producer=producer),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="flywheel-ingest", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("ingestion server did not start")
        time.sleep(0.05)
    sockets = [s for srv in server.servers for s in srv.sockets]
    host, port = sockets[0].getsockname()[:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


__all__ = [
    "Accepted",
    "FeedbackRequest",
    "FieldProblem",
    "IngestSettings",
    "RateLimiter",
    "RejectedBody",
    "create_app",
    "running_server",
    "serve",
]

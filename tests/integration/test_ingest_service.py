"""The HTTP ingestion service on a real uvicorn server and the real broker."""

from __future__ import annotations

import json
import socket
import uuid
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition

from connectors.ingest import IngestSettings, running_server
from connectors.producer import ProducerSettings
from connectors.settings import KafkaSettings
from schemas import load_schema

pytestmark = pytest.mark.integration

TS = 1_717_400_000_000
TOKEN = "test-token-" + uuid.uuid4().hex


def make_events(count: int, sessions: int, tag: str) -> list[dict[str, Any]]:
    events = []
    for n in range(count):
        event: dict[str, Any] = {
            "event_id": f"{tag}-e{n}",
            "schema_version": 1,
            "session_id": f"{tag}-s{n % sessions}",
            "user_id": f"{tag}-u{n % sessions}",
            "ts_ms": TS + n,
        }
        if n % 3 == 0:
            event |= {"event_type": "user_message", "text": f"question {n}"}
        elif n % 3 == 1:
            event |= {"event_type": "cart_add", "sku": f"sku-{n}", "quantity": 1, "amount": 9.5}
        else:
            event |= {"event_type": "fsm_state", "to_state": f"state-{n % 5}"}
        events.append(event)
    return events


def read_back(
    bootstrap: str, topic: str, expected: int, settle_s: float = 3.0, timeout_s: float = 120.0
) -> list[Any]:
    """All committed records of ``topic`` in per-partition order (waits for duplicates too)."""
    import time

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"readback-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        settle_until: float | None = None
        while time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                assert msg.error() is None, msg.error()
                records.append(msg)
            if len(records) >= expected:
                settle_until = settle_until or time.monotonic() + settle_s
                if time.monotonic() >= settle_until:
                    break
        return records
    finally:
        consumer.close()


@pytest.fixture
def topic(unique_topic: Any) -> str:
    return str(unique_topic(partitions=4))


def _settings(bootstrap: str, topic: str, **overrides: Any) -> IngestSettings:
    producer = ProducerSettings.load(kafka=KafkaSettings(bootstrap_servers=bootstrap), topic=topic)
    values: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "producer": producer}
    values.update(overrides)
    return IngestSettings.load(**values)


@pytest.fixture
def server(kafka_bootstrap: str, topic: str) -> Iterator[str]:
    settings = _settings(
        kafka_bootstrap, topic, auth_token=TOKEN, max_request_bytes=256 * 1024, max_batch_events=500
    )
    with running_server(settings) as url:
        yield url


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60
    ) as http:
        yield http


def test_10k_events_over_http_read_back_exactly_once_in_session_order(
    server: str, kafka_bootstrap: str, topic: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    events = make_events(10_000, sessions=200, tag=tag)
    # Four concurrent clients, each owning a quarter of the sessions and sending in order:
    # batches of up to 200 plus some single-object requests.
    lanes: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        lanes[int(event["session_id"].rsplit("s", 1)[1]) % 4].append(event)

    def send_lane(lane: list[dict[str, Any]]) -> int:
        accepted = 0
        with httpx.Client(
            base_url=server, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60
        ) as http:
            position = 0
            while position < len(lane):
                if position % 1_000 == 0:  # now and then a single event, not an array
                    body: Any = lane[position]
                    position += 1
                else:
                    body = lane[position : position + 200]
                    position += len(body)
                response = http.post("/events", json=body)
                assert response.status_code == 202, response.text
                accepted += response.json()["accepted"]
        return accepted

    with ThreadPoolExecutor(max_workers=4) as pool:
        accepted = sum(pool.map(send_lane, lanes.values()))
    assert accepted == len(events)

    records = read_back(kafka_bootstrap, topic, expected=len(events))
    ids = [json.loads(r.value())["event_id"] for r in records]
    assert len(ids) == len(set(ids)) == len(events), "lost or duplicated events"
    assert set(ids) == {e["event_id"] for e in events}
    sent_order: dict[str, list[str]] = defaultdict(list)
    for event in events:
        sent_order[event["session_id"]].append(event["event_id"])
    read_order: dict[str, list[str]] = defaultdict(list)
    partitions: dict[str, set[int]] = defaultdict(set)
    for record in records:
        value = json.loads(record.value())
        assert record.key() == value["session_id"].encode()
        read_order[value["session_id"]].append(value["event_id"])
        partitions[value["session_id"]].add(record.partition())
    assert all(len(p) == 1 for p in partitions.values())
    assert read_order == sent_order


def test_202_means_stored(client: httpx.Client, kafka_bootstrap: str, topic: str) -> None:
    events = make_events(3, sessions=1, tag=uuid.uuid4().hex[:8])
    del events[0]["event_id"]
    response = client.post("/events", json=events)
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 3
    generated = body["event_ids"][0]
    assert uuid.UUID(generated).version == 7
    assert body["event_ids"][1:] == [e["event_id"] for e in events[1:]]
    # Acknowledged before the answer: the records are readable right away.
    records = read_back(kafka_bootstrap, topic, expected=3, settle_s=0.5)
    assert [json.loads(r.value())["event_id"] for r in records] == body["event_ids"]


def test_feedback_shortcut_builds_a_feedback_event(
    client: httpx.Client, kafka_bootstrap: str, topic: str
) -> None:
    response = client.post(
        "/feedback",
        json={"kind": "rating", "rating": 2, "session_id": "fb-s", "user_id": "fb-u",
              "request_id": "req-9", "corrected_text": "cheaper please"},
    )  # fmt: skip
    assert response.status_code == 202, response.text
    (event_id,) = response.json()["event_ids"]
    (record,) = read_back(kafka_bootstrap, topic, expected=1, settle_s=0.5)
    value = json.loads(record.value())
    assert record.key() == b"fb-s"
    assert value["event_id"] == event_id
    assert value["event_type"] == "feedback"
    assert value["schema_version"] == 1
    assert value["kind"] == "rating" and value["rating"] == 2
    assert value["request_id"] == "req-9" and value["corrected_text"] == "cheaper please"
    import time

    assert abs(value["ts_ms"] - time.time() * 1000) < 60_000

    explicit = client.post(
        "/feedback",
        json={"kind": "thumbs_up", "session_id": "fb-s", "user_id": "fb-u", "event_id": "fb-1",
              "ts_ms": TS},
    )  # fmt: skip
    assert explicit.status_code == 202
    assert explicit.json()["event_ids"] == ["fb-1"]


def test_bad_batch_is_rejected_whole_with_fields_by_index(
    client: httpx.Client, kafka_bootstrap: str, topic: str
) -> None:
    good = make_events(3, sessions=1, tag=uuid.uuid4().hex[:8])
    batch = [good[0], {**good[1], "ts_ms": "soon"}, good[2], "not an object"]
    response = client.post("/events", json=batch)
    assert response.status_code == 422
    errors = response.json()["errors"]
    assert [(e["index"], e["field"], e["reason"]) for e in errors] == [
        (1, "ts_ms", "wrong_type"),
        (3, None, "not_an_object"),
    ]
    # Nothing of the batch was written.
    assert read_back(kafka_bootstrap, topic, expected=1, timeout_s=3) == []


def test_auth_is_required_when_configured(server: str) -> None:
    event = make_events(1, 1, "auth")[0]
    assert httpx.post(f"{server}/events", json=event).status_code == 401
    wrong = httpx.post(f"{server}/events", json=event, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert httpx.post(f"{server}/feedback", json={}).status_code == 401
    # Health and the API document stay open.
    assert httpx.get(f"{server}/healthz").status_code == 200
    assert httpx.get(f"{server}/openapi.json").status_code == 200


def test_oversized_requests_get_413(client: httpx.Client) -> None:
    big_text = make_events(1, 1, "big")[0] | {"event_type": "user_message", "text": "x" * 300_000}
    response = client.post("/events", json=big_text)
    assert response.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit still holds
        yield b"["
        for _ in range(400):
            yield json.dumps(make_events(1, 1, "chunk")[0]).encode() + b"," + b" " * 1000
        yield b"{}]"

    streamed = client.post(
        "/events", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert streamed.status_code == 413
    too_many = client.post("/events", json=make_events(501, 10, "many"))
    assert too_many.status_code == 413


def test_healthz_reports_kafka(server: str) -> None:
    response = httpx.get(f"{server}/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.json()["partitions"] == 4


def test_healthz_is_503_when_kafka_is_unreachable(topic: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    settings = _settings(dead, topic, health_timeout="PT1S")
    with running_server(settings) as url:
        response = httpx.get(f"{url}/healthz", timeout=30)
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"


def test_healthz_is_503_when_the_topic_is_missing(kafka_bootstrap: str) -> None:
    settings = _settings(kafka_bootstrap, f"missing.{uuid.uuid4().hex}")
    with running_server(settings) as url:
        response = httpx.get(f"{url}/healthz", timeout=30)
    assert response.status_code == 503
    assert "missing" in response.json()["detail"]


def test_openapi_document_publishes_the_event_schema(server: str) -> None:
    document = httpx.get(f"{server}/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    assert {"/events", "/feedback", "/healthz"} <= set(document["paths"])
    events = document["paths"]["/events"]["post"]
    assert {"202", "401", "413", "422", "503"} <= set(events["responses"])
    body = events["requestBody"]["content"]["application/json"]["schema"]
    assert {"$ref": "#/components/schemas/Event"} in body["oneOf"]
    schemas = document["components"]["schemas"]
    source = load_schema("event.v1")
    assert schemas["Event"]["required"] == source["required"]
    # Every reference in the document resolves.
    refs: list[str] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(document)
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in schemas, ref


def test_flywheel_ingest_serve_command(kafka_bootstrap: str, topic: str) -> None:
    """The real command line: `flywheel ingest serve --host --port` with env settings."""
    import os
    import subprocess
    import sys
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "FLYWHEEL_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "FLYWHEEL_KAFKA_EVENTS_TOPIC": topic,
        "FLYWHEEL_INGEST_AUTH_TOKEN": TOKEN,
    }
    command = [sys.executable, "-m", "jobs.cli", "ingest", "serve", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning"]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            assert time.monotonic() < deadline, "server did not become healthy"
            time.sleep(0.2)
        event = make_events(1, 1, uuid.uuid4().hex[:8])[0]
        response = httpx.post(
            f"{url}/events", json=event, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        )
        assert response.status_code == 202, response.text
    finally:
        process.terminate()
        process.wait(timeout=30)
    (record,) = read_back(kafka_bootstrap, topic, expected=1, settle_s=0.5)
    assert json.loads(record.value())["event_id"] == event["event_id"]


def test_only_json_bodies_are_accepted(client: httpx.Client) -> None:
    """415 for text/plain (what a web page may POST cross-origin without a preflight),
    form bodies and a missing Content-Type; a charset parameter is fine."""
    body = json.dumps(make_events(1, 1, uuid.uuid4().hex[:8])[0]).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"Content-Type": content_type} if content_type else {}
        response = client.post("/events", content=body, headers=headers)
        assert response.status_code == 415, (content_type, response.text)
        assert client.post("/feedback", content=b"{}", headers=headers).status_code == 415
    ok = client.post(
        "/events", content=body, headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert ok.status_code == 202, ok.text


def test_a_client_over_its_rate_gets_429_with_retry_after(kafka_bootstrap: str, topic: str) -> None:
    settings = _settings(
        kafka_bootstrap, topic, auth_token=TOKEN, rate_limit_per_s=0.5, rate_limit_burst=3
    )
    with (
        running_server(settings) as url,
        httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        ) as http,
    ):
        answers = [
            http.post("/events", json=make_events(1, 1, uuid.uuid4().hex[:8])[0]) for _ in range(5)
        ]
        assert [a.status_code for a in answers] == [202, 202, 202, 429, 429]
        assert 1 <= int(answers[3].headers["retry-after"]) <= 2
        # Unauthenticated floods count too, and health checks are never limited.
        assert httpx.post(f"{url}/events", json={}).status_code == 429
        assert httpx.get(f"{url}/healthz").status_code == 200


def test_errors_never_echo_the_token(server: str) -> None:
    wrong = "Bearer " + TOKEN[:-1] + "x"
    response = httpx.post(
        f"{server}/events", json={"event_type": TOKEN}, headers={"Authorization": wrong}
    )
    assert response.status_code == 401
    assert TOKEN[:-1] not in response.text
    bad = httpx.post(
        f"{server}/events",
        json={"event_type": "nope", "secret": TOKEN},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert bad.status_code == 422 and TOKEN not in bad.text


def test_the_service_refuses_to_listen_beyond_loopback_without_a_token() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="auth_token"):
        IngestSettings(host="0.0.0.0")
    with pytest.raises(ValidationError, match="auth_token"):
        IngestSettings(host="10.1.2.3")
    assert IngestSettings(host="0.0.0.0", auth_token="t").host == "0.0.0.0"
    assert IngestSettings(host="::1").auth_token is None
    assert IngestSettings(host="localhost").auth_token is None

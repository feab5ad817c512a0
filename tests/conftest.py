"""Shared fixtures: real Kafka, Redis and S3 for integration tests, isolated per test.

Where the services come from (first match wins; FLYWHEEL_TEST_BACKEND=env|docker|stack
forces one):

1. ``env``: KAFKA_BOOTSTRAP_SERVERS, REDIS_URL and S3_ENDPOINT_URL are all set
   (S3 keys from S3_ACCESS_KEY_ID/S3_SECRET_ACCESS_KEY or AWS_ACCESS_KEY_ID/
   AWS_SECRET_ACCESS_KEY, bucket from S3_BUCKET). Any of the three set alone
   overrides that one service of the backend chosen below.
2. ``docker``: testcontainers, when a Docker engine answers.
3. ``stack``: the local stack of ``flywheel stack`` (state dir from
   FLYWHEEL_STACK_STATE_DIR). A running stack is reused and left running; if
   none runs, this session starts it and stops it at the end, unless another
   live process still holds a lease on it (or FLYWHEEL_TEST_KEEP_STACK=1).

Isolation: ``unique_topic`` creates uniquely named topics (deleted after the
test), ``redis_prefix`` hands out a unique key prefix (keys deleted after),
``s3_bucket`` creates a unique bucket (emptied and deleted after).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlparse

import pytest
from reference.s3_buckets import delete_bucket

from deploy.stack import StackEndpoints

BACKEND_ENV = "FLYWHEEL_TEST_BACKEND"
KEEP_STACK_ENV = "FLYWHEEL_TEST_KEEP_STACK"
KAFKA_TEST_IMAGE = os.environ.get("FLYWHEEL_TEST_KAFKA_IMAGE", "confluentinc/cp-kafka:7.6.0")
REDIS_TEST_IMAGE = os.environ.get("FLYWHEEL_TEST_REDIS_IMAGE", "redis:7.2")
MINIO_TEST_IMAGE = os.environ.get(
    "FLYWHEEL_TEST_MINIO_IMAGE", "minio/minio:RELEASE.2024-10-13T13-34-11Z"
)


# --- where the services come from ---------------------------------------------


def _env_overrides() -> dict[str, str]:
    """Endpoint fields given by the conventional (unprefixed) environment variables."""
    env = os.environ
    fields: dict[str, str] = {}
    if env.get("KAFKA_BOOTSTRAP_SERVERS"):
        fields["kafka_bootstrap"] = env["KAFKA_BOOTSTRAP_SERVERS"]
    if env.get("REDIS_URL"):
        fields["redis_url"] = env["REDIS_URL"]
    if env.get("S3_ENDPOINT_URL"):
        fields["s3_endpoint_url"] = env["S3_ENDPOINT_URL"]
        key = env.get("S3_ACCESS_KEY_ID") or env.get("AWS_ACCESS_KEY_ID")
        secret = env.get("S3_SECRET_ACCESS_KEY") or env.get("AWS_SECRET_ACCESS_KEY")
        if key and secret:
            fields["s3_access_key_id"], fields["s3_secret_access_key"] = key, secret
        if env.get("S3_BUCKET"):
            fields["s3_bucket"] = env["S3_BUCKET"]
    return fields


def docker_engine_available(timeout_s: float = 1.0) -> bool:
    """True when a Docker engine answers ``/_ping`` (a docker CLI alone is not enough)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    parsed = urlparse(host)
    try:
        if parsed.scheme == "unix":
            if not os.path.exists(parsed.path):
                return False  # the common case here: fail fast without importing docker
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Any = parsed.path
        elif parsed.scheme in ("tcp", "http") and parsed.hostname:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = (parsed.hostname, parsed.port or 2375)
        else:
            return False  # ssh:// or TLS setups: let testcontainers be chosen explicitly
        with sock:
            sock.settimeout(timeout_s)
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return sock.recv(64).split(b" ")[1:2] == [b"200"]
    except (OSError, IndexError):
        return False


def _choose_backend() -> str:
    forced = os.environ.get(BACKEND_ENV, "").strip().lower()
    if forced:
        if forced not in ("env", "docker", "stack"):
            raise pytest.UsageError(f"{BACKEND_ENV} must be env, docker or stack, got {forced!r}")
        return forced
    if {"kafka_bootstrap", "redis_url", "s3_endpoint_url"} <= _env_overrides().keys():
        return "env"
    if docker_engine_available():
        return "docker"
    return "stack"


def _docker_endpoints(exit_stack: contextlib.ExitStack) -> StackEndpoints:
    """Start Kafka, Redis and MinIO containers for this session."""
    from testcontainers.community.kafka import KafkaContainer
    from testcontainers.community.minio import MinioContainer
    from testcontainers.community.redis import RedisContainer

    kafka = (
        KafkaContainer(KAFKA_TEST_IMAGE)
        .with_kraft()
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
        .with_env("KAFKA_TRANSACTION_MAX_TIMEOUT_MS", "900000")
        .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
    )
    redis = RedisContainer(REDIS_TEST_IMAGE)
    minio = MinioContainer(MINIO_TEST_IMAGE)
    for container in (kafka, redis, minio):
        exit_stack.enter_context(container)
    minio_config = minio.get_config()
    endpoints = StackEndpoints(
        kafka_bootstrap=kafka.get_bootstrap_server(),
        redis_url=(
            f"redis://{redis.get_container_host_ip()}:{redis.get_exposed_port(redis.port)}/0"
        ),
        s3_endpoint_url=f"http://{minio_config['endpoint']}",
        s3_access_key_id=minio_config["access_key"],
        s3_secret_access_key=minio_config["secret_key"],
        source="docker",
    )
    _ensure_bucket(endpoints)
    return endpoints


def _ensure_bucket(endpoints: StackEndpoints) -> None:
    client = endpoints.s3_settings().boto3_client()
    names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if endpoints.s3_bucket not in names:
        client.create_bucket(Bucket=endpoints.s3_bucket)


def _stack_endpoints(exit_stack: contextlib.ExitStack) -> StackEndpoints:
    """Reuse the running local stack, or start it (and stop it at the end if still ours)."""
    from deploy.stack import Stack

    stack = Stack()
    lease = stack.add_lease("pytest")
    exit_stack.callback(stack.release_lease, lease)
    endpoints = stack.running_endpoints()
    if endpoints is not None:
        # Reused as it is; a quick `up` heals a crashed service without restarting others.
        return stack.up()
    endpoints = stack.up()

    def stop_if_unused() -> None:
        if os.environ.get(KEEP_STACK_ENV) == "1" or stack.other_live_leases(mine=lease):
            return
        stack.down()

    exit_stack.callback(stop_if_unused)
    return endpoints


@pytest.fixture(scope="session")
def stack_endpoints() -> Iterator[StackEndpoints]:
    """Kafka, Redis and S3 endpoints (and credentials) for this test session."""
    backend = _choose_backend()
    with contextlib.ExitStack() as exit_stack:
        if backend == "env":
            endpoints = StackEndpoints(**_env_overrides(), source="env")  # type: ignore[arg-type]
        elif backend == "docker":
            endpoints = _docker_endpoints(exit_stack)
        else:
            endpoints = _stack_endpoints(exit_stack)
        overrides = _env_overrides()
        if backend != "env" and overrides:
            endpoints = dataclasses.replace(endpoints, **overrides)
        yield endpoints


@pytest.fixture(scope="session")
def kafka_bootstrap(stack_endpoints: StackEndpoints) -> str:
    """``host:port`` of the test Kafka broker."""
    return stack_endpoints.kafka_bootstrap


@pytest.fixture(scope="session")
def redis_url(stack_endpoints: StackEndpoints) -> str:
    """``redis://host:port/0`` of the test Redis."""
    return stack_endpoints.redis_url


@pytest.fixture(scope="session")
def s3_endpoint(stack_endpoints: StackEndpoints) -> str:
    """``http://host:port`` of the test S3 server."""
    return stack_endpoints.s3_endpoint_url


@pytest.fixture(scope="session")
def kafka_settings(stack_endpoints: StackEndpoints) -> Any:
    """``KafkaSettings`` pointing at the test broker."""
    return stack_endpoints.kafka_settings()


@pytest.fixture(scope="session")
def redis_settings(stack_endpoints: StackEndpoints) -> Any:
    """``RedisSettings`` pointing at the test Redis (combine with ``redis_prefix``)."""
    return stack_endpoints.redis_settings()


@pytest.fixture(scope="session")
def s3_settings(stack_endpoints: StackEndpoints) -> Any:
    """``S3Settings`` (endpoint, keys, the pipeline bucket) for the test S3 server."""
    return stack_endpoints.s3_settings()


@pytest.fixture(scope="session")
def kafka_admin(kafka_settings: Any) -> Any:
    """A confluent-kafka ``AdminClient`` for the test broker."""
    from confluent_kafka.admin import AdminClient

    return AdminClient(kafka_settings.client_config())


# --- per-test isolation ------------------------------------------------------------


def _test_slug(request: pytest.FixtureRequest, limit: int) -> str:
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
    return name[:limit].strip("-") or "test"


def _wait_for_topic(admin: Any, topic: str, partitions: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        metadata = admin.list_topics(topic=topic, timeout=5)
        info = metadata.topics.get(topic)
        if (
            info is not None
            and info.error is None
            and len(info.partitions) == partitions
            and all(p.leader >= 0 for p in info.partitions.values())
        ):
            return
        time.sleep(0.1)
    raise TimeoutError(f"topic {topic} has no leaders after {timeout_s}s")


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest, kafka_admin: Any) -> Iterator[Callable[..., str]]:
    """Factory: ``unique_topic(partitions=1, config=None) -> name``; topics deleted after."""
    from confluent_kafka.admin import NewTopic

    created: list[str] = []

    def make(partitions: int = 1, config: dict[str, str] | None = None) -> str:
        name = f"test.{_test_slug(request, 60)}.{uuid.uuid4().hex[:10]}"
        futures = kafka_admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
            operation_timeout=30,
        )
        futures[name].result(timeout=60)
        created.append(name)
        _wait_for_topic(kafka_admin, name, partitions)
        return name

    yield make
    if created:
        futures = kafka_admin.delete_topics(created, operation_timeout=30)
        for future in futures.values():
            with contextlib.suppress(Exception):
                future.result(timeout=60)


@pytest.fixture
def redis_prefix(redis_settings: Any) -> Iterator[str]:
    """A unique key prefix (``test:<hex>:``); every key under it is deleted after the test."""
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis_settings.client()
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


@pytest.fixture
def s3_bucket(request: pytest.FixtureRequest, s3_settings: Any) -> Iterator[str]:
    """A unique, empty bucket; emptied and deleted after the test."""
    client = s3_settings.boto3_client()
    name = f"test-{_test_slug(request, 30)}-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    yield name
    delete_bucket(client, name)

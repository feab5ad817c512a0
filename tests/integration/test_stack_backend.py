"""How tests/conftest.py picks where the services come from (no services needed)."""

from __future__ import annotations

import importlib.util
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# Loaded by path: `import conftest` is ambiguous (tests/browser has one too).
_spec = importlib.util.spec_from_file_location(
    "flywheel_tests_conftest", Path(__file__).resolve().parents[1] / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_conftest)
_choose_backend = _conftest._choose_backend
_env_overrides = _conftest._env_overrides
docker_engine_available = _conftest.docker_engine_available


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in (
        "KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "S3_ENDPOINT_URL", "S3_BUCKET",
        "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY", "FLYWHEEL_TEST_BACKEND", "DOCKER_HOST",
    ):  # fmt: skip
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


@pytest.fixture
def fake_docker() -> Iterator[int]:
    """A TCP server answering /_ping like a Docker engine."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def test_missing_docker_socket_is_detected_fast(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("DOCKER_HOST", f"unix://{tmp_path / 'docker.sock'}")
    started = time.monotonic()

    assert docker_engine_available() is False
    assert time.monotonic() - started < 0.5


def test_a_port_without_engine_is_not_docker(clean_env: pytest.MonkeyPatch) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    clean_env.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{port}")

    assert docker_engine_available() is False


def test_an_answering_engine_is_docker(clean_env: pytest.MonkeyPatch, fake_docker: int) -> None:
    clean_env.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{fake_docker}")

    assert docker_engine_available() is True
    assert _choose_backend() == "docker"


def test_all_three_variables_choose_the_env_backend(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker:9092")
    clean_env.setenv("REDIS_URL", "redis://cache:6379/0")
    clean_env.setenv("S3_ENDPOINT_URL", "http://minio:9000")
    clean_env.setenv("AWS_ACCESS_KEY_ID", "key")
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", "secret")

    assert _choose_backend() == "env"
    assert _env_overrides() == {
        "kafka_bootstrap": "broker:9092",
        "redis_url": "redis://cache:6379/0",
        "s3_endpoint_url": "http://minio:9000",
        "s3_access_key_id": "key",
        "s3_secret_access_key": "secret",
    }


def test_without_variables_or_engine_the_local_stack_is_used(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("DOCKER_HOST", f"unix://{tmp_path / 'docker.sock'}")
    clean_env.setenv("REDIS_URL", "redis://cache:6379/0")  # one alone only overrides

    assert _choose_backend() == "stack"


def test_a_forced_backend_must_be_known(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("FLYWHEEL_TEST_BACKEND", "k8s")

    with pytest.raises(pytest.UsageError, match="FLYWHEEL_TEST_BACKEND"):
        _choose_backend()

"""The job's Python workers authenticate to a password-protected Redis.

Pydantic dumps a ``SecretStr`` to JSON as ``**********``; the job used to hand its
workers the Redis settings as JSON, so a protected Redis (the documented Kubernetes
setup) was never written. Here a real ``redis-server --requirepass`` gets the job's
writes, and a client without the password is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from reference.contract_reference import compute_reference
from reference.generator import generate_stream
from reference.job_harness import job_sandbox, running_job
from reference.redis_server import PrivateRedis

pytestmark = [pytest.mark.integration, pytest.mark.flink]

PASSWORD = "s3cr3t-p@ss:w0rd!"  # redis-server re-parses its argv as config: no spaces or quotes


@pytest.fixture
def protected_redis(tmp_path: Path) -> Iterator[str]:
    server = PrivateRedis(tmp_path, password=PASSWORD, persist=False)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def test_job_writes_to_a_password_protected_redis(
    stack_endpoints: Any,
    kafka_admin: Any,
    tmp_path: Path,
    protected_redis: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import redis

    from connectors.settings import RedisSettings

    stream = generate_stream(30, seed=99)
    reference = compute_reference(stream.events)
    with (
        job_sandbox(stack_endpoints, kafka_admin, tmp_path, "auth") as box,
        monkeypatch.context() as env,
    ):  # undone before the sandbox cleans the stack's Redis
        env.setenv("FLYWHEEL_REDIS_URL", protected_redis)
        env.setenv("FLYWHEEL_REDIS_PASSWORD", PASSWORD)
        box.produce((d.key, d.raw) for d in stream.deliveries)
        with running_job(box.context(embedding_enabled=False)) as run:
            run.stop_when_idle(idle_s=3, drain=True)

        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(protected_redis).ping()
        client = RedisSettings.load().client()
        stored = {
            session_id: client.hgetall(f"{box.redis_prefix}session:{session_id}")
            for session_id in reference.last_row_by_session_id
        }
        for session_id, row in reference.last_row_by_session_id.items():
            assert stored[session_id]["status"] == "closed", session_id
            assert int(stored[session_id]["event_count"]) == row["event_count"]
        totals = client.hgetall(f"{box.redis_prefix}stats:total")
        assert int(totals["sessions_closed"]) == len(reference.rows)

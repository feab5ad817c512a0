"""Settings of the local stack (``FLYWHEEL_STACK_*``).

The stack runs Kafka, Redis and an S3 server (and optionally a Flink cluster)
as child processes on loopback. Everything it writes lives under one state
directory; everything it downloads lives in a cache directory outside git.
"""

from __future__ import annotations

import ipaddress
import os
from datetime import timedelta
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from connectors.settings import FlywheelSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY_DIR = Path(__file__).resolve().parent

# The cache is shared by every checkout of the project (and by CI), so it has a
# project-wide variable rather than a FLYWHEEL_STACK_* one (both are honoured).
CACHE_DIR_ENV = "FLYWHEEL_CACHE_DIR"


def default_state_dir() -> Path:
    """``<repo>/.flywheel`` (git-ignored)."""
    return REPO_ROOT / ".flywheel"


def default_cache_dir() -> Path:
    """``$FLYWHEEL_CACHE_DIR`` or ``~/.cache/flywheel``."""
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "flywheel"


def _running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


class StackSettings(FlywheelSettings):
    """Where the local stack keeps its data, which ports and versions it uses.

    A port of 0 means "pick a free one" (and keep it across restarts while it
    stays free).
    """

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_STACK_", extra="forbid", frozen=True)

    state_dir: Path = Field(default_factory=default_state_dir)
    cache_dir: Path = Field(default_factory=default_cache_dir)
    host: str = "127.0.0.1"

    kafka_port: int = Field(0, ge=0, lt=65536)
    kafka_controller_port: int = Field(0, ge=0, lt=65536)
    redis_port: int = Field(0, ge=0, lt=65536)
    s3_port: int = Field(0, ge=0, lt=65536)
    flink_rest_port: int = Field(0, ge=0, lt=65536)
    flink_rpc_port: int = Field(0, ge=0, lt=65536)

    kafka_version: str = "4.1.1"
    kafka_heap_mb: int = Field(768, ge=256)
    # Connector jars for the PyFlink wheel pinned in pyproject.toml; see deploy/maven/flink.
    flink_version: str = "1.20.3"
    flink_cluster: bool = False
    flink_task_slots: int = Field(2, ge=1)
    flink_jobmanager_memory_mb: int = Field(1024, ge=768)
    flink_taskmanager_memory_mb: int = Field(1728, ge=1024)

    # S3Proxy, objects on disk under <state_dir>/s3/data. It checks no signature on
    # loopback (see deploy/README.md); these are what clients of the local stack send.
    s3proxy_version: str = "2.6.0"
    s3_heap_mb: int = Field(256, ge=128)
    s3_access_key_id: str = "flywheel"
    s3_secret_access_key: SecretStr = SecretStr("flywheel-local-secret")
    s3_region: str = "us-east-1"

    allow_apt: bool = Field(default_factory=_running_as_root)
    java: str = "java"
    maven: str = "mvn"
    redis_server: str = "redis-server"

    start_timeout: timedelta = timedelta(minutes=3)
    stop_timeout: timedelta = timedelta(seconds=20)

    @field_validator("host")
    @classmethod
    def _loopback_only(cls, value: str) -> str:
        # The stack has no authentication: it must never listen beyond this machine.
        try:
            address = ipaddress.ip_address(value)
        except ValueError as exc:
            raise ValueError(f"host must be a loopback IP address, got {value!r}") from exc
        if not address.is_loopback:
            raise ValueError(f"host must be a loopback IP address, got {value!r}")
        return value

    @field_validator("state_dir", "cache_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("start_timeout", "stop_timeout")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be a positive duration")
        return value

    @property
    def start_timeout_s(self) -> float:
        return self.start_timeout.total_seconds()

    @property
    def stop_timeout_s(self) -> float:
        return self.stop_timeout.total_seconds()


__all__ = ["StackSettings", "default_cache_dir", "default_state_dir", "REPO_ROOT", "DEPLOY_DIR"]

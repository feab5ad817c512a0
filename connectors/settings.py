"""Settings shared by every Flywheel component.

Each component owns one pydantic-settings model. All models read environment
variables with the ``FLYWHEEL_`` prefix (plus a per-section prefix), reject
unknown keys (in keyword arguments, config files *and* the environment), keep
secrets as ``SecretStr`` and fail at start with the offending field named.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import urlparse

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "FLYWHEEL_"


def to_ms(delta: timedelta) -> int:
    """A duration setting as the integer milliseconds Kafka, Flink and Redis take."""
    return int(delta.total_seconds() * 1000)


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names every bad field."""

    def __init__(self, model: str, problems: list[tuple[str, str]]) -> None:
        self.model = model
        self.problems = problems
        lines = [f"{field}: {reason}" for field, reason in problems]
        super().__init__(f"invalid {model} settings: " + "; ".join(lines))

    @property
    def fields(self) -> list[str]:
        return [field for field, _ in self.problems]


class FlywheelSettings(BaseSettings):
    """Base: unknown keys rejected, env prefix ``FLYWHEEL_<SECTION>_``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        validate_default=True,
        env_nested_delimiter="__",
    )

    # Env prefixes of nested sections, so their variables are not reported as unknown.
    _nested_prefixes: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def env_prefix(cls) -> str:
        return str(cls.model_config.get("env_prefix", ENV_PREFIX))

    @classmethod
    def unknown_env_keys(cls, environ: dict[str, str] | None = None) -> list[str]:
        """Environment variables under this model's prefix that name no field."""
        environ = dict(os.environ if environ is None else environ)
        prefix = cls.env_prefix().upper()
        known = {prefix + name.upper() for name in cls.model_fields}
        unknown = []
        for key in environ:
            upper = key.upper()
            if not upper.startswith(prefix) or upper in known:
                continue
            if any(
                upper.startswith(other)
                for other in (p.upper() for p in _all_section_prefixes())
                if len(other) > len(prefix) and other.startswith(prefix)
            ):
                continue  # belongs to another section with a longer prefix
            if any(upper.startswith(k + "__") for k in known):
                continue  # nested field
            unknown.append(key)
        return unknown

    @classmethod
    def load(cls: type[S], **overrides: Any) -> S:
        """Build the settings, raising ConfigError that names each bad field."""
        problems: list[tuple[str, str]] = [
            (key, "unknown setting") for key in cls.unknown_env_keys()
        ]
        try:
            settings = cls(**overrides)
        except ValidationError as exc:
            for err in exc.errors():
                loc = ".".join(str(part) for part in err["loc"]) or "<root>"
                problems.append((cls.env_prefix() + loc.upper() + f" ({loc})", err["msg"]))
            raise ConfigError(cls.__name__, problems) from None
        if problems:
            raise ConfigError(cls.__name__, problems)
        return settings


S = TypeVar("S", bound=FlywheelSettings)


def _all_section_prefixes() -> list[str]:
    prefixes = []
    stack: list[type[FlywheelSettings]] = list(FlywheelSettings.__subclasses__())
    while stack:
        sub = stack.pop()
        prefixes.append(sub.env_prefix())
        stack.extend(sub.__subclasses__())
    return prefixes


def _check_url(value: str, schemes: tuple[str, ...], field: str) -> str:
    parsed = urlparse(value)
    if parsed.scheme == "unix" and "unix" in schemes:
        if not parsed.path:
            raise ValueError(f"{field} must be a URL like unix:///path/to/socket, got {value!r}")
        return value  # a socket path has neither host nor port
    if parsed.scheme not in schemes or not parsed.hostname:
        raise ValueError(f"{field} must be a URL like {schemes[0]}://host:port, got {value!r}")
    try:
        parsed.port  # noqa: B018 - raises on a malformed port
    except ValueError as exc:
        raise ValueError(f"{field} has a malformed port: {value!r}") from exc
    return value


class KafkaSettings(FlywheelSettings):
    """How to reach Kafka (``FLYWHEEL_KAFKA_*``)."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_KAFKA_", extra="forbid", frozen=True)

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: Path | None = None
    # A client certificate and its private key (PEM files), for brokers that require
    # TLS client authentication; the key as PKCS#8, which the Java client needs.
    ssl_certificate_location: Path | None = None
    ssl_key_location: Path | None = None
    ssl_key_password: SecretStr | None = None
    events_topic: str = "flywheel.events"
    flagged_topic: str = "flywheel.flagged"
    dlq_topic: str = "flywheel.dlq"

    @field_validator("bootstrap_servers")
    @classmethod
    def _valid_servers(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"expected host:port[,host:port...], got {value!r}")
        return value

    # SASL credentials are checked per field (not in a model validator) so that the
    # error's location, and so ConfigError.fields, names the missing setting.
    # validate_default=True makes these run when the value is left out.
    @field_validator("sasl_mechanism", "sasl_username", "sasl_password")
    @classmethod
    def _sasl_needs_credentials(cls, value: Any, info: ValidationInfo) -> Any:
        protocol = info.data.get("security_protocol", "")
        if str(protocol).startswith("SASL"):
            missing = value is None or value == ""
            if isinstance(value, SecretStr):
                missing = not value.get_secret_value()
            if missing:
                raise ValueError(
                    f"{info.field_name} is required when security_protocol is {protocol}"
                )
        return value

    @field_validator("ssl_ca_location", "ssl_certificate_location")
    @classmethod
    def _pem_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @field_validator("ssl_key_location", mode="after")
    @classmethod
    def _client_key(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        certificate = info.data.get("ssl_certificate_location")
        if (value is None) != (certificate is None) and "ssl_certificate_location" in info.data:
            raise ValueError(
                "ssl_certificate_location and ssl_key_location are given together or not at all"
            )
        if value is None:
            return None
        if not value.is_file():
            raise ValueError(f"no such file: {value}")
        text = value.read_text(encoding="ascii", errors="replace")
        if (
            "-----BEGIN PRIVATE KEY-----" not in text
            and "-----BEGIN ENCRYPTED PRIVATE KEY-----" not in text
        ):
            raise ValueError(
                f"{value} is not a PKCS#8 PEM private key, which the Java Kafka client (the "
                "Flink job) needs; convert it with `openssl pkcs8 -topk8 -nocrypt -in KEY -out "
                "KEY.pk8` (or without -nocrypt and set ssl_key_password)"
            )
        return value

    def client_config(self) -> dict[str, str]:
        """librdkafka properties for confluent-kafka clients."""
        conf = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        for key, value in (
            ("ssl.ca.location", self.ssl_ca_location),
            ("ssl.certificate.location", self.ssl_certificate_location),
            ("ssl.key.location", self.ssl_key_location),
        ):
            if value is not None:
                conf[key] = str(value)
        if self.ssl_key_password is not None:
            conf["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        return conf

    def java_client_properties(self) -> dict[str, str]:
        """Kafka Java client properties (for Flink's Kafka connector)."""
        props = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism and self.sasl_username and self.sasl_password is not None:
            module = (
                "org.apache.kafka.common.security.plain.PlainLoginModule"
                if self.sasl_mechanism == "PLAIN"
                else "org.apache.kafka.common.security.scram.ScramLoginModule"
            )
            secret = _jaas_quote(self.sasl_password.get_secret_value())
            props["sasl.mechanism"] = self.sasl_mechanism
            props["sasl.jaas.config"] = (
                f"{module} required username={_jaas_quote(self.sasl_username)} password={secret};"
            )
        # PEM contents, not paths: the properties travel with the job to every
        # TaskManager, which need not have these files (the JAAS password does the same).
        if self.ssl_ca_location is not None:
            props["ssl.truststore.type"] = "PEM"
            props["ssl.truststore.certificates"] = self.ssl_ca_location.read_text()
        if self.ssl_certificate_location is not None and self.ssl_key_location is not None:
            props["ssl.keystore.type"] = "PEM"
            props["ssl.keystore.certificate.chain"] = self.ssl_certificate_location.read_text()
            props["ssl.keystore.key"] = self.ssl_key_location.read_text()
            if self.ssl_key_password is not None:
                props["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        return props


def _jaas_quote(value: str) -> str:
    """A JAAS option value in double quotes: a quote or backslash in it is escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class RedisSettings(FlywheelSettings):
    """How to reach Redis (``FLYWHEEL_REDIS_*``)."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_REDIS_", extra="forbid", frozen=True)

    url: str = "redis://127.0.0.1:6379/0"
    password: SecretStr | None = None
    username: str | None = None
    key_prefix: str = "fw:"
    session_ttl: timedelta = timedelta(days=7)
    ssl_ca_certs: Path | None = None
    # A Redis that stopped answering must not hang a writer: its writes fail and wait.
    socket_timeout: timedelta = timedelta(seconds=5)

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        return _check_url(value, ("redis", "rediss", "unix"), "url")

    def client(self) -> Any:
        """A redis-py client (decode_responses on)."""
        import redis

        timeout_s = self.socket_timeout.total_seconds()
        kwargs: dict[str, Any] = {
            "decode_responses": True,
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
        }
        if self.password is not None:
            kwargs["password"] = self.password.get_secret_value()
        if self.username:
            kwargs["username"] = self.username
        if self.ssl_ca_certs is not None:
            kwargs["ssl_ca_certs"] = str(self.ssl_ca_certs)
        return redis.Redis.from_url(self.url, **kwargs)


class S3Settings(FlywheelSettings):
    """How to reach S3 or an S3-compatible server (``FLYWHEEL_S3_*``)."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_S3_", extra="forbid", frozen=True)

    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    bucket: str = "flywheel"
    path_style: bool = True

    @field_validator("endpoint_url")
    @classmethod
    def _valid_endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return _check_url(value, ("http", "https"), "endpoint_url")

    @field_validator("secret_access_key")
    @classmethod
    def _keys_in_pairs(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        # A field validator (not a model validator) so the error names a field.
        if "access_key_id" in info.data and (info.data["access_key_id"] is None) != (value is None):
            raise ValueError("access_key_id and secret_access_key must be set together")
        return value

    def boto3_client(self) -> Any:
        """A boto3 S3 client for this endpoint."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=(
                self.access_key_id.get_secret_value() if self.access_key_id else None
            ),
            aws_secret_access_key=(
                self.secret_access_key.get_secret_value() if self.secret_access_key else None
            ),
            # Checksums only where the operation needs them: new boto3 sends flexible
            # checksums on every request, which some S3 servers (S3Proxy, older MinIO)
            # refuse or store wrongly.
            config=Config(
                s3={"addressing_style": "path" if self.path_style else "auto"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def pyarrow_filesystem(self) -> Any:
        """A pyarrow S3FileSystem for this endpoint."""
        from pyarrow import fs

        kwargs: dict[str, Any] = {"region": self.region}
        if self.endpoint_url:
            parsed = urlparse(self.endpoint_url)
            default_port = 443 if parsed.scheme == "https" else 80
            kwargs["endpoint_override"] = f"{parsed.hostname}:{parsed.port or default_port}"
            kwargs["scheme"] = parsed.scheme
        if self.access_key_id and self.secret_access_key:
            kwargs["access_key"] = self.access_key_id.get_secret_value()
            kwargs["secret_key"] = self.secret_access_key.get_secret_value()
        # pyarrow uses path-style addressing whenever endpoint_override is set; only
        # virtual-host style needs the flag, which pyarrow < 15 does not have.
        if not self.path_style:
            kwargs["force_virtual_addressing"] = True
        _finalize_s3_at_exit(fs)
        return fs.S3FileSystem(**kwargs)


_s3_finalizer_registered = False


def _finalize_s3_at_exit(fs: Any) -> None:
    """Shut the AWS SDK down at exit: pyarrow < 12 leaves that to the caller, and an SDK
    still initialized while the interpreter tears down can crash the process."""
    global _s3_finalizer_registered
    if not _s3_finalizer_registered:
        import atexit

        atexit.register(fs.finalize_s3)
        _s3_finalizer_registered = True


def field_hint() -> str:
    """Prefix help text shared by CLIs."""
    return f"Settings come from {ENV_PREFIX}* environment variables."


__all__ = [
    "ConfigError",
    "FlywheelSettings",
    "KafkaSettings",
    "RedisSettings",
    "S3Settings",
    "Field",
]

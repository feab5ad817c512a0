"""Bad settings fail at load time with the offending field named."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.settings import (
    ConfigError,
    FlywheelSettings,
    KafkaSettings,
    RedisSettings,
    S3Settings,
)
from deploy.settings import StackSettings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test without FLYWHEEL_* variables of the developer's shell."""
    for key in list(os.environ):
        if key.startswith("FLYWHEEL_"):
            monkeypatch.delenv(key)


def _fields(exc: ConfigError) -> str:
    return " ".join(exc.fields)


def test_defaults_load() -> None:
    assert KafkaSettings.load().bootstrap_servers == "127.0.0.1:9092"
    assert RedisSettings.load().session_ttl == timedelta(days=7)
    assert S3Settings.load().bucket == "flywheel"


def test_environment_values_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_KAFKA_BOOTSTRAP_SERVERS", "broker-a:9092,broker-b:9093")
    monkeypatch.setenv("FLYWHEEL_REDIS_URL", "redis://cache:6380/2")
    monkeypatch.setenv("FLYWHEEL_S3_ENDPOINT_URL", "http://minio:9000")

    assert KafkaSettings.load().bootstrap_servers == "broker-a:9092,broker-b:9093"
    assert RedisSettings.load().url == "redis://cache:6380/2"
    assert S3Settings.load().endpoint_url == "http://minio:9000"


def test_unknown_environment_key_is_rejected_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_KAFKA_BOGUS", "1")

    with pytest.raises(ConfigError) as caught:
        KafkaSettings.load()

    assert caught.value.fields == ["FLYWHEEL_KAFKA_BOGUS"]
    assert "FLYWHEEL_KAFKA_BOGUS: unknown setting" in str(caught.value)


def test_unknown_keyword_is_rejected_by_name() -> None:
    with pytest.raises(ConfigError) as caught:
        KafkaSettings.load(bogus=1)

    assert "bogus" in _fields(caught.value)
    assert "FLYWHEEL_KAFKA_BOGUS" in str(caught.value)


def test_keys_of_other_sections_are_not_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("FLYWHEEL_STACK_KAFKA_PORT", "9092")

    KafkaSettings.load()  # neither variable belongs to the Kafka section


def test_a_section_with_the_bare_prefix_does_not_hide_unknown_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class BarePrefixSettings(FlywheelSettings):  # env prefix is just FLYWHEEL_
        pass

    monkeypatch.setenv("FLYWHEEL_KAFKA_BOGUS", "1")
    with pytest.raises(ConfigError) as caught:
        KafkaSettings.load()

    assert caught.value.fields == ["FLYWHEEL_KAFKA_BOGUS"]
    del BarePrefixSettings


def test_malformed_redis_url_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_REDIS_URL", "notaurl")

    with pytest.raises(ConfigError) as caught:
        RedisSettings.load()

    assert "FLYWHEEL_REDIS_URL (url)" in caught.value.fields
    assert "notaurl" in str(caught.value)


def test_redis_unix_socket_url_is_accepted() -> None:
    assert RedisSettings.load(url="unix:///run/redis/redis.sock").url.startswith("unix://")


@pytest.mark.parametrize("servers", ["host:notaport", "host", ":9092", "host:70000", "a:1,b"])
def test_malformed_bootstrap_servers_names_the_field(servers: str) -> None:
    with pytest.raises(ConfigError) as caught:
        KafkaSettings.load(bootstrap_servers=servers)

    assert caught.value.fields == ["FLYWHEEL_KAFKA_BOOTSTRAP_SERVERS (bootstrap_servers)"]


def test_malformed_s3_endpoint_names_the_field() -> None:
    with pytest.raises(ConfigError) as caught:
        S3Settings.load(endpoint_url="minio:9000")  # scheme missing

    assert "endpoint_url" in _fields(caught.value)


def test_sasl_without_password_names_the_missing_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("FLYWHEEL_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("FLYWHEEL_KAFKA_SASL_USERNAME", "pipeline")

    with pytest.raises(ConfigError) as caught:
        KafkaSettings.load()

    assert caught.value.fields == ["FLYWHEEL_KAFKA_SASL_PASSWORD (sasl_password)"]
    assert "sasl_password is required" in str(caught.value)


def test_sasl_with_every_credential_loads_and_hides_the_secret() -> None:
    settings = KafkaSettings.load(
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="pipeline",
        sasl_password="s3cret-value",
    )

    assert "s3cret-value" not in repr(settings)
    assert settings.client_config()["sasl.password"] == "s3cret-value"


def test_sasl_errors_never_echo_a_given_secret() -> None:
    with pytest.raises(ConfigError) as caught:
        KafkaSettings.load(
            security_protocol="SASL_SSL", sasl_username="pipeline", sasl_password="s3cret-value"
        )

    assert caught.value.fields == ["FLYWHEEL_KAFKA_SASL_MECHANISM (sasl_mechanism)"]
    assert "s3cret-value" not in str(caught.value)


def test_s3_key_without_secret_names_the_field() -> None:
    with pytest.raises(ConfigError) as caught:
        S3Settings.load(access_key_id="AKIAEXAMPLE")

    assert caught.value.fields == ["FLYWHEEL_S3_SECRET_ACCESS_KEY (secret_access_key)"]


def test_every_problem_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_KAFKA_BOGUS", "1")

    with pytest.raises(ConfigError) as caught:
        KafkaSettings.load(bootstrap_servers="host:notaport", security_protocol="TLS")

    fields = _fields(caught.value)
    for name in ("FLYWHEEL_KAFKA_BOGUS", "bootstrap_servers", "security_protocol"):
        assert name in fields


def test_pyarrow_filesystem_for_a_custom_endpoint() -> None:
    filesystem = S3Settings.load(
        endpoint_url="http://127.0.0.1:9", access_key_id="k", secret_access_key="s"
    ).pyarrow_filesystem()

    assert type(filesystem).__name__ == "S3FileSystem"


# --- the stack's own settings ------------------------------------------------------


def test_stack_defaults_live_in_the_repo_and_the_user_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)

    settings = StackSettings.load()

    assert settings.state_dir == Path(__file__).resolve().parents[2] / ".flywheel"
    assert settings.cache_dir == tmp_path / ".cache" / "flywheel"
    assert settings.host == "127.0.0.1"


def test_stack_directories_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FLYWHEEL_STACK_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("FLYWHEEL_CACHE_DIR", str(tmp_path / "cache"))

    settings = StackSettings.load()

    assert settings.state_dir == tmp_path / "state"
    assert settings.cache_dir == tmp_path / "cache"


def test_stack_refuses_to_listen_beyond_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_STACK_HOST", "0.0.0.0")

    with pytest.raises(ConfigError) as caught:
        StackSettings.load()

    assert caught.value.fields == ["FLYWHEEL_STACK_HOST (host)"]


def test_stack_unknown_key_and_bad_port_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_STACK_KAFKA_PROT", "9092")

    with pytest.raises(ConfigError) as caught:
        StackSettings.load(redis_port=70000)

    assert "FLYWHEEL_STACK_KAFKA_PROT" in caught.value.fields
    assert "FLYWHEEL_STACK_REDIS_PORT (redis_port)" in caught.value.fields


def test_checkpoints_default_below_the_output_base_never_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    for name in ("FLYWHEEL_JOB_OUTPUT_BASE", "FLYWHEEL_JOB_CHECKPOINT_DIR"):
        monkeypatch.delenv(name, raising=False)

    from jobs.settings import FeatureJobSettings
    from jobs.streaming import checkpoint_dir

    def ctx(**job: Any) -> Any:
        return SimpleNamespace(
            job=FeatureJobSettings.load(**job), s3=SimpleNamespace(bucket="lake")
        )

    assert checkpoint_dir(ctx()) == "s3://lake/flywheel/checkpoints"
    assert checkpoint_dir(ctx(output_base="s3://b/p/")) == "s3://b/p/checkpoints"
    assert (
        checkpoint_dir(ctx(output_base=str(tmp_path)))
        == tmp_path.resolve().as_uri() + "/checkpoints"
    )
    assert checkpoint_dir(ctx(checkpoint_dir="s3://b/ck/")) == "s3://b/ck"
    assert (
        checkpoint_dir(ctx(checkpoint_dir=str(tmp_path / "ck")))
        == (tmp_path / "ck").resolve().as_uri()
    )


def test_embedding_model_path_must_be_a_saved_sentence_model(tmp_path: Path) -> None:
    from jobs.settings import FeatureJobSettings

    with pytest.raises(ConfigError, match="no such folder") as missing:
        FeatureJobSettings.load(embedding_model_path=str(tmp_path / "absent"))
    assert "embedding_model_path" in _fields(missing.value)
    with pytest.raises(ConfigError, match="not a saved sentence-transformers model"):
        FeatureJobSettings.load(embedding_model_path=str(tmp_path))
    (tmp_path / "modules.json").write_text("[]")
    assert FeatureJobSettings.load(embedding_model_path=str(tmp_path)).embedding_model_path == (
        tmp_path.resolve()
    )


def test_sasl_password_is_quoted_and_escaped_in_the_jaas_string() -> None:
    password = 'p"a\\ss; word=x'
    props = KafkaSettings.load(
        security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
        sasl_username="job", sasl_password=password,
    ).java_client_properties()  # fmt: skip
    jaas = props["sasl.jaas.config"]
    assert jaas == (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        'username="job" password="p\\"a\\\\ss; word=x";'
    )
    assert password not in repr(KafkaSettings.load(
        security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="job",
        sasl_password=password,
    ))  # fmt: skip


def test_tls_client_certificate_reaches_the_java_client_inline(tmp_path: Path) -> None:
    ca, cert, key = tmp_path / "ca.pem", tmp_path / "client.pem", tmp_path / "client.key"
    ca.write_text("-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n")
    cert.write_text("-----BEGIN CERTIFICATE-----\nME\n-----END CERTIFICATE-----\n")
    key.write_text("-----BEGIN PRIVATE KEY-----\nK\n-----END PRIVATE KEY-----\n")
    settings = KafkaSettings.load(
        security_protocol="SSL", ssl_ca_location=str(ca), ssl_certificate_location=str(cert),
        ssl_key_location=str(key), ssl_key_password="s3cret",
    )  # fmt: skip
    java = settings.java_client_properties()
    assert java["ssl.truststore.certificates"] == ca.read_text()
    assert java["ssl.keystore.type"] == "PEM"
    assert java["ssl.keystore.certificate.chain"] == cert.read_text()
    assert java["ssl.keystore.key"] == key.read_text()
    assert java["ssl.key.password"] == "s3cret"
    python = settings.client_config()
    assert python["ssl.certificate.location"] == str(cert)
    assert python["ssl.key.location"] == str(key)
    assert python["ssl.key.password"] == "s3cret"
    with pytest.raises(ConfigError, match="no such file") as caught:
        KafkaSettings.load(ssl_ca_location=str(tmp_path / "absent.pem"))
    assert "ssl_ca_location" in _fields(caught.value)

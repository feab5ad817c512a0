"""TLS client certificates reach both Kafka clients: Python (librdkafka) and Java (Flink's).

A private broker requires a client certificate signed by a throwaway CA. One
``KafkaSettings`` with ``ssl_ca_location``, ``ssl_certificate_location`` and
``ssl_key_location`` drives both: the Python admin client and producer through
``client_config()``, and a Java ``KafkaConsumer`` (the client Flink's Kafka connector
wraps, run from the stack's Kafka jars) through ``java_client_properties()``. Without
the keystore entries the same Java consumer is refused, so the test sees the certificate
reach it. A key that is not PKCS#8 fails at load, naming the setting.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from reference.tls import Pki, TlsKafka, make_pki

from connectors.settings import ConfigError, KafkaSettings

pytestmark = pytest.mark.integration

TOPIC = "tls.events"
MESSAGES = ["first", "second: 你好", "third"]

CONSUMER_JAVA = """
import java.io.FileInputStream;
import java.time.Duration;
import java.util.List;
import java.util.Properties;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.TopicPartition;

public class TlsConsume {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        try (FileInputStream in = new FileInputStream(args[0])) { props.load(in); }
        String deserializer = "org.apache.kafka.common.serialization.StringDeserializer";
        props.put("key.deserializer", deserializer);
        props.put("value.deserializer", deserializer);
        props.put("enable.auto.commit", "false");
        int wanted = Integer.parseInt(args[2]);
        int got = 0;
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(props)) {
            TopicPartition partition = new TopicPartition(args[1], 0);
            consumer.assign(List.of(partition));
            consumer.seekToBeginning(List.of(partition));
            long deadline = System.currentTimeMillis() + 60_000;
            while (got < wanted && System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<String, String> record : consumer.poll(Duration.ofSeconds(1))) {
                    System.out.println("record: " + record.value());
                    got++;
                }
            }
        }
        System.exit(got >= wanted ? 0 : 3);
    }
}
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsKafka]:
    server = TlsKafka(tmp_path_factory.mktemp("tls-kafka"), pki)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _settings(broker: TlsKafka, pki: Pki) -> KafkaSettings:
    return KafkaSettings.load(
        bootstrap_servers=broker.bootstrap,
        security_protocol="SSL",
        ssl_ca_location=str(pki.ca),
        ssl_certificate_location=str(pki.client_certificate),
        ssl_key_location=str(pki.client_key),
    )


def _java_properties(props: dict[str, str], path: Path) -> Path:
    """A .properties file (PEM values span lines: newlines escaped)."""

    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace("\n", "\\n")

    path.write_text("".join(f"{k}={escape(v)}\n" for k, v in props.items()))
    return path


def _java_consume(
    broker: TlsKafka, props: dict[str, str], folder: Path
) -> subprocess.CompletedProcess[str]:
    source = folder / "TlsConsume.java"
    source.write_text(CONSUMER_JAVA)
    return subprocess.run(
        [broker.java, "-cp", f"{broker.libs}/*", str(source),
         str(_java_properties(props, folder / "consumer.properties")), TOPIC, str(len(MESSAGES))],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def produced(broker: TlsKafka, pki: Pki) -> list[str]:
    """The Python client, with the certificate, creates the topic and produces."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    conf = _settings(broker, pki).client_config()
    admin = AdminClient(conf)
    for future in admin.create_topics([NewTopic(TOPIC, 1, 1)], operation_timeout=30).values():
        future.result(timeout=60)
    producer = Producer(conf)
    for text in MESSAGES:
        producer.produce(TOPIC, text.encode())
    assert producer.flush(60) == 0
    return MESSAGES


def test_python_client_without_a_certificate_is_refused(broker: TlsKafka, pki: Pki) -> None:
    from confluent_kafka.admin import AdminClient

    conf = KafkaSettings.load(
        bootstrap_servers=broker.bootstrap, security_protocol="SSL", ssl_ca_location=str(pki.ca)
    ).client_config()
    with pytest.raises(Exception, match="(?i)ssl|handshake|transport|timed out"):
        AdminClient(conf).list_topics(timeout=10)


def test_java_client_reads_with_the_certificate(
    broker: TlsKafka, pki: Pki, produced: list[str], tmp_path: Path
) -> None:
    result = _java_consume(broker, _settings(broker, pki).java_client_properties(), tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    records = [
        line[len("record: ") :]
        for line in result.stdout.splitlines()
        if line.startswith("record: ")
    ]
    assert records == produced


def test_java_client_without_the_keystore_is_refused(
    broker: TlsKafka, pki: Pki, produced: list[str], tmp_path: Path
) -> None:
    props = {
        k: v for k, v in _settings(broker, pki).java_client_properties().items()
        if not k.startswith("ssl.keystore")
    }  # fmt: skip
    result = _java_consume(broker, props, tmp_path)
    assert result.returncode != 0
    assert "failed authentication" in result.stdout + result.stderr


def test_a_key_the_java_client_cannot_read_fails_at_load(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="PKCS#8") as caught:
        KafkaSettings.load(
            security_protocol="SSL",
            ssl_certificate_location=str(pki.client_certificate),
            ssl_key_location=str(pki.client_key_traditional),
        )
    assert "ssl_key_location" in " ".join(caught.value.fields)
    with pytest.raises(ConfigError, match="together") as caught:
        KafkaSettings.load(
            security_protocol="SSL", ssl_certificate_location=str(pki.client_certificate)
        )
    assert "ssl_key_location" in " ".join(caught.value.fields)

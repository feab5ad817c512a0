"""A throwaway PKI and a Kafka broker that requires TLS client certificates.

``make_pki(folder)`` writes a CA, a broker certificate for 127.0.0.1 and a client
certificate (PEM; keys as PKCS#8). ``TlsKafka(folder, pki)`` runs one KRaft node from
the stack's Kafka jars with an ``SSL`` listener that refuses clients without a
certificate signed by that CA (``ssl.client.auth=required``), and a plaintext listener
for the node's own traffic only.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Pki:
    ca: Path
    broker_chain_and_key: Path
    client_certificate: Path
    client_key: Path
    client_key_traditional: Path  # the same key as "BEGIN EC PRIVATE KEY" (not PKCS#8)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    ip: str | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ip is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(ip)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("flywheel test CA", ca_key, "flywheel test CA", ca_key, ca=True)
    broker_key = ec.generate_private_key(ec.SECP256R1())
    broker = _certificate("127.0.0.1", broker_key, "flywheel test CA", ca_key, ip="127.0.0.1")
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _certificate("flywheel-job", client_key, "flywheel test CA", ca_key)
    pki = Pki(
        ca=folder / "ca.pem",
        broker_chain_and_key=folder / "broker.pem",
        client_certificate=folder / "client.pem",
        client_key=folder / "client.key",
        client_key_traditional=folder / "client.ec.key",
    )
    pki.ca.write_bytes(_pem(ca))
    # Kafka's PEM keystore file: the private key and the certificate chain together.
    pki.broker_chain_and_key.write_bytes(_pkcs8(broker_key) + _pem(broker) + _pem(ca))
    pki.client_certificate.write_bytes(_pem(client) + _pem(ca))
    pki.client_key.write_bytes(_pkcs8(client_key))
    pki.client_key_traditional.write_bytes(
        client_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return pki


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TlsKafka:
    """One KRaft node whose client listener is TLS with required client certificates."""

    def __init__(self, folder: Path, pki: Pki):
        from deploy import jars
        from deploy.settings import StackSettings

        self.folder = folder
        self.pki = pki
        settings = StackSettings.load()
        self.java = settings.java
        self.libs = jars.ensure_kafka_libs(settings)
        self.tls_port, self.internal_port, self.controller_port = (_free_port() for _ in range(3))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.tls_port}"

    def _properties(self) -> Path:
        lines = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": (
                f"SSL://127.0.0.1:{self.tls_port},INTERNAL://127.0.0.1:{self.internal_port},"
                f"CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": (
                f"SSL://127.0.0.1:{self.tls_port},INTERNAL://127.0.0.1:{self.internal_port}"
            ),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "INTERNAL",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,SSL:SSL",
            "listener.name.ssl.ssl.client.auth": "required",
            "listener.name.ssl.ssl.keystore.type": "PEM",
            "listener.name.ssl.ssl.keystore.location": str(self.pki.broker_chain_and_key),
            "listener.name.ssl.ssl.truststore.type": "PEM",
            "listener.name.ssl.ssl.truststore.location": str(self.pki.ca),
            "log.dirs": str(self.folder / "data"),
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
        }
        path = self.folder / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
        return path

    def start(self, timeout_s: float = 90.0) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        properties = self._properties()
        classpath = f"{self.libs}/*"
        subprocess.run(
            [self.java, "-cp", classpath, "kafka.tools.StorageTool", "format",
             "--cluster-id", "Zmx5d2hlZWwtdGxzLXRlc3Q", "--config", str(properties),
             "--ignore-formatted"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        log = (self.folder / "broker.log").open("wb")
        self.process = subprocess.Popen(
            [self.java, "-Xmx384m", "-cp", classpath, "kafka.Kafka", str(properties)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"TLS broker exited; see {self.folder / 'broker.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.tls_port), timeout=1):
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"TLS broker did not listen within {timeout_s} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

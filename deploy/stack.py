"""The local stack: Kafka (KRaft), Redis, an S3 server and optionally Flink, on loopback.

``ensure_up()`` starts what is not already running and healthy, and returns the
endpoints; ``running_endpoints()`` returns them only when the stack runs;
``stop_stack()`` stops every process the stack started and checks that no
process and no port is left behind. ``flywheel stack up|down|status`` wraps them.

State directory layout (default ``<repo>/.flywheel``)::

    stack.json            endpoints + services (pid, ports, log) of the running stack
    stack.lock            serializes concurrent up/down
    last-ports.json       ports of the last stack, reused by the next `up` while free
    kafka/                server.properties, log4j2.properties, data/, kafka.pid, kafka.log
    redis/                redis.conf, data/ (AOF), redis.pid, redis.log
    s3/                   s3proxy.conf, data/<bucket>/<key> (objects on disk), s3.pid, s3.log
    flink/                conf/config.yaml, log/, tmp/, flink-*.pid, flink-*.log
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from deploy import jars, procs
from deploy.settings import StackSettings

STACK_FILE = "stack.json"
LAST_PORTS_FILE = "last-ports.json"
HEALTH_TOPIC = "_flywheel_stack_health"
CORE_SERVICES = ("redis", "s3", "kafka")
FLINK_SERVICES = ("flink-jobmanager", "flink-taskmanager")

Progress = Callable[[str], None]


class StackError(RuntimeError):
    """The stack could not be started or stopped; the message says why (with log tails)."""


class HealthError(RuntimeError):
    """A service answered wrongly or not at all."""


# --- endpoints -------------------------------------------------------------


@dataclass(frozen=True)
class StackEndpoints:
    """Where the services are, and the credentials to use them."""

    kafka_bootstrap: str
    redis_url: str
    s3_endpoint_url: str
    s3_bucket: str = "flywheel"
    s3_region: str = "us-east-1"
    s3_access_key_id: str = "flywheel"
    s3_secret_access_key: str = "flywheel-local-secret"
    flink_rest_url: str | None = None
    state_dir: str | None = None
    source: str = "stack"  # stack | env | docker

    def to_env(self) -> dict[str, str]:
        """``FLYWHEEL_*`` variables that point every component at these endpoints."""
        env = {
            "FLYWHEEL_KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "FLYWHEEL_REDIS_URL": self.redis_url,
            "FLYWHEEL_S3_ENDPOINT_URL": self.s3_endpoint_url,
            "FLYWHEEL_S3_BUCKET": self.s3_bucket,
            "FLYWHEEL_S3_REGION": self.s3_region,
            "FLYWHEEL_S3_ACCESS_KEY_ID": self.s3_access_key_id,
            "FLYWHEEL_S3_SECRET_ACCESS_KEY": self.s3_secret_access_key,
        }
        return env

    def kafka_settings(self, **overrides: Any) -> Any:
        """``connectors.settings.KafkaSettings`` for this Kafka."""
        from connectors.settings import KafkaSettings

        return KafkaSettings.load(**{"bootstrap_servers": self.kafka_bootstrap, **overrides})

    def redis_settings(self, **overrides: Any) -> Any:
        """``connectors.settings.RedisSettings`` for this Redis."""
        from connectors.settings import RedisSettings

        return RedisSettings.load(**{"url": self.redis_url, **overrides})

    def s3_settings(self, **overrides: Any) -> Any:
        """``connectors.settings.S3Settings`` for this S3 server."""
        from connectors.settings import S3Settings

        values: dict[str, Any] = {
            "endpoint_url": self.s3_endpoint_url,
            "bucket": self.s3_bucket,
            "region": self.s3_region,
            "access_key_id": self.s3_access_key_id,
            "secret_access_key": self.s3_secret_access_key,
        }
        values.update(overrides)
        return S3Settings.load(**values)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> StackEndpoints:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in names})


# --- services ----------------------------------------------------------------


@dataclass
class _Service:
    """One process of the stack: how to prepare, start and health-check it."""

    name: str
    settings: StackSettings
    ports: dict[str, int] = field(default_factory=dict)

    port_roles: ClassVar[tuple[str, ...]] = ()

    @property
    def directory(self) -> Path:
        return self.settings.state_dir / self.name.split("-")[0]

    @property
    def pid_path(self) -> Path:
        return self.directory / f"{self.name}.pid"

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.name}.log"

    @property
    def marker(self) -> str:
        return procs.marker_value(self.settings.state_dir, self.name)

    def requested_ports(self) -> dict[str, int]:
        """Ports given in the settings (0 = pick one)."""
        return {role: 0 for role in self.port_roles}

    def prepare(self, progress: Progress) -> tuple[list[str], dict[str, str]]:
        """Write config, download what is missing; return (argv, env)."""
        raise NotImplementedError

    def check(self, timeout_s: float) -> None:
        """Raise HealthError unless the service answers correctly."""
        raise NotImplementedError

    def describe(self) -> str:
        ports = (f"{role} {self.settings.host}:{port}" for role, port in self.ports.items())
        return ", ".join(ports) or "no ports of its own"


class _Redis(_Service):
    port_roles = ("redis",)

    def requested_ports(self) -> dict[str, int]:
        return {"redis": self.settings.redis_port}

    @property
    def url(self) -> str:
        return f"redis://{self.settings.host}:{self.ports['redis']}/0"

    def _binary(self, progress: Progress) -> str:
        found = shutil.which(self.settings.redis_server)
        if found:
            return found
        if not self.settings.allow_apt:
            raise StackError(
                f"{self.settings.redis_server!r} is not installed; install Debian's redis-server "
                "(apt-get install redis-server) or set FLYWHEEL_STACK_ALLOW_APT=1"
            )
        progress("redis: installing redis-server with apt-get (once per machine)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "redis-server"],
        ):
            result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
            if result.returncode != 0:
                raise StackError(f"{' '.join(argv)} failed:\n{result.stderr[-2000:]}")
        found = shutil.which(self.settings.redis_server) or shutil.which(
            "redis-server", path="/usr/bin:/usr/sbin"
        )
        if not found:
            raise StackError("apt-get installed redis-server but no redis-server binary was found")
        return found

    def prepare(self, progress: Progress) -> tuple[list[str], dict[str, str]]:
        binary = self._binary(progress)
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "redis.conf"
        conf.write_text(
            "\n".join(
                [
                    "# Written by `flywheel stack up`; edits are overwritten.",
                    f"bind {self.settings.host}",
                    f"port {self.ports['redis']}",
                    "protected-mode yes",
                    # Our own process management keeps it in the foreground.
                    "daemonize no",
                    "supervised no",
                    'logfile ""',
                    "loglevel notice",
                    f"dir {data}",
                    # Durable across restarts via the append-only file; no RDB snapshots.
                    'save ""',
                    "appendonly yes",
                    "appendfsync everysec",
                    "",
                ]
            )
        )
        return [binary, str(conf)], dict(os.environ)

    def check(self, timeout_s: float) -> None:
        import redis

        client = redis.Redis(
            host=self.settings.host,
            port=self.ports["redis"],
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )
        try:
            if client.ping() is not True:
                raise HealthError("redis: PING did not answer PONG")
        except redis.RedisError as exc:
            raise HealthError(f"redis: {exc}") from exc
        finally:
            client.close()


def _java(settings: StackSettings, needed_by: str) -> str:
    found = shutil.which(settings.java)
    if not found:
        raise StackError(f"Java ({settings.java!r}) is not installed; {needed_by} needs Java 17+")
    return found


class _S3(_Service):
    port_roles = ("s3",)
    bucket: str = "flywheel"

    def requested_ports(self) -> dict[str, int]:
        return {"s3": self.settings.s3_port}

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.ports['s3']}"

    def _properties(self) -> str:
        # "filesystem" keeps one file per object under data/<bucket>/<key>. It lists each
        # folder as a marker key ("dir/"), which every lister here skips. The newer
        # filesystem-nio2 answers HEAD "dir" for a folder, so Hadoop s3a takes a
        # partition folder for a file and Flink's batch sink cannot commit.
        # Signatures are not checked (authorization=none): the AWS C++ SDK that pyarrow
        # uses signs keys holding "=" (Hive partitions) differently from S3Proxy's check,
        # and the server listens on loopback only (StackSettings.host).
        data = self.directory / "data"
        return "\n".join(
            [
                f"s3proxy.endpoint={self.url}",
                "s3proxy.authorization=none",
                "s3proxy.ignore-unknown-headers=true",
                "jclouds.provider=filesystem",
                f"jclouds.filesystem.basedir={data}",
                # jclouds wants an identity even when S3Proxy checks none.
                "jclouds.identity=local",
                "jclouds.credential=local",
                "",
            ]
        )

    def prepare(self, progress: Progress) -> tuple[list[str], dict[str, str]]:
        java = _java(self.settings, "S3Proxy")
        if not jars.s3proxy_jar_is_cached(self.settings):
            progress(f"s3: downloading S3Proxy {self.settings.s3proxy_version} (Maven)")
        jar = jars.ensure_s3proxy_jar(self.settings)
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "data").mkdir(exist_ok=True)
        properties = self.directory / "s3proxy.conf"
        properties.write_text(self._properties())
        argv = [
            java,
            f"-Xmx{self.settings.s3_heap_mb}m",
            "-XX:+UseSerialGC",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            "-jar",
            str(jar),
            "--properties",
            str(properties),
        ]
        env = dict(os.environ)
        # S3Proxy's logback reads LOG_LEVEL; info logs every bucket operation.
        env.setdefault("LOG_LEVEL", "warn")
        return argv, env

    def client(self, timeout_s: float) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=self.settings.s3_region,
            aws_access_key_id=self.settings.s3_access_key_id,
            aws_secret_access_key=self.settings.s3_secret_access_key.get_secret_value(),
            config=Config(
                s3={"addressing_style": "path"},
                connect_timeout=timeout_s,
                read_timeout=timeout_s,
                retries={"max_attempts": 1},
            ),
        )

    def check(self, timeout_s: float) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        if not procs.port_is_listening(self.settings.host, self.ports["s3"], timeout_s):
            raise HealthError(f"s3: nothing listens on port {self.ports['s3']}")
        client = self.client(timeout_s)
        try:
            names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            if self.bucket not in names:
                client.create_bucket(Bucket=self.bucket)
                names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            if self.bucket not in names:
                raise HealthError(f"s3: bucket {self.bucket!r} missing after create_bucket")
        except (BotoCoreError, ClientError) as exc:
            raise HealthError(f"s3: {exc}") from exc


def _kafka_cluster_id() -> str:
    """A cluster id as Kafka's Uuid.randomUuid() makes one.

    URL-safe base64 of 16 random bytes, no padding, and never starting with "-": the
    storage tool would read such an id as an option and refuse to format (one start in 64).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class _Kafka(_Service):
    port_roles = ("kafka", "controller")

    def requested_ports(self) -> dict[str, int]:
        return {
            "kafka": self.settings.kafka_port,
            "controller": self.settings.kafka_controller_port,
        }

    @property
    def bootstrap(self) -> str:
        return f"{self.settings.host}:{self.ports['kafka']}"

    def _server_properties(self) -> str:
        host, data = self.settings.host, self.directory / "data"
        broker, controller = self.ports["kafka"], self.ports["controller"]
        lines = {
            # One node is broker and KRaft controller at once.
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{host}:{controller}",
            "listeners": f"PLAINTEXT://{host}:{broker},CONTROLLER://{host}:{controller}",
            "advertised.listeners": f"PLAINTEXT://{host}:{broker}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(data),
            "num.partitions": "1",
            # Single node: every internal topic has one replica.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "min.insync.replicas": "1",
            "default.replication.factor": "1",
            # Flink's exactly-once Kafka sink keeps transactions open up to 15 minutes.
            "transaction.max.timeout.ms": "900000",
            # Tests and the demo join consumer groups often; do not wait 3 s for each.
            "group.initial.rebalance.delay.ms": "0",
            # Topics are created on purpose by `flywheel topics create`.
            "auto.create.topics.enable": "false",
            "delete.topic.enable": "true",
        }
        return "# Written by `flywheel stack up`; edits are overwritten.\n" + "".join(
            f"{key}={value}\n" for key, value in lines.items()
        )

    def _log4j(self) -> str:
        return "\n".join(
            [
                "status = warn",
                "appender.console.type = Console",
                "appender.console.name = STDOUT",
                "appender.console.layout.type = PatternLayout",
                "appender.console.layout.pattern = [%d] %p %m (%c)%n",
                "rootLogger.level = WARN",
                "rootLogger.appenderRef.stdout.ref = STDOUT",
                # Keep start/stop milestones visible.
                "logger.server.name = kafka.server",
                "logger.server.level = INFO",
                "logger.raft.name = kafka.Kafka",
                "logger.raft.level = INFO",
                "",
            ]
        )

    def prepare(self, progress: Progress) -> tuple[list[str], dict[str, str]]:
        java = _java(self.settings, "Kafka")
        if not jars.kafka_home(self.settings).joinpath("libs").is_dir():
            progress(f"kafka: downloading Apache Kafka {self.settings.kafka_version} jars (Maven)")
        libs = jars.ensure_kafka_libs(self.settings)
        self.directory.mkdir(parents=True, exist_ok=True)
        properties = self.directory / "server.properties"
        properties.write_text(self._server_properties())
        log4j = self.directory / "log4j2.properties"
        log4j.write_text(self._log4j())
        classpath = f"{libs}/*"
        jvm_common = [f"-Dlog4j2.configurationFile={log4j}", "-Djava.awt.headless=true"]
        data = self.directory / "data"
        if not (data / "meta.properties").is_file():
            progress("kafka: formatting KRaft storage")
            result = subprocess.run(
                [
                    java,
                    *jvm_common,
                    "-cp",
                    classpath,
                    "kafka.tools.StorageTool",
                    "format",
                    "--cluster-id",
                    _kafka_cluster_id(),
                    "--config",
                    str(properties),
                    "--ignore-formatted",
                ],  # fmt: skip
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                raise StackError(f"kafka storage format failed:\n{result.stdout}{result.stderr}")
        argv = [
            java,
            "-Xms256m",
            f"-Xmx{self.settings.kafka_heap_mb}m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            *jvm_common,
            f"-Dkafka.logs.dir={self.directory / 'logs'}",
            "-cp",
            classpath,
            "kafka.Kafka",
            str(properties),
        ]
        return argv, dict(os.environ)

    def check(self, timeout_s: float) -> None:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

        if not procs.port_is_listening(self.settings.host, self.ports["kafka"], timeout_s):
            raise HealthError(f"kafka: nothing listens on port {self.ports['kafka']}")
        admin = AdminClient(
            {
                "bootstrap.servers": self.bootstrap,
                "socket.timeout.ms": int(timeout_s * 1000),
                "log_level": 2,
            }
        )
        try:
            metadata = admin.list_topics(timeout=timeout_s)
            if HEALTH_TOPIC not in metadata.topics:
                futures = admin.create_topics(
                    [NewTopic(HEALTH_TOPIC, num_partitions=1, replication_factor=1)],
                    request_timeout=timeout_s,
                    operation_timeout=timeout_s,
                )
                for future in futures.values():
                    try:
                        future.result(timeout=timeout_s + 1)
                    except KafkaException as exc:
                        if "TOPIC_ALREADY_EXISTS" not in str(exc):
                            raise
                metadata = admin.list_topics(timeout=timeout_s)
            topic = metadata.topics.get(HEALTH_TOPIC)
            if topic is None or topic.error is not None or not topic.partitions:
                raise HealthError(f"kafka: topic {HEALTH_TOPIC} is not listed ({topic})")
            leaders = [p.leader for p in topic.partitions.values()]
            if any(leader < 0 for leader in leaders):
                raise HealthError("kafka: health topic has no partition leader yet")
        except KafkaException as exc:
            raise HealthError(f"kafka: {exc}") from exc
        except Exception as exc:  # futures raise plain exceptions on timeout
            if isinstance(exc, HealthError):
                raise
            raise HealthError(f"kafka: {type(exc).__name__}: {exc}") from exc


class _FlinkBase(_Service):
    s3_url: str = ""
    rest_port_role = "rest"

    def conf_dir(self) -> Path:
        return self.settings.state_dir / "flink" / "conf"

    def write_conf(self, rest_port: int, rpc_port: int) -> Path:
        from pydantic import SecretStr

        settings, flink = self.settings, self.settings.state_dir / "flink"
        conf = self.conf_dir()
        conf.mkdir(parents=True, exist_ok=True)
        for sub in ("log", "tmp"):
            (flink / sub).mkdir(parents=True, exist_ok=True)
        home = jars.pyflink_home()
        for name in ("log4j-console.properties", "log4j.properties", "log4j-cli.properties"):
            src = home / "conf" / name
            if src.is_file():
                shutil.copyfile(src, conf / name)
        self.write_lib_dir()
        secret: SecretStr = settings.s3_secret_access_key
        options = {
            "jobmanager.rpc.address": settings.host,
            "jobmanager.rpc.port": rpc_port,
            "jobmanager.bind-host": settings.host,
            "jobmanager.memory.process.size": f"{settings.flink_jobmanager_memory_mb}m",
            "taskmanager.bind-host": settings.host,
            "taskmanager.host": settings.host,
            "taskmanager.numberOfTaskSlots": settings.flink_task_slots,
            "classloader.resolve-order": "parent-first",  # why: write_lib_dir
            # A TaskManager that dies is noticed in 20 s, not Flink's default 50 s.
            "heartbeat.interval": 2000,
            "heartbeat.timeout": 20000,
            # Aligned checkpoints wait behind buffered events; keep the buffers to ~1 s of work.
            "taskmanager.network.memory.buffer-debloat.enabled": "true",
            "taskmanager.memory.process.size": f"{settings.flink_taskmanager_memory_mb}m",
            "rest.address": settings.host,
            "rest.bind-address": settings.host,
            "rest.port": rest_port,
            "parallelism.default": 1,
            "io.tmp.dirs": str(flink / "tmp"),
            "python.executable": sys.executable,
            "python.client.executable": sys.executable,
            # flink-s3-fs-hadoop (plugin) pointed at the stack's S3 server.
            "s3.endpoint": self.s3_url,
            "s3.path.style.access": "true",
            "s3.access-key": settings.s3_access_key_id,
            "s3.secret-key": secret.get_secret_value(),
            "s3.directory.marker.retention": "keep",  # why: jars.flink_s3_options
        }
        (conf / "config.yaml").write_text(
            "# Written by `flywheel stack up`; edits are overwritten.\n"
            + "".join(f"{key}: {json.dumps(value)}\n" for key, value in options.items())
        )
        return conf

    def lib_dir(self) -> Path:
        return self.settings.state_dir / "flink" / "lib"

    def write_lib_dir(self) -> Path:
        """PyFlink's lib/ plus opt/flink-python*.jar and the connector jars, as links: a
        cluster that runs Python jobs needs flink-python on its classpath
        (KeyByKeySelector, the Python operators), and PyFlink keeps it in opt/."""
        home, lib = jars.pyflink_home(), self.lib_dir()
        if lib.exists():
            shutil.rmtree(lib)
        lib.mkdir(parents=True)
        # The connector jars too, loaded once by the cluster (with parent-first class
        # loading): shipped with each job instead, a second job's classes clash with
        # those the first one left in Hadoop's static caches (s3a's XML parser).
        for jar in [
            *sorted((home / "lib").glob("*.jar")),
            *sorted((home / "opt").glob("flink-python*.jar")),
            *jars.flink_jar_paths(self.settings),
        ]:
            if not (lib / jar.name).exists():
                (lib / jar.name).symlink_to(jar)
        return lib

    def flink_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(jars.flink_process_env(self.settings))
        env["FLINK_LIB_DIR"] = str(self.lib_dir())
        env["FLINK_CONF_DIR"] = str(self.conf_dir())
        # Python operators in thread mode run in the TaskManager's embedded interpreter,
        # which knows neither this venv (pemja, pyflink) nor this project: as for the
        # embedded MiniCluster (jobs/streaming.py), both go on its PYTHONPATH.
        import sysconfig

        project_root = str(Path(__file__).resolve().parent.parent)
        site_dirs = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (project_root, *site_dirs, os.environ.get("PYTHONPATH", "")) if p
        )
        env["FLINK_LOG_DIR"] = str(self.settings.state_dir / "flink" / "log")
        return env

    def overview(self, timeout_s: float) -> dict[str, Any]:
        import urllib.request

        url = f"http://{self.settings.host}:{self.rest_port()}/overview"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                return dict(json.loads(response.read()))
        except (OSError, ValueError) as exc:
            raise HealthError(f"{self.name}: {url}: {exc}") from exc

    def rest_port(self) -> int:
        raise NotImplementedError


class _FlinkJobManager(_FlinkBase):
    port_roles = ("rest", "rpc")

    def requested_ports(self) -> dict[str, int]:
        return {"rest": self.settings.flink_rest_port, "rpc": self.settings.flink_rpc_port}

    def rest_port(self) -> int:
        return self.ports["rest"]

    def prepare(self, progress: Progress) -> tuple[list[str], dict[str, str]]:
        self.write_conf(self.ports["rest"], self.ports["rpc"])
        script = jars.pyflink_home() / "bin" / "jobmanager.sh"
        return ["bash", str(script), "start-foreground"], self.flink_env()

    def check(self, timeout_s: float) -> None:
        self.overview(timeout_s)


class _FlinkTaskManager(_FlinkBase):
    port_roles = ()
    jobmanager: _FlinkJobManager | None = None

    def rest_port(self) -> int:
        assert self.jobmanager is not None
        return self.jobmanager.ports["rest"]

    def prepare(self, progress: Progress) -> tuple[list[str], dict[str, str]]:
        script = jars.pyflink_home() / "bin" / "taskmanager.sh"
        return ["bash", str(script), "start-foreground"], self.flink_env()

    def check(self, timeout_s: float) -> None:
        overview = self.overview(timeout_s)
        if int(overview.get("taskmanagers", 0)) < 1:
            raise HealthError(f"{self.name}: no TaskManager registered yet ({overview})")


# --- the stack ---------------------------------------------------------------


@dataclass
class ServiceStatus:
    """One service as ``status`` reports it."""

    name: str
    running: bool
    healthy: bool | None
    pid: int | None
    ports: dict[str, int]
    log: str
    detail: str = ""


def _now_ms() -> int:
    return int(time.time() * 1000)


def _noop(_: str) -> None:
    pass


class Stack:
    """The services of one state directory."""

    def __init__(self, settings: StackSettings | None = None) -> None:
        self.settings = settings or StackSettings.load()
        self.state_dir = self.settings.state_dir

    # -- files --

    @property
    def stack_file(self) -> Path:
        return self.state_dir / STACK_FILE

    def read_state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.stack_file.read_text()))
        except (OSError, ValueError):
            return {}

    def _last(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.state_dir / LAST_PORTS_FILE).read_text()))
        except (OSError, ValueError):
            return {}

    def _write_state(self, data: Mapping[str, Any]) -> None:
        tmp = self.stack_file.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.stack_file)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``stack.lock`` (other up/down calls wait, up to the start timeout)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "stack.lock", "w") as handle:
            deadline = time.monotonic() + self.settings.start_timeout_s
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StackError(
                            f"another `flywheel stack` command holds {handle.name}"
                        ) from None
                    time.sleep(0.2)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- services --

    def _services(self, with_flink: bool, state: Mapping[str, Any]) -> list[_Service]:
        redis = _Redis("redis", self.settings)
        s3 = _S3("s3", self.settings)
        s3.bucket = _bucket_name()
        kafka = _Kafka("kafka", self.settings)
        services: list[_Service] = [redis, s3, kafka]
        if with_flink:
            jobmanager = _FlinkJobManager("flink-jobmanager", self.settings)
            taskmanager = _FlinkTaskManager("flink-taskmanager", self.settings)
            taskmanager.jobmanager = jobmanager
            services += [jobmanager, taskmanager]
        previous = state.get("services", {})
        for service in services:
            service.ports = dict(previous.get(service.name, {}).get("ports", {}))
        return services

    def _alive_pid(self, service: _Service) -> int | None:
        record = procs.PidRecord.read(service.pid_path)
        if record and procs.is_running(record):
            return record.pid
        return None

    def _processes(self, service: _Service) -> list[int]:
        return procs.processes_of(procs.PidRecord.read(service.pid_path), service.marker)

    def _choose_ports(self, services: list[_Service], keep: set[str]) -> None:
        """Give each service to (re)start its ports: requested, else previous if free, else new."""
        host = self.settings.host
        taken: set[int] = {p for s in services if s.name in keep for p in s.ports.values()}
        for service in services:
            if service.name in keep:
                continue
            chosen: dict[str, int] = {}
            for role, requested in service.requested_ports().items():
                previous = service.ports.get(role, 0)
                if requested:
                    if requested in taken or not procs.port_is_free(host, requested):
                        raise StackError(f"{service.name}: port {requested} ({role}) is in use")
                    port = requested
                elif previous and previous not in taken and procs.port_is_free(host, previous):
                    port = previous
                else:
                    port = procs.free_port(host, avoid=taken)
                taken.add(port)
                chosen[role] = port
            service.ports = chosen

    def _wait_healthy(self, service: _Service, pid: int, deadline: float) -> None:
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if not procs.is_alive(pid):
                raise StackError(
                    f"{service.name} exited during start; last lines of {service.log_path}:\n"
                    + procs.log_tail(service.log_path)
                )
            try:
                service.check(timeout_s=2.0)
                return
            except HealthError as exc:
                last_error = str(exc)
            time.sleep(0.25)
        raise StackError(
            f"{service.name} not healthy after {self.settings.start_timeout_s:.0f}s: {last_error}; "
            f"last lines of {service.log_path}:\n" + procs.log_tail(service.log_path)
        )

    def _start_one(self, service: _Service, progress: Progress, deadline: float) -> int:
        argv, env = service.prepare(progress)
        record = procs.start(
            argv,
            marker=service.marker,
            log_path=service.log_path,
            pid_path=service.pid_path,
            cwd=service.directory,
            env=env,
        )
        progress(f"{service.name}: started (pid {record.pid}, {service.describe()})")
        self._wait_healthy(service, record.pid, deadline)
        progress(f"{service.name}: healthy")
        return record.pid

    def up(
        self, *, flink_cluster: bool | None = None, progress: Progress = _noop
    ) -> StackEndpoints:
        """Start what is not running and healthy; return the endpoints."""
        with_flink = self.settings.flink_cluster if flink_cluster is None else flink_cluster
        with self.lock():
            state = self.read_state()
            with_flink = with_flink or "flink-jobmanager" in state.get("services", {})
            # Ports of the running stack, else of the last one (reused while free).
            services = self._services(with_flink, state if state.get("services") else self._last())
            deadline = time.monotonic() + self.settings.start_timeout_s
            pids: dict[str, int] = {}
            keep: set[str] = set()
            for service in services:
                pid = self._alive_pid(service)
                if pid is None or len(service.ports) != len(service.port_roles):
                    continue
                try:
                    service.check(timeout_s=2.0)
                except HealthError:
                    # A busy machine (a job at full speed on two cores) answers slowly; a
                    # restart of a running broker or JobManager would cost far more.
                    try:
                        service.check(timeout_s=15.0)
                    except HealthError as exc:
                        progress(f"{service.name}: running but unhealthy ({exc}); restarting")
                        continue
                for role, requested in service.requested_ports().items():
                    if requested and service.ports.get(role) != requested:
                        raise StackError(
                            f"{service.name} already runs on {service.describe()}, not on "
                            f"port {requested}; run `flywheel stack down` first"
                        )
                keep.add(service.name)
                pids[service.name] = pid
                progress(f"{service.name}: already running (pid {pid}, {service.describe()})")
            for service in services:
                # Leftovers of an earlier run (stale pid file, crash) hold ports and data.
                leftovers = [] if service.name in keep else self._processes(service)
                if leftovers:
                    progress(f"{service.name}: stopping leftover processes {leftovers}")
                    procs.stop(leftovers, self.settings.stop_timeout_s)
            self._choose_ports(services, keep)
            s3 = next(s for s in services if isinstance(s, _S3))
            for service in services:
                if isinstance(service, _FlinkBase):
                    service.s3_url = s3.url

            to_start = [s for s in services if s.name not in keep]
            errors: list[str] = []
            flink_jars_error: list[str] = []

            def fetch_flink_jars() -> None:
                try:
                    jars.ensure_flink_jars(self.settings)
                except Exception as exc:  # reported, not fatal for the services
                    flink_jars_error.append(str(exc))

            fetcher = threading.Thread(target=fetch_flink_jars, daemon=True)
            fetcher.start()
            lock = threading.Lock()

            def bring_up(service: _Service) -> None:
                try:
                    pid = self._start_one(service, progress, deadline)
                    with lock:
                        pids[service.name] = pid
                except Exception as exc:
                    with lock:
                        errors.append(f"{service.name}: {exc}")

            core = [s for s in to_start if not isinstance(s, _FlinkBase)]
            flink = [s for s in to_start if isinstance(s, _FlinkBase)]
            if core:
                with ThreadPoolExecutor(max_workers=len(core)) as pool:
                    list(pool.map(bring_up, core))
            # The TaskManager registers with the JobManager: start them in order.
            for service in flink if not errors else []:
                bring_up(service)
            fetcher.join(timeout=max(1.0, deadline - time.monotonic()))
            if errors:
                # Leave nothing of this call behind: started, half-started or unhealthy.
                for service in to_start:
                    procs.stop(self._processes(service), self.settings.stop_timeout_s)
                raise StackError("stack up failed:\n" + "\n".join(errors))
            if flink_jars_error:
                progress(f"warning: Flink connector jars not downloaded: {flink_jars_error[0]}")
            endpoints = self._endpoints(services)
            self._write_state(self._state_record(services, pids, endpoints, state))
            return endpoints

    def _endpoints(self, services: list[_Service]) -> StackEndpoints:
        by_name = {s.name: s for s in services}
        redis, s3, kafka = by_name["redis"], by_name["s3"], by_name["kafka"]
        assert isinstance(redis, _Redis) and isinstance(s3, _S3) and isinstance(kafka, _Kafka)
        jobmanager = by_name.get("flink-jobmanager")
        return StackEndpoints(
            kafka_bootstrap=kafka.bootstrap,
            redis_url=redis.url,
            s3_endpoint_url=s3.url,
            s3_bucket=s3.bucket,
            s3_region=self.settings.s3_region,
            s3_access_key_id=self.settings.s3_access_key_id,
            s3_secret_access_key=self.settings.s3_secret_access_key.get_secret_value(),
            flink_rest_url=(
                f"http://{self.settings.host}:{jobmanager.ports['rest']}" if jobmanager else None
            ),
            state_dir=str(self.state_dir),
        )

    def _state_record(
        self,
        services: list[_Service],
        pids: Mapping[str, int],
        endpoints: StackEndpoints,
        previous: Mapping[str, Any],
    ) -> dict[str, Any]:
        record: dict[str, Any] = asdict(endpoints)
        record["started_ms"] = previous.get("started_ms") or _now_ms()
        record["updated_ms"] = _now_ms()
        record["env"] = endpoints.to_env()
        home = jars._flink_home(self.settings)
        if (home / ".complete").is_file():
            record["flink_jars"] = [str(p) for p in sorted((home / "libs").glob("*.jar"))]
            record["flink_plugins_dir"] = str(home / "plugins")
        record["services"] = {
            s.name: {"pid": pids[s.name], "ports": s.ports, "log": str(s.log_path)}
            for s in services
        }
        return record

    # -- status --

    def status(self, check_health: bool = True) -> list[ServiceStatus]:
        """Every service the state directory knows about, running or not."""
        state = self.read_state()
        with_flink = "flink-jobmanager" in state.get("services", {})
        services = self._services(with_flink, state)
        result = []
        for service in services:
            pid = self._alive_pid(service)
            healthy: bool | None = None
            detail = ""
            if pid is not None and check_health and len(service.ports) == len(service.port_roles):
                try:
                    service.check(timeout_s=2.0)
                    healthy = True
                except HealthError as exc:
                    healthy, detail = False, str(exc)
            result.append(
                ServiceStatus(
                    name=service.name,
                    running=pid is not None,
                    healthy=healthy,
                    pid=pid,
                    ports=service.ports,
                    log=str(service.log_path),
                    detail=detail,
                )
            )
        return result

    def running_endpoints(self) -> StackEndpoints | None:
        """The endpoints when the core services' processes are alive, else None."""
        state = self.read_state()
        if not state.get("services"):
            return None
        services = self._services("flink-jobmanager" in state["services"], state)
        for service in services:
            if service.name in CORE_SERVICES and self._alive_pid(service) is None:
                return None
        return StackEndpoints.from_mapping(state)

    # -- leases --

    @property
    def _lease_dir(self) -> Path:
        return self.state_dir / "leases"

    def add_lease(self, owner: str) -> Path:
        """Record that this process uses the stack (a test session, the demo).

        Whoever started the stack for its own use stops it only when no other live
        process holds a lease, so parallel test sessions do not pull it from under
        each other. ``flywheel stack down`` ignores leases.
        """
        self._lease_dir.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        path = self._lease_dir / f"{pid}-{procs.start_ticks(pid)}.json"
        path.write_text(json.dumps({"pid": pid, "owner": owner, "since_ms": _now_ms()}) + "\n")
        return path

    def other_live_leases(self, mine: Path | None = None) -> list[Path]:
        """Leases of other processes that are still alive (dead ones are removed)."""
        live = []
        for path in sorted(self._lease_dir.glob("*.json")) if self._lease_dir.is_dir() else []:
            if mine is not None and path == mine:
                continue
            pid_text, _, ticks_text = path.stem.partition("-")
            try:
                pid, ticks = int(pid_text), int(ticks_text)
            except ValueError:
                continue
            if procs.is_alive(pid) and procs.start_ticks(pid) == ticks:
                live.append(path)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
        return live

    def release_lease(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            path.unlink()

    # -- down --

    def down(self, *, purge: bool = False, progress: Progress = _noop) -> None:
        """Stop every process of this state directory; check no process or port is left."""
        with self.lock():
            state = self.read_state()
            ports = [
                (name, port)
                for name, info in state.get("services", {}).items()
                for port in info.get("ports", {}).values()
            ]
            # Reverse start order: consumers of other services first.
            prefix = procs.marker_value(self.state_dir, "")
            services = self._services(True, state)
            for service in reversed(services):
                name = service.name
                pids = self._processes(service)
                if pids:
                    progress(f"{name}: stopping pid {', '.join(map(str, pids))}")
                    left = procs.stop(pids, self.settings.stop_timeout_s)
                    if left:
                        raise StackError(f"{name}: processes {left} survived SIGKILL")
                with contextlib.suppress(OSError):
                    service.pid_path.unlink()
            stray = procs.marked_pids(prefix)
            if stray:
                left = procs.stop(stray, self.settings.stop_timeout_s)
                if left:
                    raise StackError(f"processes {left} of {self.state_dir} survived SIGKILL")
            busy = self._busy_ports(ports)
            if busy:
                raise StackError(
                    "ports still in use after stopping: "
                    + ", ".join(f"{name} {port}" for name, port in busy)
                )
            with contextlib.suppress(OSError):
                self.stack_file.unlink()
            if state.get("services"):
                # Keep the ports so the next `up` reuses them when free.
                last = {
                    "services": {
                        name: {"ports": info.get("ports", {})}
                        for name, info in state["services"].items()
                    }
                }
                (self.state_dir / LAST_PORTS_FILE).write_text(json.dumps(last, indent=2) + "\n")
            progress("stack stopped")
        if purge:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            progress(f"removed {self.state_dir}")

    def _busy_ports(self, ports: list[tuple[str, int]]) -> list[tuple[str, int]]:
        deadline = time.monotonic() + 5.0
        while True:
            busy = [(n, p) for n, p in ports if not procs.port_is_free(self.settings.host, p)]
            if not busy or time.monotonic() > deadline:
                return busy
            time.sleep(0.1)


def _bucket_name() -> str:
    """The bucket the pipeline writes to (``FLYWHEEL_S3_BUCKET``), created by ``up``."""
    from connectors.settings import S3Settings

    return os.environ.get("FLYWHEEL_S3_BUCKET") or str(S3Settings.model_fields["bucket"].default)


# --- module API ---------------------------------------------------------------


def _settings(state_dir: Path | str | None, overrides: Mapping[str, Any]) -> StackSettings:
    values = dict(overrides)
    if state_dir is not None:
        values["state_dir"] = Path(state_dir)
    return StackSettings.load(**values)


def ensure_up(
    state_dir: Path | str | None = None,
    *,
    flink_cluster: bool | None = None,
    progress: Progress = _noop,
    **overrides: Any,
) -> StackEndpoints:
    """Start the local stack unless it already runs healthy; return its endpoints.

    Keyword overrides are ``StackSettings`` fields (``kafka_port=...``).
    """
    return Stack(_settings(state_dir, overrides)).up(flink_cluster=flink_cluster, progress=progress)


def running_endpoints(state_dir: Path | str | None = None) -> StackEndpoints | None:
    """Endpoints of the stack running from ``state_dir`` (default settings), or None."""
    return Stack(_settings(state_dir, {})).running_endpoints()


# Per service, the variable that says "configured explicitly": when it is set, none of
# that service's settings come from the local stack (an explicit Kafka is never mixed
# with the stack's). The other variables of a service fill in only where unset.
_SERVICE_ENDPOINT_VARS = {
    "FLYWHEEL_KAFKA_BOOTSTRAP_SERVERS": ("FLYWHEEL_KAFKA_",),
    "FLYWHEEL_REDIS_URL": ("FLYWHEEL_REDIS_URL",),
    "FLYWHEEL_S3_ENDPOINT_URL": ("FLYWHEEL_S3_",),
}


def use_running_stack_for_unset_endpoints(
    environ: MutableMapping[str, str] | None = None, state_dir: Path | str | None = None
) -> StackEndpoints | None:
    """Point the services not configured in ``environ`` at the running local stack.

    The one place the command line falls back to ``flywheel stack up``'s services
    (``jobs/cli.py`` calls it once per command). Returns the stack's endpoints, or None
    when no stack runs or its state cannot be read (explicit settings still work).
    """
    env = os.environ if environ is None else environ
    try:
        endpoints = running_endpoints(state_dir)
    except Exception:  # noqa: BLE001 - a broken state file must not stop explicit settings
        return None
    if endpoints is None:
        return None
    unset = [prefixes for var, prefixes in _SERVICE_ENDPOINT_VARS.items() if var not in env]
    for key, value in endpoints.to_env().items():
        if any(key.startswith(prefixes) for prefixes in unset):
            env.setdefault(key, value)
    return endpoints


def stop_stack(
    state_dir: Path | str | None = None, *, purge: bool = False, progress: Progress = _noop
) -> None:
    """Stop the stack of ``state_dir``; with ``purge`` also delete its data."""
    Stack(_settings(state_dir, {})).down(purge=purge, progress=progress)


def stack_status(
    state_dir: Path | str | None = None, check_health: bool = True
) -> list[ServiceStatus]:
    """Status of every service of ``state_dir``."""
    return Stack(_settings(state_dir, {})).status(check_health=check_health)


__all__ = [
    "HealthError",
    "use_running_stack_for_unset_endpoints",
    "ServiceStatus",
    "Stack",
    "StackEndpoints",
    "StackError",
    "ensure_up",
    "running_endpoints",
    "stack_status",
    "stop_stack",
]

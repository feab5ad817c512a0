"""The streaming feature job and its batch twin, wired top to bottom.

source -> parse -> watermarks -> key by session_id -> session features -> sinks

Streaming reads ``flywheel.events`` from Kafka; backfill reads JSON Lines files
in Flink's batch mode. Both run the very same ``ParseEvents`` and
``SessionFeaturesFunction``; only sources and sinks differ.
"""

from __future__ import annotations

import logging
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectors.settings import KafkaSettings, RedisSettings, S3Settings
from jobs.settings import FeatureJobSettings


@dataclass(frozen=True)
class JobContext:
    """Everything the wiring needs, resolved once at start."""

    job: FeatureJobSettings
    kafka: KafkaSettings
    redis: RedisSettings
    s3: S3Settings
    jar_paths: tuple[Path, ...]
    plugins_dir: Path | None


def load_context(**job_overrides: Any) -> JobContext:
    """Load and validate all settings; a bad one fails here naming the field."""
    from deploy.jars import flink_jar_paths, flink_plugins_dir

    job = FeatureJobSettings.load(**job_overrides)
    job.rule_set()  # an unknown column or forbidden construct fails now, naming the rule
    return JobContext(
        job=job,
        kafka=KafkaSettings.load(),
        redis=RedisSettings.load(),
        s3=S3Settings.load(),
        jar_paths=tuple(flink_jar_paths()),
        plugins_dir=flink_plugins_dir(),
    )


class _RedisFactory:
    """Picklable factory so Python workers open their own Redis connection.

    It carries the settings object itself, not its JSON: pydantic dumps a ``SecretStr``
    to JSON as ``**********``, and the workers would then never authenticate.
    """

    def __init__(self, settings: RedisSettings):
        self._settings = settings

    def __call__(self) -> Any:
        return self._settings.client()


def _denied_users(ctx: JobContext) -> frozenset[str]:
    """The deny list (forgotten users' hashes) at submission; streaming re-reads it."""
    if not ctx.job.redis_enabled:
        return frozenset()
    from features.privacy import denied_users_key

    try:
        members = ctx.redis.client().smembers(denied_users_key(ctx.redis.key_prefix))
    except Exception as exc:  # Redis away: start, and let the operator read it later
        logging.getLogger(__name__).warning("deny list not read from Redis: %s", exc)
        return frozenset()
    return frozenset(str(m) for m in members)


def _flink_configuration(ctx: JobContext, *, bounded: bool) -> Any:
    from pyflink.common import Configuration

    from deploy.jars import configure_pyflink

    conf = Configuration()
    # Connector jars, and the S3 plugin registered with this client's JVM too.
    for key, value in configure_pyflink(ctx.s3).items():
        conf.set_string(key, value)
    conf.set_string("python.executable", sys.executable)
    conf.set_string("python.client.executable", sys.executable)
    # The backfill runs its Python operators as processes: in thread mode PyFlink 1.20's
    # Java-side row converter (PythonTypeUtils.RowDataConverter) hands out one reused Row,
    # so every struct in a list (a flagged record's transcript) would come out as the last.
    mode = "process" if bounded else ctx.job.python_execution_mode
    conf.set_string("python.execution-mode", mode)
    conf.set_string("python.fn-execution.bundle.time", "100")
    conf.set_string("execution.runtime-mode", "BATCH" if bounded else "STREAMING")
    if not bounded:
        interval_ms = ctx.job.checkpoint_interval_ms
        conf.set_string("execution.checkpointing.interval", f"{interval_ms} ms")
        conf.set_string("execution.checkpointing.mode", "EXACTLY_ONCE")
        # Aligned barriers wait behind the events buffered before the slow Python operator
        # (unaligned ones cut event-to-Redis latency, p50 0.83 s -> 0.29 s, but lost
        # in-flight events on a TaskManager failover; see JobSettings). Buffer debloating
        # keeps what is buffered, and so the barriers' wait, small.
        conf.set_string(
            "execution.checkpointing.unaligned.enabled",
            str(ctx.job.unaligned_checkpoints).lower(),
        )
        conf.set_string("taskmanager.network.memory.buffer-debloat.enabled", "true")
        conf.set_string(
            "execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION"
        )
        conf.set_string("state.backend.type", ctx.job.state_backend)
        if ctx.job.state_backend == "rocksdb":
            conf.set_string("execution.checkpointing.incremental", "true")
            # Timers stay on the heap: a few per key, and far cheaper to touch there.
            conf.set_string("state.backend.rocksdb.timer-service.factory", "HEAP")
        # A checkpoint that fails once (a slow S3 write) must not restart the job.
        conf.set_string(
            "execution.checkpointing.tolerable-failed-checkpoints",
            str(ctx.job.tolerable_failed_checkpoints),
        )
        directory = checkpoint_dir(ctx)
        conf.set_string("execution.checkpointing.dir", directory)
        conf.set_string("state.checkpoints.dir", directory)
        conf.set_string("state.savepoints.dir", directory + "/savepoints")
    return conf


_client_prepared = False


def _prepare_client_process() -> None:
    """Make this process safe to start any number of jobs in, and to exit after them.

    PyFlink starts a gRPC "loopback" worker-pool server in the client for every job on a
    local MiniCluster (``BeamFnLoopbackWorkerPoolServicer.__init__`` resets the address
    its singleton keeps) and only schedules an unawaited one-second stop at exit, so its
    threads race interpreter teardown. This job needs none: in thread mode the Python
    operators run inside the JVM, in process mode in workers of their own. The
    documented switch ``_python_worker_execution_mode=process`` starts no server.
    """
    global _client_prepared
    if _client_prepared:
        return
    os.environ["_python_worker_execution_mode"] = "process"
    # The JVM inherits this environment, and thread mode runs Python inside it: Python's
    # fault handler there would take the SIGSEGVs the JVM raises on purpose (null checks,
    # safepoints) and kill it. This process keeps its handler; only children lose it.
    os.environ.pop("PYTHONFAULTHANDLER", None)
    _client_prepared = True


def _environments(
    ctx: JobContext, *, bounded: bool, savepoint: str | None = None
) -> tuple[Any, Any]:
    from pyflink.datastream import RuntimeExecutionMode, StreamExecutionEnvironment
    from pyflink.table import EnvironmentSettings, StreamTableEnvironment

    _prepare_client_process()

    # The Python workers must import this project and its venv.
    # In thread mode the embedded interpreter does not know the venv: put it on PYTHONPATH.
    project_root = str(Path(__file__).resolve().parent.parent)
    site_dirs = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (project_root, *sorted(site_dirs), os.environ.get("PYTHONPATH", "")) if p
    )
    conf = _flink_configuration(ctx, bounded=bounded)
    if savepoint:
        conf.set_string("execution.savepoint.path", savepoint)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(ctx.job.parallelism)
    env.set_runtime_mode(RuntimeExecutionMode.BATCH if bounded else RuntimeExecutionMode.STREAMING)
    settings = (
        EnvironmentSettings.in_batch_mode() if bounded else EnvironmentSettings.in_streaming_mode()
    )
    t_env = StreamTableEnvironment.create(env, environment_settings=settings)
    # The SQL sinks' operators get stable uids too (as every DataStream operator has one):
    # auto-generated ones change with chaining, and at another parallelism the filesystem
    # sink's writer chains differently, so a savepoint could not be restored there.
    t_env.get_config().set("table.exec.uid.generation", "ALWAYS")
    _restart_sql_node_ids(t_env)
    return env, t_env


def _restart_sql_node_ids(t_env: Any) -> None:
    """Number this job's SQL nodes from 1 again, as in a fresh process.

    The generated uids are ``<node id>_<transformation>``, and the planner counts node ids
    per JVM: a job built a second time in one process (a restart in a test, the demo)
    would get other uids and could not restore the first one's savepoint.
    """
    from pyflink.java_gateway import get_gateway

    gateway = get_gateway()
    loader = t_env._j_tenv.getPlanner().getClass().getClassLoader()
    context = loader.loadClass("org.apache.flink.table.planner.plan.nodes.exec.ExecNodeContext")
    reset = context.getMethod("resetIdCounter", gateway.new_array(gateway.jvm.Class, 0))
    reset.invoke(None, gateway.new_array(gateway.jvm.Object, 0))


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _with(options: dict[str, str]) -> str:
    return ",\n  ".join(f"{_sql_string(k)} = {_sql_string(v)}" for k, v in options.items())


def _kafka_properties(ctx: JobContext) -> dict[str, str]:
    return {f"properties.{k}": v for k, v in ctx.kafka.java_client_properties().items()}


def _feature_table_ddl(name: str, path: str) -> str:
    from features.columns import PARQUET_SCHEMA_FIELDS
    from jobs.row_types import sql_columns

    columns = sql_columns(PARQUET_SCHEMA_FIELDS)
    return f"""CREATE TEMPORARY TABLE {name} (
  {columns},
  `dt` STRING
) PARTITIONED BY (`dt`) WITH (
  {
        _with(
            {
                "connector": "filesystem",
                "path": path,
                "format": "parquet",
                "sink.rolling-policy.file-size": "128MB",
                "sink.rolling-policy.rollover-interval": "10 min",
            }
        )
    }
)"""


def _keyed_kafka_sink_ddl(ctx: JobContext, name: str, topic: str, txn_prefix: str) -> str:
    timeout_ms = ctx.job.flagged_transaction_timeout_ms
    options = {
        "connector": "kafka",
        "topic": topic,
        "key.format": "raw",
        "key.fields": "session_id",
        "value.format": "raw",
        "value.fields-include": "EXCEPT_KEY",
        "sink.delivery-guarantee": "exactly-once",
        "sink.transactional-id-prefix": txn_prefix,
        "properties.transaction.timeout.ms": str(timeout_ms),
        **_kafka_properties(ctx),
    }
    return f"""CREATE TEMPORARY TABLE {name} (
  `session_id` STRING,
  `payload` STRING
) WITH (
  {_with(options)}
)"""


def output_base(ctx: JobContext, override: str | None = None) -> str:
    """Where Parquet lands: the override, the job setting, or ``s3://<bucket>/flywheel``."""
    base = override or ctx.job.output_base or f"s3://{ctx.s3.bucket}/flywheel"
    if "://" not in base:
        base = Path(base).resolve().as_uri()
    return base.rstrip("/")


def checkpoint_dir(ctx: JobContext) -> str:
    """Checkpoints and savepoints: the job setting, or ``<output base>/checkpoints``.

    Never Flink's in-memory default: it refuses state over 5 MiB, which a few thousand
    open sessions with their vectors exceed, and it keeps nothing for a restart.
    """
    directory = ctx.job.checkpoint_dir or output_base(ctx) + "/checkpoints"
    if "://" not in directory:
        directory = Path(directory).resolve().as_uri()
    return directory.rstrip("/")


def _event_partitions(ctx: JobContext) -> tuple[int, ...]:
    """The events topic's partitions now (later ones join the event clock when first seen)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(ctx.kafka.client_config())
    topic = admin.list_topics(ctx.kafka.events_topic, timeout=30).topics.get(ctx.kafka.events_topic)
    if topic is None or topic.error is not None:
        return ()
    return tuple(sorted(topic.partitions))


def _session_features(ctx: JobContext, events: Any, *, bounded: bool) -> Any:
    """parse -> watermarks -> key -> session features, shared by both jobs."""
    from pyflink.common import Duration, WatermarkStrategy
    from pyflink.common.typeinfo import Types

    from jobs.operators import (
        FEATURE_ROW_TYPE,
        EventClockSettings,
        EventTimeAssigner,
        ParseEvents,
        ReaderWatermark,
        SessionFeaturesFunction,
        session_key,
    )

    redis_factory = None
    if ctx.job.redis_enabled and not bounded:
        redis_factory = _RedisFactory(ctx.redis)
    denied_users = _denied_users(ctx)
    bound_ms = ctx.job.max_out_of_order_ms
    idle_ms = ctx.job.idle_timeout_ms
    clock = None
    if not bounded:
        clock = EventClockSettings(
            topic=ctx.kafka.events_topic,
            partitions=_event_partitions(ctx),
            bound_ms=bound_ms,
            idle_ms=idle_ms,
            max_future_skew_ms=ctx.job.max_future_skew_ms,
        )
    parsed = (
        events.process(ParseEvents(redis_factory, ctx.redis.key_prefix, clock, denied_users))
        .uid("parse-events")
        .name("Parse and validate events")
    )
    if bounded:
        # Files carry no watermarks; in batch mode every timer fires at the end anyway.
        strategy = WatermarkStrategy.for_bounded_out_of_orderness(
            Duration.of_millis(bound_ms)
        ).with_timestamp_assigner(EventTimeAssigner())
    else:
        # Event time from accepted events only: the parse operator's per-partition clock
        # (rejected events never reach this point). A reader with no input for
        # idle_timeout stops holding back the others.
        # (with_idleness before with_timestamp_assigner: PyFlink's with_idleness returns a
        # new strategy without the Python assigner, and Flink would then read no time.)
        strategy = (
            WatermarkStrategy.for_monotonous_timestamps()
            .with_idleness(Duration.of_millis(idle_ms))
            .with_timestamp_assigner(ReaderWatermark())
        )
    with_time = (
        parsed.assign_timestamps_and_watermarks(strategy)
        .uid("event-time")
        .name("Event-time watermarks")
    )
    sessions = (
        with_time.key_by(session_key, key_type=Types.STRING())
        .process(
            SessionFeaturesFunction(
                ctx.job.model_dump_json(),
                bounded=bounded,
                redis_factory=redis_factory,
                key_prefix=ctx.redis.key_prefix,
                session_ttl_s=int(ctx.redis.session_ttl.total_seconds()),
                denied_users=denied_users,
            ),
            output_type=FEATURE_ROW_TYPE,
        )
        .uid("session-features")
        .name("Sessions, features and rules")
    )
    return parsed, sessions


def build_streaming_job(
    ctx: JobContext, *, savepoint: str | None = None, bounded_source: bool = False
) -> tuple[Any, Any]:
    """The streaming job: Kafka events -> Redis, Parquet, flagged and dead-letter topics."""
    from jobs.operators import DLQ_TAG, FLAGGED_TAG, KEYED_JSON_TYPE

    env, t_env = _environments(ctx, bounded=False, savepoint=savepoint)
    source_options = {
        "connector": "kafka",
        "topic": ctx.kafka.events_topic,
        "format": "raw",
        "properties.group.id": ctx.job.consumer_group,
        "properties.isolation.level": "read_committed",
        "properties.auto.offset.reset": "earliest",
        "scan.startup.mode": {
            "earliest": "earliest-offset",
            "latest": "latest-offset",
            "committed": "group-offsets",
        }[ctx.job.starting_offsets],
        "scan.topic-partition-discovery.interval": "30 s",
        **_kafka_properties(ctx),
    }
    if bounded_source:
        source_options["scan.bounded.mode"] = "latest-offset"
    # No watermark here: event time comes from accepted events only, after parsing
    # (ParseEvents keeps one watermark per partition). The record timestamp is when the
    # producer sent the event, for the future_event check.
    t_env.execute_sql(f"""CREATE TEMPORARY TABLE raw_events (
  `value` BYTES,
  `topic` STRING METADATA VIRTUAL,
  `partition` INT METADATA VIRTUAL,
  `offset` BIGINT METADATA VIRTUAL,
  `record_ts` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL
) WITH (
  {_with(source_options)}
)""")
    raw = t_env.to_data_stream(t_env.from_path("raw_events"))
    parsed, sessions = _session_features(ctx, raw, bounded=False)

    base = output_base(ctx)
    t_env.execute_sql(_feature_table_ddl("session_features_sink", f"{base}/session_features"))
    t_env.execute_sql(
        _keyed_kafka_sink_ddl(
            ctx, "flagged_sink", ctx.kafka.flagged_topic, f"{ctx.job.consumer_group}-flagged"
        )
    )
    t_env.execute_sql(
        _keyed_kafka_sink_ddl(ctx, "dlq_sink", ctx.kafka.dlq_topic, f"{ctx.job.consumer_group}-dlq")
    )
    flagged = sessions.get_side_output(FLAGGED_TAG)
    dead_letters = parsed.get_side_output(DLQ_TAG).union(sessions.get_side_output(DLQ_TAG))
    statements = t_env.create_statement_set()
    statements.add_insert("session_features_sink", t_env.from_data_stream(sessions))
    statements.add_insert("flagged_sink", t_env.from_data_stream(flagged))
    statements.add_insert(
        "dlq_sink",
        t_env.from_data_stream(
            dead_letters.map(lambda r: r, output_type=KEYED_JSON_TYPE)
            .uid("dead-letters")
            .name("Dead letters")
        ),
    )
    statements.attach_as_datastream()
    return env, t_env


def _jsonl_source_options(input_path: str) -> dict[str, str]:
    options = {"connector": "filesystem", "path": input_path, "format": "raw"}
    if not input_path.endswith(".jsonl"):
        # A folder or prefix: only its JSON Lines files.
        options["source.path.regex-pattern"] = ".*\\.jsonl"
    return options


def build_backfill_job(ctx: JobContext, input_path: str, out_base: str) -> tuple[Any, Any]:
    """The same feature logic over JSON Lines files, in Flink's batch mode."""
    from urllib.parse import urlsplit

    from pyflink.common import Row
    from pyflink.common.serialization import Encoder
    from pyflink.common.typeinfo import Types
    from pyflink.datastream.connectors.file_system import (
        BucketAssigner,
        FileSink,
        OutputFileConfig,
    )

    from jobs.operators import DLQ_TAG, FLAGGED_ROW_TYPE, FLAGGED_TAG, RAW_LINE_TYPE, flagged_row

    env, t_env = _environments(ctx, bounded=True)
    base = output_base(ctx, out_base)
    t_env.execute_sql(f"""CREATE TEMPORARY TABLE raw_lines (
  `line` STRING,
  `path` STRING NOT NULL METADATA FROM 'file.path' VIRTUAL
) WITH (
  {_with(_jsonl_source_options(input_path))}
)""")
    # Flink's file.path metadata is the path alone ("/prefix/part-0.jsonl"): dead letters
    # name the file by its full URI, bucket included.
    source = urlsplit(input_path)
    uri_prefix = f"{source.scheme}://{source.netloc}" if source.scheme else ""

    def with_file_uri(r: Any) -> Any:
        path = r[1]
        return Row(r[0], path if ":" in path.split("/", 1)[0] else uri_prefix + path, None, None)

    lines = (
        t_env.to_data_stream(t_env.from_path("raw_lines"))
        .map(with_file_uri, output_type=RAW_LINE_TYPE)
        .uid("read-lines")
        .name("JSON Lines")
    )
    parsed, sessions = _session_features(ctx, lines, bounded=True)

    t_env.execute_sql(_feature_table_ddl("session_features_sink", f"{base}/session_features"))
    from features.columns import FLAGGED_PARQUET_FIELDS
    from jobs.row_types import sql_columns

    t_env.execute_sql(f"""CREATE TEMPORARY TABLE flagged_sink (
  {sql_columns(FLAGGED_PARQUET_FIELDS)},
  `dt` STRING
) PARTITIONED BY (`dt`) WITH (
  {_with({"connector": "filesystem", "path": f"{base}/flagged_sessions", "format": "parquet"})}
)""")
    flagged = (
        sessions.get_side_output(FLAGGED_TAG)
        .map(flagged_row, output_type=FLAGGED_ROW_TYPE)
        .uid("flagged-rows")
        .name("Flagged records")
    )
    dead_letters = parsed.get_side_output(DLQ_TAG).union(sessions.get_side_output(DLQ_TAG))
    dlq_sink = (
        FileSink.for_row_format(f"{base}/dlq", Encoder.simple_string_encoder())
        .with_bucket_assigner(BucketAssigner.base_path_bucket_assigner())
        .with_output_file_config(OutputFileConfig.builder().with_part_suffix(".jsonl").build())
        .build()
    )
    dead_letters.map(lambda r: r[1], output_type=Types.STRING()).uid("dead-letter-lines").name(
        "Dead-letter lines"
    ).sink_to(dlq_sink).uid("dlq-files").name("Dead letters (JSON Lines)")
    statements = t_env.create_statement_set()
    statements.add_insert("session_features_sink", t_env.from_data_stream(sessions))
    statements.add_insert("flagged_sink", t_env.from_data_stream(flagged))
    statements.attach_as_datastream()
    return env, t_env

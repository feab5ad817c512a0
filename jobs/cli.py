"""The ``flywheel`` command line.

Each area of the project owns its subcommands (``deploy/cli.py``,
``connectors/cli.py``, ``training/cli.py``, ``jobs/commands.py``); this module
only stitches them together so ``flywheel --help`` lists everything.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from pathlib import Path

import click

# Apache Beam (under PyFlink) imports pkg_resources, which warns on every job start; it is
# about Beam's packaging, nothing a user of flywheel can act on, and it buried our lines.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

# (module, attribute) of each click command or group, imported lazily so that
# `flywheel stack status` does not pay for importing torch or pyflink.
_SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "stack": ("deploy.cli", "stack", "Start, stop and inspect the local stack."),
    "topics": ("connectors.cli", "topics", "Create the pipeline's Kafka topics."),
    "produce": ("connectors.cli", "produce", "Send a JSON Lines file of events to Kafka."),
    "ingest": ("connectors.cli", "ingest", "HTTP ingestion service."),
    "run": ("jobs.commands", "run", "Run the streaming feature job."),
    "backfill": ("jobs.commands", "backfill", "Run the feature job over JSON Lines files."),
    "forget": ("jobs.forget", "forget", "Remove a user everywhere and deny their events."),
    "demo": ("jobs.demo", "demo", "Run the whole flywheel end to end on the local stack."),
    "encoder": ("jobs.onnx_encoder", "encoder", "Export the fast (onnx-int8) sentence encoder."),
    "dashboard": ("jobs.dashboard", "dashboard", "Serve the flywheel dashboard."),
    "pool": ("training.cli", "pool", "Build the labeled sample pool from flagged sessions."),
    "label": ("training.cli", "label", "Export and import the human review queue."),
    "train": ("training.cli", "train", "Train a LoRA adapter."),
    "model": ("training.cli", "model", "Model registry: status, promote, rollback."),
    "retrain": ("training.cli", "retrain", "Check retraining triggers and run the loop."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _SUBCOMMANDS:
            return None
        module_name, attr, short_help = _SUBCOMMANDS[cmd_name]
        if ctx.resilient_parsing or "--help" in sys.argv[1:2]:
            # `flywheel --help` lists commands without importing them.
            return click.Command(cmd_name, short_help=short_help, help=short_help)
        module = importlib.import_module(module_name)
        command = getattr(module, attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{module_name}.{attr} is not a click command")
        return command


# Flink's client and MiniCluster JVM (PyFlink's gateway) reads its log4j configuration
# from LOG4J_PROPERTIES and writes to FLINK_LOG_DIR. PyFlink's default sends Hadoop's
# INFO lines to the terminal and its file into the virtualenv; this sends everything to
# <state_dir>/logs/ instead.
JVM_LOG4J = """\
# Written by flywheel (jobs/cli.py); set LOG4J_PROPERTIES to use your own.
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FileAppender
appender.file.name = FileAppender
appender.file.type = FILE
appender.file.append = true
appender.file.fileName = ${sys:log.file}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = %d{yyyy-MM-dd HH:mm:ss,SSS} %-5p %-60c %x - %m%n
logger.hadoopnative.name = org.apache.hadoop.util.NativeCodeLoader
logger.hadoopnative.level = OFF
logger.netty.name = org.jboss.netty.channel.DefaultChannelPipeline
logger.netty.level = OFF
"""


def jvm_logs_to_state_dir() -> Path | None:
    """Point the JVM PyFlink starts at a log file under the state directory."""
    if "LOG4J_PROPERTIES" in os.environ:
        return None  # the user's own configuration
    from connectors.settings import ConfigError
    from deploy.settings import StackSettings

    try:
        logs = StackSettings.load().state_dir / "logs"
    except ConfigError:
        return None  # the command that needs these settings names the bad field
    logs.mkdir(parents=True, exist_ok=True)
    properties = logs / "flink-client-log4j.properties"
    if not properties.is_file() or properties.read_text() != JVM_LOG4J:
        properties.write_text(JVM_LOG4J)
    os.environ["LOG4J_PROPERTIES"] = str(properties)
    os.environ.setdefault("FLINK_LOG_DIR", str(logs))
    return logs


@click.group(cls=LazyGroup)
@click.version_option(package_name="flywheel")
def main() -> None:
    """Flywheel: streaming feedback pipeline for an LLM assistant."""
    jvm_logs_to_state_dir()
    # Services not configured by FLYWHEEL_* variables come from `flywheel stack up`, if
    # it runs: done here once for every command (eval "$(flywheel stack env)" does the
    # same in a shell).
    from deploy.stack import use_running_stack_for_unset_endpoints

    use_running_stack_for_unset_endpoints()


if __name__ == "__main__":
    main()

"""Jars the project runs: the Kafka broker and PyFlink's connectors.

Both are fetched from Maven Central by the poms in ``deploy/maven/`` into the
cache directory (``$FLYWHEEL_CACHE_DIR``, default ``~/.cache/flywheel``), never
into git. A download is done once per pom content: a ``.complete`` marker holds
the pom's hash, so editing a pom refreshes the jars.

PyFlink needs two things to write ``s3://`` paths (see ``configure_pyflink``):
the connector jars in ``pipeline.jars`` and the ``flink-s3-fs-hadoop`` plugin
registered in the JVM that plans and runs the job.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploy.settings import DEPLOY_DIR, StackSettings

if TYPE_CHECKING:
    from connectors.settings import S3Settings

KAFKA_POM = DEPLOY_DIR / "maven" / "kafka" / "pom.xml"
FLINK_POM = DEPLOY_DIR / "maven" / "flink" / "pom.xml"
S3PROXY_POM = DEPLOY_DIR / "maven" / "s3proxy" / "pom.xml"
S3_PLUGIN_NAME = "s3-fs-hadoop"
_MARKER = ".complete"


class JarDownloadError(RuntimeError):
    """Maven could not fetch the jars; the message holds Maven's output."""


def _pom_hash(pom: Path, extra: str = "") -> str:
    digest = hashlib.sha256(pom.read_bytes())
    digest.update(extra.encode())
    return digest.hexdigest()[:16]


def _is_complete(directory: Path, expected: str) -> bool:
    marker = directory / _MARKER
    return marker.is_file() and marker.read_text().strip() == expected


@contextmanager
def _cache_lock(cache_dir: Path, name: str) -> Iterator[None]:
    """Serialize downloads of one artifact set across processes."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_maven(
    settings: StackSettings, pom: Path, goals: list[str], props: Mapping[str, str]
) -> None:
    maven = shutil.which(settings.maven)
    if maven is None:
        raise JarDownloadError(
            f"Maven ({settings.maven!r}) is not installed; install it (apt-get install maven) "
            "or set FLYWHEEL_STACK_MAVEN"
        )
    argv = [maven, "-q", "-B", "-f", str(pom), *goals]
    # A private local repository keeps "empty cache" meaning "downloads everything".
    argv.append(f"-Dmaven.repo.local={settings.cache_dir / 'm2'}")
    argv.extend(f"-D{key}={value}" for key, value in props.items())
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()[-4000:]
        raise JarDownloadError(f"{' '.join(argv)} failed ({result.returncode}):\n{output}")


def _fetch_into(
    settings: StackSettings,
    target: Path,
    pom: Path,
    goals: list[str],
    props_for: Any,
    expected: str,
) -> None:
    """Run Maven into a temporary sibling of ``target`` and swap it in atomically."""
    staging = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _run_maven(settings, pom, goals, props_for(staging))
        (staging / _MARKER).write_text(expected + "\n")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --- Kafka -----------------------------------------------------------------


def kafka_home(settings: StackSettings | None = None) -> Path:
    """``<cache>/kafka-<version>``, holding ``libs/`` once downloaded."""
    settings = settings or StackSettings.load()
    return settings.cache_dir / f"kafka-{settings.kafka_version}"


def ensure_kafka_libs(settings: StackSettings | None = None) -> Path:
    """Download the Kafka broker jars if needed; return the ``libs`` directory."""
    settings = settings or StackSettings.load()
    home = kafka_home(settings)
    expected = _pom_hash(KAFKA_POM, settings.kafka_version)
    if _is_complete(home, expected):
        return home / "libs"
    with _cache_lock(settings.cache_dir, "kafka"):
        if not _is_complete(home, expected):
            _fetch_into(
                settings,
                home,
                KAFKA_POM,
                ["dependency:copy-dependencies"],
                lambda staging: {
                    "kafka.version": settings.kafka_version,
                    "outputDirectory": str(staging / "libs"),
                },
                expected,
            )
    return home / "libs"


# --- S3Proxy ---------------------------------------------------------------


def _s3proxy_home(settings: StackSettings) -> tuple[Path, Path, str]:
    version = settings.s3proxy_version
    home = settings.cache_dir / f"s3proxy-{version}"
    jar = home / f"s3proxy-{version}-jar-with-dependencies.jar"
    return home, jar, _pom_hash(S3PROXY_POM, version)


def s3proxy_jar_is_cached(settings: StackSettings) -> bool:
    home, jar, expected = _s3proxy_home(settings)
    return _is_complete(home, expected) and jar.is_file()


def ensure_s3proxy_jar(settings: StackSettings | None = None) -> Path:
    """Download S3Proxy's self-contained jar if needed; return its path."""
    settings = settings or StackSettings.load()
    home, jar, expected = _s3proxy_home(settings)
    if s3proxy_jar_is_cached(settings):
        return jar
    with _cache_lock(settings.cache_dir, "s3proxy"):
        if not s3proxy_jar_is_cached(settings):
            _fetch_into(
                settings,
                home,
                S3PROXY_POM,
                ["dependency:copy"],
                lambda staging: {
                    "artifact": (
                        f"org.gaul:s3proxy:{settings.s3proxy_version}:jar:jar-with-dependencies"
                    ),
                    "outputDirectory": str(staging),
                },
                expected,
            )
    return jar


# --- Flink -----------------------------------------------------------------


def _flink_home(settings: StackSettings) -> Path:
    return settings.cache_dir / f"flink-{settings.flink_version}"


def ensure_flink_jars(settings: StackSettings | None = None) -> Path:
    """Download the connector jars and the S3 plugin if needed; return their home.

    Layout: ``<home>/libs/*.jar`` (for ``pipeline.jars``) and
    ``<home>/plugins/s3-fs-hadoop/*.jar`` (for ``FLINK_PLUGINS_DIR``).
    """
    settings = settings or StackSettings.load()
    home = _flink_home(settings)
    expected = _pom_hash(FLINK_POM)
    if _is_complete(home, expected):
        return home
    with _cache_lock(settings.cache_dir, "flink"):
        if not _is_complete(home, expected):
            _fetch_into(
                settings,
                home,
                FLINK_POM,
                [
                    "dependency:copy-dependencies@connectors",
                    "dependency:copy-dependencies@s3-plugin",
                ],
                lambda staging: {
                    "flink.libs.dir": str(staging / "libs"),
                    "flink.plugins.dir": str(staging / "plugins"),
                },
                expected,
            )
    return home


def flink_jar_paths(settings: StackSettings | None = None) -> list[Path]:
    """Connector jars for PyFlink's ``pipeline.jars`` (downloaded if missing)."""
    home = ensure_flink_jars(settings)
    return sorted((home / "libs").glob("*.jar"))


def flink_pipeline_jars(settings: StackSettings | None = None) -> str:
    """The ``pipeline.jars`` value: ``;``-joined ``file://`` URLs."""
    return ";".join(path.as_uri() for path in flink_jar_paths(settings))


def flink_plugins_dir(settings: StackSettings | None = None) -> Path:
    """A Flink plugins root holding ``s3-fs-hadoop/`` (downloaded if missing)."""
    return ensure_flink_jars(settings) / "plugins"


def pyflink_home() -> Path:
    """The installed ``pyflink`` package, which is a Flink distribution (bin/, lib/, conf/)."""
    import importlib.util

    spec = importlib.util.find_spec("pyflink")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("apache-flink is not installed in this Python environment")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def flink_process_env(settings: StackSettings | None = None) -> dict[str, str]:
    """Environment a PyFlink process needs so its JVM finds our plugins.

    ``FLINK_HOME`` must be set explicitly: without it, pyflink's
    ``_find_flink_home`` overwrites ``FLINK_PLUGINS_DIR`` with its own
    (empty of file systems) ``plugins`` folder.
    """
    return {
        "FLINK_HOME": str(pyflink_home()),
        "FLINK_PLUGINS_DIR": str(flink_plugins_dir(settings)),
    }


def flink_s3_options(s3: S3Settings) -> dict[str, str]:
    """Flink configuration for flink-s3-fs-hadoop to reach ``s3`` (MinIO/S3Proxy/AWS)."""
    options: dict[str, str] = {
        "s3.path.style.access": str(s3.path_style).lower(),
        # Hadoop 3.3's s3a deletes every parent folder marker after each write; S3Proxy's
        # filesystem backend refuses to delete a marker with objects under it, and s3a
        # then retries for minutes. "keep" is Hadoop 3.4's default and saves AWS calls.
        "s3.directory.marker.retention": "keep",
    }
    if s3.endpoint_url:
        options["s3.endpoint"] = s3.endpoint_url
        options["s3.endpoint.region"] = s3.region
    if s3.access_key_id is not None and s3.secret_access_key is not None:
        options["s3.access-key"] = s3.access_key_id.get_secret_value()
        options["s3.secret-key"] = s3.secret_access_key.get_secret_value()
    return options


def configure_pyflink(
    s3: S3Settings | None = None,
    settings: StackSettings | None = None,
) -> dict[str, str]:
    """Make this Python process's PyFlink able to write ``s3://`` and use the connectors.

    Call it before creating the first ``StreamExecutionEnvironment`` or
    ``TableEnvironment``. It sets ``FLINK_HOME``/``FLINK_PLUGINS_DIR``, starts the
    PyFlink JVM, and registers the plugin file systems with the ``s3`` options
    (PyFlink's gateway never does that itself, so without this the planner fails
    with "Could not find a file system implementation for scheme 's3'").
    Returns the Flink options to also set on the job's configuration:
    ``pipeline.jars`` plus the ``s3.*`` options.
    """
    env = flink_process_env(settings)
    os.environ.update(env)
    options = {"pipeline.jars": flink_pipeline_jars(settings)}
    if s3 is not None:
        options.update(flink_s3_options(s3))

    from pyflink.java_gateway import get_gateway

    jvm = get_gateway().jvm
    jconf = jvm.org.apache.flink.configuration.Configuration()
    for key, value in options.items():
        jconf.setString(key, value)
    # Build the plugin manager from the directory itself rather than from the JVM's
    # FLINK_PLUGINS_DIR, so this also works when the JVM was started earlier.
    plugin_pkg = jvm.org.apache.flink.core.plugin
    finder = plugin_pkg.DirectoryBasedPluginFinder(
        jvm.java.io.File(env["FLINK_PLUGINS_DIR"]).toPath()
    )
    patterns = jvm.org.apache.flink.configuration.CoreOptions.getPluginParentFirstLoaderPatterns(
        jconf
    )
    manager = plugin_pkg.DefaultPluginManager(finder.findPlugins(), patterns)
    jvm.org.apache.flink.core.fs.FileSystem.initialize(jconf, manager)
    return options


def fetch_all(settings: StackSettings | None = None) -> dict[str, float]:
    """Download every jar set; return seconds spent on each."""
    settings = settings or StackSettings.load()
    timings: dict[str, float] = {}
    fetchers: tuple[tuple[str, Any], ...] = (
        ("kafka", ensure_kafka_libs),
        ("flink", ensure_flink_jars),
        ("s3proxy", ensure_s3proxy_jar),
    )
    for name, fetch in fetchers:
        start = time.monotonic()
        fetch(settings)
        timings[name] = time.monotonic() - start
    return timings


__all__ = [
    "JarDownloadError",
    "configure_pyflink",
    "ensure_flink_jars",
    "ensure_kafka_libs",
    "ensure_s3proxy_jar",
    "fetch_all",
    "flink_jar_paths",
    "flink_pipeline_jars",
    "flink_plugins_dir",
    "flink_process_env",
    "flink_s3_options",
    "kafka_home",
    "pyflink_home",
    "s3proxy_jar_is_cached",
]

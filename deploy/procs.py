"""Child-process plumbing for the local stack: start, find, stop, ports.

Every service runs in its own session, so the service and everything it spawns
share a session id (= the service's pid) and can be found and signalled as a
whole. A pid file records the pid *and* the process start time, so a reused pid
is never mistaken for the service. Each service also carries a marker
environment variable naming the state directory and the service; it survives
``exec`` (Flink's scripts exec into java) and is inherited by grandchildren, so
``stop`` also finds processes that left the session or whose pid file is lost.
(Redis overwrites its environment block with its process title, which is why
the marker is not the only way to find a process.)
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

MARKER_ENV = "FLYWHEEL_STACK_SERVICE"


def marker_value(state_dir: Path, service: str) -> str:
    return f"{state_dir}::{service}"


@dataclass(frozen=True)
class PidRecord:
    """What ``<service>.pid`` holds (JSON)."""

    pid: int
    start_ticks: int  # /proc/<pid>/stat field 22: tells a reused pid apart
    argv: list[str]
    started_ms: int
    log: str

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)

    @classmethod
    def read(cls, path: Path) -> PidRecord | None:
        try:
            data = json.loads(path.read_text())
            return cls(
                pid=int(data["pid"]),
                start_ticks=int(data["start_ticks"]),
                argv=list(data["argv"]),
                started_ms=int(data["started_ms"]),
                log=str(data["log"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat from field 3 (state) on, or None when there is no process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces; the state follows it.
    return stat.rsplit(")", 1)[1].split()


def _proc_state(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or None."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def session_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[3]) if fields else None


def _reap(pid: int) -> None:
    # Our own children turn into zombies until waited for.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def is_alive(pid: int) -> bool:
    """True when ``pid`` is a live (not zombie) process."""
    _reap(pid)
    state = _proc_state(pid)
    return state is not None and state not in ("Z", "X")


def _environ_of(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def marked_pids(marker_prefix: str, exact: bool = False) -> list[int]:
    """Live processes whose marker starts with (or, ``exact``, equals) ``marker_prefix``."""
    needle = f"{MARKER_ENV}={marker_prefix}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        for item in _environ_of(pid).split(b"\0"):
            matches = item == needle if exact else item.startswith(needle)
            if matches and is_alive(pid):
                found.append(pid)
                break
    return found


def is_running(record: PidRecord) -> bool:
    """True when the process of ``record`` is alive (and not a reused pid)."""
    return is_alive(record.pid) and start_ticks(record.pid) == record.start_ticks


def session_members(session_id: int) -> list[int]:
    """Live processes of session ``session_id`` (a service and what it spawned)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and session_of(int(entry.name)) == session_id:
            if is_alive(int(entry.name)):
                members.append(int(entry.name))
    return members


def processes_of(record: PidRecord | None, marker: str) -> list[int]:
    """Every live process of one service: its session (if ``record`` is current) + marked ones."""
    found = set(marked_pids(marker, exact=True))
    if record is not None and is_running(record):
        found.update(session_members(record.pid))
        found.add(record.pid)
    return sorted(found)


def start(
    argv: Sequence[str],
    *,
    marker: str,
    log_path: Path,
    pid_path: Path,
    cwd: Path,
    env: dict[str, str] | None = None,
) -> PidRecord:
    """Start ``argv`` in its own session, output appended to ``log_path``."""
    child_env = dict(os.environ if env is None else env)
    child_env[MARKER_ENV] = marker
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(
            f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} start: "
            f"{' '.join(argv)}\n".encode()
        )
        log.flush()
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    record = PidRecord(
        pid=process.pid,
        start_ticks=start_ticks(process.pid) or 0,
        argv=list(argv),
        started_ms=int(time.time() * 1000),
        log=str(log_path),
    )
    pid_path.write_text(record.to_json())
    return record


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def stop(pids: Iterable[int], timeout_s: float) -> list[int]:
    """TERM the process groups of ``pids``, then KILL what is left after ``timeout_s``.

    Returns the pids still alive afterwards (empty on success).
    """
    targets = {pid for pid in pids if is_alive(pid)}
    for pid in targets:
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(is_alive(pid) for pid in targets):
        time.sleep(0.1)
    for pid in targets:
        if is_alive(pid):
            _signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(is_alive(pid) for pid in targets):
        time.sleep(0.05)
    return sorted(pid for pid in targets if is_alive(pid))


# --- ports -----------------------------------------------------------------


def free_port(host: str, avoid: Iterable[int] = ()) -> int:
    """A port the OS reports free on ``host`` (not one of ``avoid``)."""
    avoid = set(avoid)
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port
    raise RuntimeError("could not find a free port")


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on ``host:port`` and it can be bound."""
    if port_is_listening(host, port):
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers set SO_REUSEADDR too, so TIME_WAIT leftovers do not count as "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def port_is_listening(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when a TCP connect to ``host:port`` succeeds."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect((host, port))
        except OSError:
            return False
    return True


def log_tail(path: Path | str, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file ("" when missing)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])

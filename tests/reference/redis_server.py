"""A redis-server of a test's own (data on disk, optional password) to stop and start."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from deploy import procs


class PrivateRedis:
    """Debian's redis-server on a free loopback port; ``stop`` kills it like a crash."""

    def __init__(self, directory: Path, *, password: str | None = None, persist: bool = True):
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not installed (deploy/run.sh installs it)"
        self.binary = binary
        self.directory = directory
        self.password = password  # redis-server re-parses argv as config: no spaces/quotes
        self.persist = persist
        self.port = procs.free_port("127.0.0.1")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(self.directory),
        ]
        argv += (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persist
            else ["--appendonly", "no"]
        )
        if self.password:
            argv += ["--requirepass", self.password]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not procs.port_is_listening("127.0.0.1", self.port, 0.2):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

"""A real Mosquitto broker on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["MosquittoBroker", "free_port", "mosquitto_binary"]


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port the kernel says is free right now on ``host``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def mosquitto_binary() -> str:
    """Path of the mosquitto executable; `.ci/run` installs it with apt-get."""
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
    )
    if not found:
        raise RuntimeError("mosquitto is not installed: run `apt-get install mosquitto`")
    return found


class MosquittoBroker:
    """Start, stop and restart one Mosquitto on a fixed free port (persistence off)."""

    def __init__(
        self, port: int | None = None, extra_config: str = "", *, persistent: bool = False
    ) -> None:
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._dir = Path(tempfile.mkdtemp(prefix="mosquitto-"))
        # Run as root, mosquitto drops to its own user: it must be able to write its database.
        self._dir.chmod(0o777)
        self._conf = self._dir / "mosquitto.conf"
        self._conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 0\n"
            + (
                f"persistence true\npersistence_location {self._dir}/\nautosave_interval 0\n"
                if persistent
                else "persistence false\n"
            )
            + f"{extra_config}\n"
        )
        self._log = self._dir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The broker URL as the gateway's --broker option takes it."""
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until it accepts TCP connections."""
        if self._proc is not None and self._proc.poll() is None:
            return
        log = self._log.open("ab")
        self._proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self._conf)], stdout=log, stderr=log
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self._log.read_text()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout}s")

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL) and wait for it."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None

    def restart(self) -> None:
        """Stop then start again on the same port."""
        self.stop()
        self.start()

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self._proc.pid if self._proc else None

    def log_text(self) -> str:
        """Everything the broker logged so far."""
        return self._log.read_text() if self._log.exists() else ""

    def __repr__(self) -> str:
        running = self._proc is not None and self._proc.poll() is None
        return f"<MosquittoBroker {self.url} running={running}>"

"""The gateway under test as a subprocess (``python -m gateway run``), with its CPU and RSS from /proc."""

from __future__ import annotations

import functools
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from gateway.protocol import Connack, Connect, Disconnect, ReturnCode, decode, encode
from tests.mosquitto import free_port

__all__ = ["GatewayProcess", "RssSampler", "host_busy_cpu_s", "proc_cpu_s", "proc_mem_kb"]

CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parents[2]
#: ``--gateway-cmd``: the module run as the gateway under test (the minimal forwarder is the
#: ceiling of plain Python on this machine, not a gateway; it ignores --mode and --log-level)
PROGRAMS = {"gateway": "gateway", "minimal": "tests.bench.minimal_forwarder"}


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads) in seconds, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_mem_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process in KiB, from /proc/PID/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(line.split()[1])
    return out


def host_busy_cpu_s() -> float:
    """Busy CPU seconds of the whole host (all cores) from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return (sum(v[:8]) - idle) / CLK_TCK


def udp_drops(port: int) -> int:
    """Datagrams the kernel dropped at the UDP sockets bound to ``port`` (/proc/net/udp{,6})."""
    total = 0
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if int(fields[1].rsplit(":", 1)[1], 16) == port:
                        total += int(fields[-1])
        except OSError:
            continue
    return total


def _udp_port_below_ephemeral() -> int:
    """A free UDP port below the kernel's ephemeral range, where node sockets cannot land."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return free_port(socket.SOCK_DGRAM)
    for _ in range(100):
        port = random.randrange(max(1024, low - 12_000), low)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port(socket.SOCK_DGRAM)


@functools.cache
def _supports_state(source: Path | None) -> bool:
    """Whether this gateway's ``run`` takes ``--state`` (the persistence milestone)."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--help"],
        capture_output=True,
        text=True,
        cwd=source,
        env={**os.environ, "PYTHONPATH": str(source)} if source else None,
        check=False,
    )
    return "--state" in done.stdout


class RssSampler:
    """Samples a process's VmRSS every ``interval`` seconds in a thread; keeps the maximum."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self.max_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.max_kb = max(self.max_kb, proc_mem_kb(self.pid).get("VmRSS", 0))
            except OSError:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()


class GatewayProcess:
    """``python -m gateway run --udp 127.0.0.1:PORT --broker URL [--mode transparent]``.

    ``program="minimal"`` runs ``python -m tests.bench.minimal_forwarder run ...`` instead.
    """

    def __init__(
        self,
        broker_url: str,
        mode: str = "aggregating",
        log_level: str = "WARNING",
        source: Path | None = None,
        state: str = "file",
        program: str = "gateway",
    ) -> None:
        self.broker_url = broker_url
        self.program = program  # "gateway", or "minimal": tests/bench/minimal_forwarder.py
        if program == "minimal":
            source = REPO  # the forwarder of this checkout, whatever gateway source is chosen
        self.source = source  # run ``python -m gateway`` from this source tree
        self.state = state  # "file": a fresh state file per process; "memory": none
        self.mode = mode
        self.log_level = log_level
        self.host = "127.0.0.1"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
        self.log_path = self._dir / "gateway.log"

    @property
    def pid(self) -> int:
        """The gateway's process id."""
        assert self._proc is not None
        return self._proc.pid

    @property
    def command(self) -> list[str]:
        """The command line the gateway runs with."""
        return [
            sys.executable,
            "-m",
            PROGRAMS[self.program],
            "run",
            "--udp",
            f"{self.host}:{self.port}",
            "--broker",
            self.broker_url,
            "--mode",
            self.mode,
            "--log-level",
            self.log_level,
            *self._state_args(),
        ]

    def _state_args(self) -> list[str]:
        if self.program != "gateway" or not _supports_state(self.source):
            return []  # a gateway from before the state file
        return ["--state", str(self._dir / "state.sqlite") if self.state == "file" else ":memory:"]

    def start(self, timeout: float = 30.0) -> None:
        """Start the gateway and wait until a probe node gets CONNACK accepted."""
        for attempt in range(3):
            self.port = _udp_port_below_ephemeral()
            try:
                self._start(timeout)
                return
            except RuntimeError:
                # a node socket of ours (or anyone's) may take the port in between
                if attempt == 2 or "Address already in use" not in self.log_tail():
                    raise

    def _start(self, timeout: float) -> None:
        log = self.log_path.open("ab")
        env = None
        if self.source is not None:
            env = {**os.environ, "PYTHONPATH": str(self.source)}
        self._proc = subprocess.Popen(
            self.command, stdout=log, stderr=log, cwd=self.source, env=env
        )
        log.close()
        self._probe(timeout)

    def _probe(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((self.host, self.port))
            sock.settimeout(0.2)
            connect = encode(Connect(f"bench-probe-{os.getpid()}", 30, clean_session=True))
            while time.monotonic() < deadline:
                if self._proc is not None and self._proc.poll() is not None:
                    raise RuntimeError(f"gateway exited at start: {self.log_tail()}")
                try:
                    sock.send(connect)
                    reply = decode(sock.recv(64))
                except (ConnectionRefusedError, TimeoutError):
                    time.sleep(0.05)
                    continue
                if isinstance(reply, Connack) and reply.return_code == ReturnCode.ACCEPTED:
                    sock.send(encode(Disconnect()))
                    try:
                        sock.recv(64)
                    except (ConnectionRefusedError, TimeoutError):
                        pass
                    return
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gateway did not accept a CONNECT within {timeout}s: {self.log_tail()}")

    def cpu_s(self) -> float:
        """CPU seconds the gateway used so far."""
        return proc_cpu_s(self.pid)

    def mem_kb(self) -> dict[str, int]:
        """Its VmRSS and VmHWM in KiB."""
        return proc_mem_kb(self.pid)

    def alive(self) -> bool:
        """True while the process runs."""
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """SIGTERM (clean shutdown), then SIGKILL."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None

    def log_tail(self, chars: int = 2000) -> str:
        """The end of what the gateway logged."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if exc_type is None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<GatewayProcess {self.mode} udp {self.host}:{self.port} alive={self.alive()}>"

"""Fixtures for restarts: the real gateway with a state file, in process or as a process to kill."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config import parse_config
from gateway.runtime import GatewayRuntime
from tests.integration.conftest import wait_for
from tests.mosquitto import MosquittoBroker, free_port

REPO = Path(__file__).parents[2]


@pytest.fixture(params=["aggregating", "transparent"])
def mode(request: pytest.FixtureRequest) -> str:
    """Run the test in both gateway modes."""
    return str(request.param)


@pytest.fixture
async def gateway_with_state() -> AsyncIterator[Callable[..., Any]]:
    """``await gateway_with_state(broker, state, mode=..., udp_port=...)`` -> started runtime."""
    runtimes: list[GatewayRuntime] = []

    async def start(
        broker: MosquittoBroker,
        state: Path,
        *,
        mode: str = "aggregating",
        udp_port: int | None = None,
        connected: bool = True,
    ) -> GatewayRuntime:
        port = udp_port or free_port(socket.SOCK_DGRAM)
        config = parse_config(
            {"gateway": {"state-file": str(state)}, "mqttsn": {"t-adv": 0, "t-retry": 1.0}},
            udp=f"127.0.0.1:{port}",
            broker=broker.url,
            mode=mode,
        )
        runtime = GatewayRuntime(config)
        await runtime.start()
        runtime.udp_port = port  # type: ignore[attr-defined]
        runtimes.append(runtime)
        if connected:
            await wait_for(lambda: runtime.upstream.connected, 10.0, "the gateway connects")
        return runtime

    yield start
    for runtime in runtimes:
        await runtime.close()


class GatewayProcess:
    """``python -m gateway run ... --state FILE`` as a child process, its log collected."""

    def __init__(
        self,
        broker: MosquittoBroker,
        state: Path,
        udp_port: int | None,
        mode: str = "aggregating",
    ) -> None:
        self.broker = broker
        self.state = state
        self.mode = mode
        self.udp_port = udp_port or free_port(socket.SOCK_DGRAM)
        self._pick_port = udp_port is None
        self.lines: list[str] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start it and wait until it runs; a port taken meanwhile by another process is
        replaced by a new one (unless the test asked for this port)."""
        for _ in range(5):
            self.lines = []
            self._proc = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "gateway", "run", "--mode", self.mode),
                *("--udp", f"127.0.0.1:{self.udp_port}", "--broker", self.broker.url),
                *("--state", str(self.state), "--log-level", "DEBUG"),
                cwd=REPO,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            self._reader = asyncio.create_task(self._read())
            try:
                await self.wait_line("gateway running", 30.0)
                return
            except AssertionError:
                if not self._pick_port or "Address already in use" not in "".join(self.lines):
                    raise
            await self._proc.wait()
            self.udp_port = free_port(socket.SOCK_DGRAM)
        raise AssertionError("no free UDP port for the gateway")

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        async for line in self._proc.stderr:
            self.lines.append(line.decode(errors="replace"))

    async def wait_line(self, text: str, timeout: float = 10.0, after: int = 0) -> int:
        """Wait for a log line containing ``text`` (from line ``after`` on); its index."""

        def found() -> int | None:
            for index in range(after, len(self.lines)):
                if text in self.lines[index]:
                    return index
            return None

        def found_or_exited() -> bool:
            exited = self._proc is not None and self._proc.returncode is not None
            return found() is not None or (
                exited and self._reader is not None and self._reader.done()
            )

        try:
            await wait_for(found_or_exited, timeout, f"log line {text!r}")
            if found() is None:
                raise AssertionError("exited")
        except AssertionError:
            raise AssertionError(f"no {text!r} in:\n{''.join(self.lines[-40:])}") from None
        index = found()
        assert index is not None
        return index

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGKILL)
        await self._proc.wait()
        await self._stop_reader()

    async def stop(self) -> None:
        """SIGTERM (clean shutdown), if still running."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self._proc.wait(), 15.0)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        await self._stop_reader()

    async def _stop_reader(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._reader, 5.0)


@pytest.fixture
async def gateway_process() -> AsyncIterator[Callable[..., GatewayProcess]]:
    """``gateway_process(broker, state, udp_port=None, mode="aggregating")`` -> a GatewayProcess
    (the test starts it)."""
    processes: list[GatewayProcess] = []

    def make(
        broker: MosquittoBroker,
        state: Path,
        udp_port: int | None = None,
        mode: str = "aggregating",
    ) -> GatewayProcess:
        process = GatewayProcess(broker, state, udp_port, mode)
        processes.append(process)
        return process

    yield make
    for process in processes:
        await process.stop()

"""The QoS 2 twin of ``test_restart.py::test_broker_messages_are_acknowledged_only_once_on_disk``:
broker QoS 2 messages handed over right before ``kill -9`` reach the node, exactly once."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections import Counter
from pathlib import Path

from firmware_sim.node import SimNode
from firmware_sim.udp_link import UdpNodeLink
from tests.mosquitto import MosquittoBroker, free_port
from tests.store.conftest import REPO, GatewayProcess
from tests.store.test_restart import publish_at_broker


class ModeGatewayProcess(GatewayProcess):
    """A GatewayProcess in the given mode (``--mode``); the rest as the fixture's."""

    def __init__(self, broker: MosquittoBroker, state: Path, udp_port: int | None, mode: str):
        super().__init__(broker, state, udp_port)
        self.mode = mode

    async def start(self) -> None:
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


async def test_qos2_broker_messages_survive_kill_9_exactly_once(
    mosquitto, mode, unique_topic, tmp_path: Path
):
    """SIGKILL right after the broker handed over QoS 2 messages for a sleeper: after the
    restart every one reaches the node, none twice.

    PUBREC waits for the commit that holds the buffered message and its packet id; the broker
    sends again what got no PUBREC, and a repeat whose id is on disk is answered, not buffered
    a second time. (With PUBREC sent on receipt, as before, the messages not yet committed are
    lost: the broker considers them delivered.)
    """
    state = tmp_path / "state.sqlite"
    topic = f"{unique_topic}/cmd"
    first = ModeGatewayProcess(mosquitto, state, None, mode)
    second: ModeGatewayProcess | None = None
    try:
        await first.start()
        port = first.udp_port
        async with SimNode("sleeper2", UdpNodeLink(("127.0.0.1", port)), t_retry=1.0) as node:
            # Clean session off: in transparent mode the node's broker session outlives us.
            await node.connect(keepalive=60, clean_session=False)
            await node.subscribe(topic, qos=2)
            await node.sleep(300)
            await first.wait_line("(0 held)", 10)  # the subscription is on disk
            burst = [(f"q{i}".encode(), 2) for i in range(50)]
            await publish_at_broker(mosquitto, topic, *burst)
            await first.kill()  # no time to save: at most a few of the 50 are on disk
            await publish_at_broker(mosquitto, topic, (b"while-down", 2))

            second = ModeGatewayProcess(mosquitto, state, port, mode)
            await second.start()
            try:  # the broker redelivers what got no PUBREC; a miss shows in the assert below
                await second.wait_line("(51 held)", 10)
            except AssertionError:
                pass
            await asyncio.sleep(0.5)  # a duplicate, if any, would be buffered by now
            woken = await node.wake()
        got = Counter(m.payload for m in woken)
        expected = Counter([p for p, _ in burst] + [b"while-down"])
        assert got == expected, (
            f"missing {sorted(expected - got)}, duplicated {sorted(got - expected)}"
        )
        assert {m.qos for m in woken} == {2}
    finally:
        for process in (first, second):
            if process is not None:
                await process.stop()

"""Benchmark the state file's cost by hand: messages per CPU-second with and without it.

    python -m tests.bench.bench_store [--count 200000] [--nodes 100] [--no-uvloop]

The real GatewayRuntime (codec, core, runtime wiring, and the StateStore with its writer thread)
between an in-memory transport that feeds pre-encoded frames straight into the runtime's sink
and an upstream that counts publishes and acknowledges QoS 1/2 on the next loop turn. No
sockets and no broker, so the figures are the gateway's own CPU: ``time.process_time`` (all
threads, so the writer thread's SQLite work is included). The two gateways (in memory, with a
state file) run side by side in chunks, alternating, each chunk ending with its save; the
median chunk is reported (and the best), so other load on the machine hurts both alike.
No asserts: figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.bridge.base import Upstream, UpstreamEvents, Will
from gateway.config import parse_config
from gateway.protocol.codec import encode
from gateway.protocol.constants import QoS
from gateway.protocol.messages import Connect, Disconnect, Publish, Register, Subscribe
from gateway.runtime import GatewayRuntime
from transports.base import FrameSink, LinkEventSink, Transport, UdpAddress

PAYLOAD = b"x" * 32


class _MemoryTransport(Transport):
    """Frames in through the runtime's sink, frames out counted."""

    name = "memory"

    def __init__(self) -> None:
        self.deliver: FrameSink | None = None
        self.sent = 0

    async def start(self, deliver: FrameSink, on_event: LinkEventSink | None = None) -> None:
        self.deliver = deliver

    def send(self, address: Any, frame: bytes) -> None:
        self.sent += 1

    def broadcast(self, frame: bytes, radius: int = 0) -> None:
        pass

    def max_frame_size(self, address: Any = None) -> int:
        return 1024

    async def close(self) -> None:
        pass

    def owns(self, address: Any) -> bool:
        return True


class _AckingUpstream(Upstream):
    """Counts publishes; QoS 1/2 are acknowledged on the next loop turn, like a fast broker."""

    def __init__(self) -> None:
        self.events: UpstreamEvents | None = None
        self.published = 0

    async def start(self, events: UpstreamEvents) -> None:
        self.events = events
        events.on_connection(None, True, 0)

    async def close(self) -> None:
        pass

    def publish(self, client_id, topic, payload, qos, retain, token=None) -> None:  # type: ignore[no-untyped-def]
        self.published += 1
        if token is not None:
            assert self.events is not None
            asyncio.get_running_loop().call_soon(self.events.on_publish_done, token, True)

    def subscribe(self, client_id: str | None, topic_filter: str, qos: int) -> None:
        pass

    def unsubscribe(self, client_id: str | None, topic_filter: str) -> None:
        pass

    def open_session(self, client_id: str, clean: bool, will: Will | None, keepalive: int) -> None:
        pass

    @property
    def connected(self) -> bool:
        return True


async def _gateway(state: Path | None) -> tuple[GatewayRuntime, _MemoryTransport, _AckingUpstream]:
    table: dict[str, Any] = {"mqttsn": {"t-adv": 0, "queue-per-client": 1000}}
    if state is not None:
        table["gateway"] = {"state-file": str(state)}
    transport, upstream = _MemoryTransport(), _AckingUpstream()
    runtime = GatewayRuntime(parse_config(table), transports=[transport], upstream=upstream)
    await runtime.start()
    return runtime, transport, upstream


def _addresses(nodes: int) -> list[UdpAddress]:
    return [UdpAddress("10.0.0.1", 10_000 + i) for i in range(nodes)]


async def _connect(transport: _MemoryTransport, nodes: int) -> list[UdpAddress]:
    assert transport.deliver is not None
    addresses = _addresses(nodes)
    for i, address in enumerate(addresses):
        transport.deliver(address, encode(Connect(f"node-{i}", 600, False, True)))
        transport.deliver(address, encode(Register(0, 1, f"bench/{i}")))
    await asyncio.sleep(0.1)
    return addresses


class _Run:
    """One gateway fed in chunks; each chunk's CPU time includes saving what it changed."""

    def __init__(self, state: Path | None, qos: int, nodes: int, sleepers: bool) -> None:
        self.state, self.qos, self.nodes, self.sleepers = state, qos, nodes, sleepers
        self.fed = 0
        self.cpu: list[float] = []

    async def setup(self) -> None:
        self.runtime, self.transport, self.upstream = await _gateway(self.state)
        deliver = self.transport.deliver
        assert deliver is not None
        self.addresses = _addresses(self.nodes)
        for i, address in enumerate(self.addresses):
            deliver(address, encode(Connect(f"node-{i}", 600, False, True)))
            if self.sleepers:
                deliver(address, encode(Subscribe(1, topic_name=f"cmd/{i}", qos=QoS(1))))
                deliver(address, encode(Disconnect(3600)))
            else:
                deliver(address, encode(Register(0, 1, f"bench/{i}")))
        self.frames = [
            [
                encode(Publish(1, PAYLOAD, QoS(self.qos), n + 1 if self.qos else 0))
                for n in range(64)
            ]
            for _ in self.addresses
        ]
        await asyncio.sleep(0.1)
        if self.runtime.store is not None:
            await self.runtime.store.sync()

    async def chunk(self, count: int) -> None:
        """Feed ``count`` messages, let the loop run as it would, save; record the CPU time."""
        deliver, runtime, nodes = self.transport.deliver, self.runtime, self.nodes
        assert deliver is not None
        cpu = time.process_time()
        for n in range(self.fed, self.fed + count):
            node = n % nodes
            if self.sleepers:
                runtime.on_broker_message(None, f"cmd/{node}", PAYLOAD, 1, False)
            else:
                deliver(self.addresses[node], self.frames[node][(n // nodes) % 64])
            if n % 100 == 99:
                await asyncio.sleep(0)  # acknowledgements and saves run, as in a real loop
        self.fed += count
        if not self.sleepers:
            while self.upstream.published < self.fed:  # noqa: ASYNC110 - polled, cheap
                await asyncio.sleep(0)
        if runtime.store is not None:
            await runtime.store.sync()
        self.cpu.append(time.process_time() - cpu)


async def compare(
    directory: Path, label: str, count: int, chunk: int, nodes: int, qos: int, sleepers: bool
) -> str:
    """Both gateways side by side, chunks alternating, so a busy machine hurts both alike."""
    memory = _Run(None, qos, nodes, sleepers)
    stored = _Run(directory / f"{label}.sqlite".replace(" ", "_"), qos, nodes, sleepers)
    await memory.setup()
    await stored.setup()
    for _ in range(count // chunk):
        await memory.chunk(chunk)
        await stored.chunk(chunk)
    await memory.runtime.close()
    await stored.runtime.close()
    rate = chunk / statistics.median(memory.cpu)
    rate_state = chunk / statistics.median(stored.cpu)
    best = chunk / min(memory.cpu), chunk / min(stored.cpu)
    return (
        f"{label:<40} {rate:>10,.0f} {rate_state:>10,.0f} {100 * (1 - rate_state / rate):>6.1f}%"
        f"   best {best[0]:>9,.0f} {best[1]:>9,.0f} {100 * (1 - best[1] / best[0]):>6.1f}%"
    )


async def main_async(count: int, nodes: int) -> None:
    """Every scenario without and with a state file: median msgs per CPU-second of the chunks."""
    directory = Path(tempfile.mkdtemp(prefix="bench-store-"))
    print(f"{'scenario':<40} {'memory':>10} {'state':>10} {'cost':>7}   (msgs per CPU-second)")
    print(await compare(directory, f"QoS 0 uplink, {nodes} nodes", count, 5000, nodes, 0, False))
    print(
        await compare(directory, f"QoS 1 uplink, {nodes} nodes", count // 4, 2500, nodes, 1, False)
    )
    print(
        await compare(
            directory, f"QoS 1 buffered for {nodes} sleepers", count // 20, 500, nodes, 1, True
        )
    )


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args()
    if args.no_uvloop:
        asyncio.run(main_async(args.count, args.nodes))
    else:
        import uvloop

        uvloop.run(main_async(args.count, args.nodes))


if __name__ == "__main__":
    main()

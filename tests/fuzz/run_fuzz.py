"""Flood a running gateway with random and mutated datagrams while a well-behaved node publishes.

The gateway under test is the real thing in a subprocess (``python -m gateway run``, state in
memory, small session limits from a config file) against a real Mosquitto. A second process
(the flooder) sends ``count`` datagrams from ``sources`` UDP sockets: 50 % mutated valid frames,
30 % valid frames of random types (CONNECTs with recurring random ClientIds create real
sessions), 20 % noise (see ``tests.fuzz.mutations``; valid frames come from a rolling pool of
4096 of which 10 % of draws are freshly generated, every mutation and all noise is new). It paces itself on the gateway socket's
receive queue as ``/proc/net/udp`` shows it, so the kernel delivers (nearly) everything to the
gateway instead of dropping it; the same file gives the socket's drop counter, so we know how
many datagrams the gateway really read. Meanwhile a SimNode publishes QoS 1 every 100 ms and an
MQTT subscriber checks every message arrives, during the flood and after it. VmRSS is sampled at
25/50/75/100 % of the flood and after it; the gateway's stderr must hold no traceback.

The pytest suite runs one million datagrams (``tests/fuzz/test_gateway_fuzz.py``); by hand::

    python -m tests.fuzz.run_fuzz --count 10000000 --seed 7            # own Mosquitto
    python -m tests.fuzz.run_fuzz --count 2000000 --mode transparent --broker mqtt://127.0.0.1:1883
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from firmware_sim.node import ConnectRefused, SimNode
from firmware_sim.udp_link import UdpNodeLink
from gateway.protocol import ReturnCode
from tests.bench.gateway_proc import GatewayProcess
from tests.fuzz.mutations import FrameFactory

__all__ = ["FuzzGateway", "FuzzReport", "fuzz_gateway", "udp_socket_stats"]

#: Gateway limits for the run: sessions are bounded by max-clients, buffers by the queue bounds.
FUZZ_CONFIG = """
[mqttsn]
t-adv = 0
t-retry = 1.0
n-retry = 2
max-clients = {max_clients}
queue-per-client = 20
queue-total = 5000
session-expiry = 20
max-topics-per-client = 50
max-subscriptions-per-client = 20
"""

_BURST = 200  # datagrams sent between two looks at the gateway's receive queue
_QUEUE_LIMIT = 256 * 1024  # bytes queued at the gateway socket before the flooder waits
_NODE_PERIOD = 0.1  # seconds between two publishes of the well-behaved node


# ------------------------------------------------------------------------------ gateway


def udp_socket_stats(port: int, host: str = "127.0.0.1") -> tuple[int, int] | None:
    """(rx_queue bytes, drops) of the IPv4 UDP socket bound to host:port, from /proc/net/udp."""
    octets = host.split(".")
    local = "".join(f"{int(o):02X}" for o in reversed(octets)) + f":{port:04X}"
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[1] == local:
                return int(parts[4].split(":")[1], 16), int(parts[-1])
    return None


class FuzzGateway(GatewayProcess):
    """The bench's gateway subprocess, plus ``--config`` with the fuzz run's limits."""

    def __init__(
        self,
        broker_url: str,
        mode: str = "aggregating",
        max_clients: int = 500,
        source: Path | None = None,
    ) -> None:
        super().__init__(broker_url, mode=mode, log_level="WARNING", source=source, state="memory")
        self.config_path = Path(tempfile.mkdtemp(prefix="fuzz-gateway-")) / "gateway.toml"
        self.config_path.write_text(FUZZ_CONFIG.format(max_clients=max_clients))

    @property
    def command(self) -> list[str]:
        """The bench command line with ``--config``."""
        return [*super().command, "--config", str(self.config_path)]

    def log_text(self) -> str:
        """Everything the gateway wrote to stdout and stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


# ------------------------------------------------------------------------------ flooder


def _flood(
    port: int,
    count: int,
    seed: int,
    sources: int,
    progress: Any,
    results: Any,
) -> None:
    """Child process: send ``count`` datagrams to 127.0.0.1:port, paced on its receive queue."""
    factory = FrameFactory(seed)
    rng = factory.rng
    socks = []
    for _ in range(sources):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        socks.append(sock)
    target = ("127.0.0.1", port)
    sent = send_errors = waits = replies = 0
    connack: dict[int, int] = {}
    reply_types: dict[int, int] = {}
    datagram = factory.datagram
    started = time.perf_counter()
    while sent < count:
        for _ in range(min(_BURST, count - sent)):
            try:
                rng.choice(socks).sendto(datagram(), target)
            except OSError:  # EMSGSIZE for the odd >64 KiB datagram, ENOBUFS under pressure
                send_errors += 1
            sent += 1
        progress.value = sent
        if sent % (_BURST * 25) == 0:
            for sock in socks:  # drain the gateway's answers; count them by MsgType
                while True:
                    try:
                        reply = sock.recv(2048)
                    except (BlockingIOError, ConnectionRefusedError):
                        break
                    replies += 1
                    kind = reply[1] if len(reply) > 1 and reply[0] != 1 else -1
                    reply_types[kind] = reply_types.get(kind, 0) + 1
                    if kind == 0x05 and len(reply) == 3:
                        connack[reply[2]] = connack.get(reply[2], 0) + 1
        # Pace: let the gateway drain its socket below the limit before the next burst.
        while (stats := udp_socket_stats(port)) is not None and stats[0] > _QUEUE_LIMIT:
            waits += 1
            time.sleep(0.0005)
    elapsed = time.perf_counter() - started
    for sock in socks:
        sock.close()
    results.put(
        {
            "sent": sent,
            "send_errors": send_errors,
            "seconds": elapsed,
            "waits": waits,
            "replies": replies,
            "reply_types": reply_types,
            "connack": connack,
        }
    )


# ------------------------------------------------------------------------------ the run


@dataclass
class FuzzReport:
    """What one run measured."""

    count: int
    seed: int
    sent: int = 0
    send_errors: int = 0
    flood_seconds: float = 0.0
    kernel_drops: int = 0  # datagrams the kernel dropped at the gateway socket (queue full)
    gateway_cpu_s: float = 0.0  # CPU the gateway used during the flood
    replies: int = 0  # datagrams the gateway sent back to the flood's sources (drained part)
    reply_types: dict[int, int] = field(default_factory=dict)
    connack: dict[int, int] = field(default_factory=dict)  # return code -> count
    rss_kb: dict[str, int] = field(default_factory=dict)  # start, 25, 50, 75, 100, after
    peak_rss_kb: int = 0
    alive: bool = False
    tracebacks: int = 0
    log_tail: str = ""
    node_published: dict[str, int] = field(default_factory=dict)  # phase -> acked publishes
    node_received: dict[str, int] = field(default_factory=dict)  # phase -> at the subscriber
    node_max_ack_s: float = 0.0
    node_errors: list[str] = field(default_factory=list)  # publishes not acknowledged
    fresh_node: str = ""  # how a node connecting after the flood was answered

    @property
    def rate(self) -> float:
        """Datagrams per second the flood sustained."""
        return self.sent / self.flood_seconds if self.flood_seconds else 0.0

    def summary(self) -> str:
        """The figures, one per line."""
        rss = ", ".join(f"{k} {v / 1024:.1f}" for k, v in self.rss_kb.items())
        types = {f"{k:#04x}": v for k, v in sorted(self.reply_types.items())}
        received = self.sent - self.kernel_drops
        return "\n".join(
            [
                f"datagrams sent    {self.sent} (seed {self.seed}, send errors {self.send_errors})",
                f"flood             {self.flood_seconds:.1f} s, {self.rate:,.0f} datagrams/s",
                f"kernel drops      {self.kernel_drops} at the gateway socket "
                f"({received} read by the gateway)",
                f"gateway CPU       {self.gateway_cpu_s:.1f} s "
                f"({self.gateway_cpu_s / max(self.flood_seconds, 1e-9):.0%} of the flood's time)",
                f"gateway replies   {self.replies} drained {types}",
                f"CONNACK codes     {dict(sorted(self.connack.items()))}",
                f"VmRSS MiB         {rss}; peak {self.peak_rss_kb / 1024:.1f}",
                f"node published    {self.node_published} acked; received {self.node_received}",
                f"node worst ack    {self.node_max_ack_s * 1000:.0f} ms; errors {self.node_errors[:5]}",
                f"fresh node        {self.fresh_node}",
                f"gateway alive     {self.alive}; tracebacks in its log: {self.tracebacks}",
            ]
        )


class _Node:
    """The well-behaved node: QoS 1 every 100 ms, each payload naming its phase and number."""

    def __init__(self, port: int, topic: str) -> None:
        self.node = SimNode(
            f"fuzz-survivor-{os.getpid()}",
            UdpNodeLink(("127.0.0.1", port)),
            t_retry=1.0,
            n_retry=8,
        )
        self.topic = topic
        self.phase = "before"
        self.published: dict[str, int] = {}
        self.max_ack = 0.0
        self.errors: list[str] = []

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        n = 0
        while not stop.is_set():
            phase = self.phase
            began = loop.time()
            try:
                await self.node.publish(self.topic, f"{phase}:{n}".encode(), qos=1)
            except Exception as exc:  # reported, never hidden
                self.errors.append(f"{phase}:{n}: {exc!r}")
            else:
                self.published[phase] = self.published.get(phase, 0) + 1
                self.max_ack = max(self.max_ack, loop.time() - began)
            n += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, began + _NODE_PERIOD - loop.time()))


async def _subscriber(host: str, port: int, topic: str, seen: dict[str, set[str]]) -> None:
    async with aiomqtt.Client(host, port, identifier=f"fuzz-observer-{os.getpid()}") as client:
        await client.subscribe(topic, qos=1)
        seen["ready"] = set()
        async for message in client.messages:
            phase, _, number = bytes(message.payload).decode().partition(":")  # type: ignore[arg-type]
            seen.setdefault(phase, set()).add(number)


async def fuzz_gateway(
    broker_host: str,
    broker_port: int,
    count: int,
    seed: int,
    *,
    sources: int = 64,
    mode: str = "aggregating",
    max_clients: int = 500,
    topic: str | None = None,
    source: Path | None = None,
) -> FuzzReport:
    """Run the flood against a fresh gateway subprocess; return what was measured."""
    report = FuzzReport(count, seed)
    topic = topic or f"fuzz/survivor/{os.getpid()}/{seed}"
    gateway = FuzzGateway(f"mqtt://{broker_host}:{broker_port}", mode, max_clients, source)
    await asyncio.to_thread(gateway.start)
    seen: dict[str, set[str]] = {}
    sub_task = asyncio.create_task(_subscriber(broker_host, broker_port, topic, seen))
    stop = asyncio.Event()
    node = _Node(gateway.port, topic)
    node_task: asyncio.Task[None] | None = None
    loop = asyncio.get_running_loop()
    try:
        while "ready" not in seen:
            if sub_task.done():
                sub_task.result()
            await asyncio.sleep(0.02)
        async with node.node:
            await node.node.connect(keepalive=30)
            node_task = asyncio.create_task(node.run(stop))
            await asyncio.sleep(0.5)
            drops0 = (udp_socket_stats(gateway.port) or (0, 0))[1]
            cpu0 = gateway.cpu_s()
            report.rss_kb["start"] = gateway.mem_kb()["VmRSS"]
            node.phase = "during"

            ctx = multiprocessing.get_context("spawn")
            progress = ctx.Value("q", 0)
            results = ctx.Queue()
            flooder = ctx.Process(
                target=_flood,
                args=(gateway.port, count, seed, sources, progress, results),
                name="fuzz-flooder",
            )
            flooder.start()
            marks = [25, 50, 75]
            while flooder.is_alive() or marks:
                done = progress.value * 100 // max(count, 1)
                while marks and done >= marks[0]:
                    report.rss_kb[str(marks.pop(0))] = gateway.mem_kb()["VmRSS"]
                if not flooder.is_alive():
                    break
                await asyncio.sleep(0.05)
            flood = await loop.run_in_executor(None, results.get, True, 30)
            await loop.run_in_executor(None, flooder.join, 10)
            report.rss_kb["100"] = gateway.mem_kb()["VmRSS"]
            report.gateway_cpu_s = gateway.cpu_s() - cpu0
            report.kernel_drops = (udp_socket_stats(gateway.port) or (0, drops0))[1] - drops0
            for key in ("sent", "send_errors", "replies", "reply_types", "connack"):
                setattr(report, key, flood[key])
            report.flood_seconds = flood["seconds"]

            node.phase = "after"
            await asyncio.sleep(1.5)
            stop.set()
            await node_task
            report.fresh_node = await _fresh_node(gateway.port)
            await asyncio.sleep(0.5)
        report.rss_kb["after"] = gateway.mem_kb()["VmRSS"]
        report.peak_rss_kb = gateway.mem_kb()["VmHWM"]
        deadline = loop.time() + 5  # the subscriber may lag a little behind the last PUBACK
        while any(len(seen.get(p, ())) < n for p, n in node.published.items()):
            if loop.time() > deadline:
                break  # what is missing shows in the report
            await asyncio.sleep(0.05)
        report.node_published = dict(node.published)
        report.node_received = {p: len(v) for p, v in seen.items() if p != "ready"}
        report.node_max_ack_s = node.max_ack
        report.node_errors = node.errors
        report.alive = gateway.alive()
    finally:
        stop.set()
        if node_task is not None and not node_task.done():
            node_task.cancel()
        sub_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await sub_task
        await asyncio.to_thread(gateway.stop)
        log = gateway.log_text()
        report.tracebacks = log.count("Traceback")
        report.log_tail = log[-3000:]
    return report


async def _fresh_node(port: int) -> str:
    """Connect a new node after the flood: ACCEPTED, or a clear refusal when sessions are full."""
    async with SimNode(f"fuzz-late-{os.getpid()}", UdpNodeLink(("127.0.0.1", port))) as node:
        try:
            await node.connect(keepalive=30)
        except ConnectRefused as exc:
            return f"refused: {exc}"
        try:
            await node.publish("fuzz/late", b"late", qos=1)
        except Exception as exc:  # reported by the caller's checks
            return f"connected, then failed: {exc!r}"
        return ReturnCode.ACCEPTED.name


# ------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.fuzz.run_fuzz --count N --seed S``: run and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="datagrams to send")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random datagrams")
    parser.add_argument("--sources", type=int, default=64, help="UDP source sockets")
    parser.add_argument("--mode", choices=("aggregating", "transparent"), default="aggregating")
    parser.add_argument("--max-clients", type=int, default=500)
    parser.add_argument("--broker", help="mqtt://host:port (default: start a private Mosquitto)")
    parser.add_argument("--source", type=Path, help="run the gateway from this source tree")
    args = parser.parse_args(argv)
    broker = None
    if args.broker:
        host, _, port = args.broker.removeprefix("mqtt://").rpartition(":")
        host, port_n = host or "127.0.0.1", int(port or 1883)
    else:
        from tests.mosquitto import MosquittoBroker

        broker = MosquittoBroker()
        broker.start()
        host, port_n = broker.host, broker.port
    try:
        report = asyncio.run(
            fuzz_gateway(
                host,
                port_n,
                args.count,
                args.seed,
                sources=args.sources,
                mode=args.mode,
                max_clients=args.max_clients,
                source=args.source,
            )
        )
    finally:
        if broker is not None:
            broker.stop()
    print(report.summary())
    if report.tracebacks or not report.alive:
        print(report.log_tail, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

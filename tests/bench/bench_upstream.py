"""Benchmark the broker bridge by hand: publish rate per CPU-second, and 1,000 transparent sessions.

    python -m tests.bench.bench_upstream [--count 100000] [--sessions 1000] [--no-uvloop]

Against a private Mosquitto (started here). Compares our MQTT 5 path (own asyncio.Protocol on
the ``mqtt5`` codec) with the MQTT 3.1.1 library path (paho-mqtt on the event loop).
Rates are messages per CPU-second of this process (``time.process_time``, all threads), from the
first publish until the broker acknowledged a final QoS 1 "fence" publish (the broker handles a
connection's packets in order, so every earlier publish has been processed by then).
No asserts: figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.bridge import AggregatingUpstream, TransparentUpstream, parse_broker_url
from tests.mosquitto import MosquittoBroker

PAYLOAD = b"x" * 32
FENCE = -1


class _Events:
    """UpstreamEvents that counts."""

    def __init__(self) -> None:
        self.acked = 0
        self.failed = 0
        self.fence = asyncio.Event()
        self.up: set[str | None] = set()
        self.all_up = asyncio.Event()
        self.expected_up = 1

    def on_broker_message(self, *args: object) -> None:
        pass

    def on_publish_done(self, token: int, ok: bool) -> None:
        if token == FENCE:
            self.fence.set()
        elif ok:
            self.acked += 1
        else:
            self.failed += 1

    def on_connection(self, client_id: str | None, connected: bool, return_code: int) -> None:
        if connected:
            self.up.add(client_id)
            if len(self.up) >= self.expected_up:
                self.all_up.set()


@dataclass
class Result:
    label: str
    count: int
    cpu: float
    wall: float
    note: str = ""

    def row(self) -> str:
        return (
            f"{self.label:<34} {self.count:>8} {self.count / self.cpu:>12,.0f} "
            f"{self.count / self.wall:>12,.0f}  {self.note}"
        )


async def bench_publish(
    broker: MosquittoBroker, protocol: str, qos: int, count: int, node: str | None
) -> Result:
    """``count`` publishes of 32 bytes at ``qos`` through an AggregatingUpstream."""
    settings = parse_broker_url(broker.url, protocol=protocol, outbox_limit=count + 10)
    events = _Events()
    upstream = AggregatingUpstream(settings, gateway_id=f"bench-{protocol}", status_topic=None)
    await upstream.start(events)
    connection = upstream.connection
    assert connection is not None and connection.connected
    topic = "bench/sensor/temperature"
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(count):
        upstream.publish(node, topic, PAYLOAD, qos, False, i if qos else None)
        if qos == 0 and i % 1000 == 999:
            await connection.drain()
    upstream.publish(node, topic, b"fence", 1, False, FENCE)
    await events.fence.wait()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    stats = connection.stats
    await upstream.close()
    label = f"MQTT {protocol} QoS {qos}" + (" +client-id property" if node else "")
    note = f"acked={events.acked} dropped_qos0={stats.dropped_qos0} failed={events.failed}"
    return Result(label, count, cpu, wall, note)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def bench_sessions(broker: MosquittoBroker, protocol: str, sessions: int) -> Result:
    """Open ``sessions`` transparent sessions (each its own TCP connection) and close them."""
    events = _Events()
    events.expected_up = sessions
    upstream = TransparentUpstream(
        parse_broker_url(broker.url, protocol=protocol), status_topic=None
    )
    await upstream.start(events)
    fds0 = _fds()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(sessions):
        upstream.open_session(f"bench-{protocol}-{i:05d}", True, None, 60)
    await events.all_up.wait()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    fds = _fds() - fds0
    t_close = time.perf_counter()
    await upstream.close()
    closing = time.perf_counter() - t_close
    note = f"connect wall {wall:.2f}s cpu {cpu:.2f}s; +{fds} fds open; close {closing:.2f}s"
    return Result(f"MQTT {protocol} {sessions} sessions", sessions, cpu, wall, note)


async def main_async(args: argparse.Namespace) -> None:
    broker = MosquittoBroker()
    broker.start()
    try:
        print(f"loop: {type(asyncio.get_running_loop()).__module__}; broker {broker.url}")
        print(f"{'':<34} {'messages':>8} {'per CPU-s':>12} {'per wall-s':>12}")
        runs: list[Callable[[], object]] = []
        for protocol in ("5", "3.1.1"):
            for qos in (0, 1):
                runs.append(lambda p=protocol, q=qos: bench_publish(broker, p, q, args.count, None))
        for qos in (0, 1):
            runs.append(lambda q=qos: bench_publish(broker, "5", q, args.count, "node-0042"))
        for protocol in ("5", "3.1.1"):
            runs.append(lambda p=protocol: bench_sessions(broker, p, args.sessions))
        for run in runs:
            result = await run()  # type: ignore[misc]
            print(result.row(), flush=True)
    finally:
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--sessions", type=int, default=1_000)
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * args.sessions + 256)), hard)
    )
    if args.no_uvloop:
        asyncio.run(main_async(args))
    else:
        import uvloop

        uvloop.run(main_async(args))


if __name__ == "__main__":
    main()

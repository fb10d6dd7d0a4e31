"""A fleet of simulated sensor nodes against one gateway, and the ``mqttsn-sim`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from firmware_sim.battery import Battery, BatteryProfile
from firmware_sim.client import N_RETRY, T_RETRY, T_SEARCHGW
from firmware_sim.link import NodeLink
from firmware_sim.node import SimNode, SimNodeError
from firmware_sim.udp_link import UdpNodeLink
from gateway.errors import GatewayError, LocalProtocolError
from gateway.protocol.constants import TopicIdType

__all__ = ["Fleet", "FleetSummary", "main", "parse_host_port"]

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FleetSummary:
    """Totals over every node of a fleet run."""

    nodes: int
    published: int
    acked: int
    failed: int
    received: int
    retransmitted: int
    lost: int
    errors: int
    battery_min: float | None
    battery_mean: float | None
    battery_used_mah: float = 0.0

    def __str__(self) -> str:
        battery = (
            f"battery min {self.battery_min:.4f}% mean {self.battery_mean:.4f}%"
            f" ({self.battery_used_mah:.4f} mAh used in all)"
            if self.battery_min is not None and self.battery_mean is not None
            else "battery n/a"
        )
        return (
            f"{self.nodes} nodes: published {self.published}, acked {self.acked}, "
            f"failed {self.failed}, received {self.received}, retransmitted "
            f"{self.retransmitted}, lost {self.lost}, node errors {self.errors}; {battery}"
        )


class Fleet:
    """N ``SimNode``s named ``{prefix}{i}`` publishing periodically for ``duration`` seconds."""

    def __init__(
        self,
        gateway: tuple[str, int],
        nodes: int,
        *,
        prefix: str = "sim-",
        topic: str = "sensors/{client_id}/temp",
        interval: float = 10.0,
        qos: int = 0,
        sleep: float | None = None,
        duration: float = 60.0,
        search: bool = False,
        keepalive: int = 60,
        subscribe: str | None = None,
        predefined: Mapping[int, str] | None = None,
        battery: BatteryProfile | None = None,
        multicast: tuple[str, int] | None = None,
        t_retry: float = T_RETRY,
        n_retry: int = N_RETRY,
        link_factory: Callable[[str], NodeLink] | None = None,
    ) -> None:
        if nodes < 1:
            raise ValueError(f"nodes must be >= 1, got {nodes}")
        self.gateway = gateway
        self.prefix = prefix
        self.topic = topic
        self.interval = interval
        self.qos = qos
        self.sleep = sleep
        self.duration = duration
        self.search = search
        self.keepalive = keepalive
        self.subscribe = subscribe
        self.errors: dict[str, str] = {}
        group, port = multicast if multicast else (None, None)
        make_link = link_factory or (
            lambda _cid: UdpNodeLink(gateway, multicast_group=group, multicast_port=port)
        )
        self.nodes = [
            SimNode(
                f"{prefix}{i}",
                make_link(f"{prefix}{i}"),
                predefined=predefined,
                battery=Battery(battery) if battery else None,
                t_retry=t_retry,
                n_retry=n_retry,
            )
            for i in range(nodes)
        ]

    def __repr__(self) -> str:
        return (
            f"<Fleet {len(self.nodes)} nodes gateway={self.gateway[0]}:{self.gateway[1]} "
            f"interval={self.interval} qos={self.qos} errors={len(self.errors)}>"
        )

    async def run(self) -> FleetSummary:
        """Run every node for ``duration`` seconds; the totals."""
        async with asyncio.TaskGroup() as group:
            for i, node in enumerate(self.nodes):
                # Spread the nodes over one interval so they do not all transmit at once.
                start = self.interval * i / len(self.nodes)
                group.create_task(self._run_node(node, start), name=f"fleet[{node.client_id}]")
        return self.summary()

    def summary(self) -> FleetSummary:
        """Totals so far."""
        counters = [node.counters for node in self.nodes]
        batteries = [node.battery for node in self.nodes if node.battery is not None]
        levels = [battery.level for battery in batteries]
        return FleetSummary(
            nodes=len(self.nodes),
            published=sum(c.published for c in counters),
            acked=sum(c.acked for c in counters),
            failed=sum(c.failed for c in counters),
            received=sum(c.delivered for c in counters),
            retransmitted=sum(c.retransmitted for c in counters),
            lost=sum(c.lost for c in counters),
            errors=len(self.errors),
            battery_min=min(levels) if levels else None,
            battery_mean=statistics.fmean(levels) if levels else None,
            battery_used_mah=sum(battery.consumed_mah for battery in batteries),
        )

    async def _run_node(self, node: SimNode, start: float) -> None:
        topic: str | int = self.topic.format(client_id=node.client_id)
        if isinstance(topic, str) and topic.isdigit():
            topic = int(topic)  # a predefined topic id
        try:
            async with node:
                deadline = asyncio.timeout(self.duration)
                try:
                    async with deadline:
                        await self._work(node, topic, start)
                except TimeoutError:
                    if not deadline.expired():
                        raise
                # Duration over: leaving the context sends DISCONNECT.
        except (GatewayError, OSError) as exc:
            self.errors[node.client_id] = str(exc)
            _LOGGER.warning("%s stopped: %s", node.client_id, exc)

    async def _work(self, node: SimNode, topic: str | int, start: float) -> None:
        await asyncio.sleep(start)
        if self.search:
            delay = random.uniform(0.0, min(T_SEARCHGW, self.interval))
            gw_id = await node.search_gateway(timeout=self.duration, delay=delay)
            _LOGGER.info("%s: found gateway %d", node.client_id, gw_id)
        if self.qos >= 0:
            await node.connect(self.keepalive)
        if self.subscribe:
            await node.subscribe(self.subscribe.format(client_id=node.client_id), 1)
        # QoS -1 carries only predefined ids or short names [§6.8].
        short = self.qos == -1 and isinstance(topic, str) and len(topic) == 2
        await node.run_periodic(
            topic,
            self.interval,
            self.qos,
            None,
            self.sleep,
            topic_id_type=TopicIdType.SHORT_NAME if short else None,
        )


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6ADDR]:PORT`` to (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _predefined(text: str) -> tuple[int, str]:
    topic_id, sep, name = text.partition("=")
    if not sep or not topic_id.isdigit() or not name:
        raise argparse.ArgumentTypeError(f"expected ID=TOPIC, got {text!r}")
    return int(topic_id), name


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mqttsn-sim",
        description="Run simulated MQTT-SN 1.2 sensor nodes over UDP against a gateway.",
    )
    add = parser.add_argument
    add(
        "--gateway",
        type=parse_host_port,
        default=("127.0.0.1", 1884),
        metavar="HOST:PORT",
        help="UDP address of the gateway (IPv6 as [ADDR]:PORT; default 127.0.0.1:1884)",
    )
    add(
        "--nodes",
        type=int,
        default=3,
        metavar="N",
        help="number of nodes, with client ids PREFIX0..PREFIX{N-1} (default 3)",
    )
    add("--prefix", default="sim-", help="client id prefix (default 'sim-')")
    add(
        "--interval",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds between two publishes of one node (default 10)",
    )
    add(
        "--qos",
        type=int,
        choices=(-1, 0, 1, 2),
        default=0,
        help="QoS of the publishes; -1 needs a predefined id or 2-character topic (default 0)",
    )
    add(
        "--topic",
        default="sensors/{client_id}/temp",
        metavar="TEMPLATE",
        help="topic per node; {client_id} is replaced; a number means a predefined topic id"
        " (default 'sensors/{client_id}/temp')",
    )
    add(
        "--sleep",
        type=float,
        default=None,
        metavar="S",
        help="sleep between publishes, announcing S seconds in DISCONNECT (S >= --interval);"
        " the node reconnects to publish. Default: stay connected",
    )
    add(
        "--duration",
        type=float,
        default=60.0,
        metavar="S",
        help="total run time in seconds, then print the summary (default 60)",
    )
    add(
        "--search", action="store_true", help="discover the gateway with SEARCHGW before connecting"
    )
    add(
        "--multicast",
        type=parse_host_port,
        default=None,
        metavar="GROUP:PORT",
        help="multicast group for SEARCHGW/ADVERTISE (default: SEARCHGW goes to --gateway)",
    )
    add("--keepalive", type=int, default=60, metavar="S", help="CONNECT keep-alive (default 60)")
    add(
        "--subscribe",
        default=None,
        metavar="TEMPLATE",
        help="also subscribe each node at QoS 1 to this filter ({client_id} is replaced)",
    )
    add(
        "--predefined",
        type=_predefined,
        action="append",
        default=[],
        metavar="ID=TOPIC",
        help="a predefined topic id known to the gateway (repeatable)",
    )
    add(
        "--battery-mah",
        type=float,
        default=2400.0,
        metavar="MAH",
        help="battery capacity of each node; a node stops when it is empty (default 2400)",
    )
    add(
        "--log-level",
        default="WARNING",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="logging level (default WARNING)",
    )
    return parser


async def _run(fleet: Fleet) -> FleetSummary:
    try:
        return await fleet.run()
    finally:
        print(fleet.summary())


def main(argv: Sequence[str] | None = None) -> int:
    """The ``mqttsn-sim`` console entry."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.sleep is not None and args.sleep < args.interval:
        parser.error("--sleep must be >= --interval (the gateway would count the node lost)")
    if args.nodes < 1:
        parser.error("--nodes must be >= 1")
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    fleet = Fleet(
        args.gateway,
        args.nodes,
        prefix=args.prefix,
        topic=args.topic,
        interval=args.interval,
        qos=args.qos,
        sleep=args.sleep,
        duration=args.duration,
        search=args.search,
        keepalive=args.keepalive,
        subscribe=args.subscribe,
        predefined=dict(args.predefined),
        battery=BatteryProfile(capacity_mah=args.battery_mah),
        multicast=args.multicast,
    )
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            summary = runner.run(_run(fleet))
    except KeyboardInterrupt:
        return 130
    except (SimNodeError, LocalProtocolError) as exc:
        print(f"mqttsn-sim: {exc}", file=sys.stderr)
        return 1
    return 0 if summary.errors == 0 else 1

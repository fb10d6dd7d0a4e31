"""One gateway, three media at once: UDP, XBee (simulated Zigbee on a pty) and a serial line."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tomllib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiomqtt
import pytest

from firmware_sim.node import SimNode
from firmware_sim.radios.xbee_network import XBeeNetwork
from firmware_sim.serial_link import PtyPair, SerialNodeLink
from firmware_sim.udp_link import UdpNodeLink
from gateway.config import parse_config
from gateway.runtime import GatewayRuntime
from tests.integration.conftest import wait_for
from tests.mosquitto import MosquittoBroker, free_port
from transports.base import UdpAddress
from transports.serial import SerialAddress, SerialTransport
from transports.udp import UdpTransport
from transports.xbee import XBeeAddress, XBeeTransport

XBEE_NODE = 0x0013A200_42000000  # + n


@dataclass
class Media:
    """A running gateway and the far ends of its three media."""

    gateway: GatewayRuntime
    udp_port: int
    network: XBeeNetwork
    line: PtyPair
    framing: str

    def udp_node(self, client_id: str) -> SimNode:
        return SimNode(client_id, UdpNodeLink(("127.0.0.1", self.udp_port)), t_retry=1.0)

    def xbee_node(self, client_id: str, n: int) -> SimNode:
        return SimNode(client_id, self.network.add_node(XBEE_NODE + n), t_retry=1.0)

    def serial_node(self, client_id: str) -> SimNode:
        link = SerialNodeLink(self.line.master, framing=self.framing)  # type: ignore[arg-type]
        return SimNode(client_id, link, t_retry=1.0)


@pytest.fixture
def topic() -> str:
    """A short unique topic prefix: REGISTER must fit the XBee radio's 84-byte NP."""
    return f"mt/{uuid.uuid4().hex[:10]}"


@contextlib.asynccontextmanager
async def three_media(
    broker: MosquittoBroker, mode: str = "aggregating", *, from_toml: bool
) -> AsyncIterator[Media]:
    """A gateway on UDP + XBee + serial: injected transports, or built from a TOML document."""
    port = free_port(socket.SOCK_DGRAM)
    async with XBeeNetwork(seed=5) as network:
        with PtyPair() as line:
            settings: dict[str, Any] = {"t-adv": 0, "t-retry": 1.0}
            if from_toml:
                document = f"""
                    [gateway]
                    mode = "{mode}"

                    [mqttsn]
                    t-adv = 0
                    t-retry = 1.0

                    [transports.udp]
                    type = "udp"
                    bind = "127.0.0.1:{port}"

                    [transports.xbee]
                    type = "xbee"
                    port = "{network.port}"
                    tx-timeout = 1.0

                    [transports.serial]
                    type = "serial"
                    port = "{line.path}"
                    framing = "slip"
                """
                config = parse_config(tomllib.loads(document), broker=broker.url)
                runtime = GatewayRuntime(config)  # the registry builds the transports
                framing = "slip"
            else:
                config = parse_config({"mqttsn": settings}, broker=broker.url, mode=mode)
                transports = [
                    UdpTransport("127.0.0.1", port),
                    XBeeTransport(network.port, tx_timeout=1.0),
                    SerialTransport(line.path, framing="plain"),
                ]
                runtime = GatewayRuntime(config, transports=transports)
                framing = "plain"
            async with runtime as gateway:
                await wait_for(lambda: gateway.upstream.connected, 10, "the broker connection")
                yield Media(gateway, port, network, line, framing)


async def nodes_on_each_medium_at_once(media: Media, broker: MosquittoBroker, topic: str) -> None:
    """Three nodes, one per medium, subscribe and publish at the same time."""
    nodes = [
        media.udp_node("mt-udp"),
        media.xbee_node("mt-xbee", 1),
        media.serial_node("mt-serial"),
    ]
    async with contextlib.AsyncExitStack() as stack:
        for node in nodes:
            await stack.enter_async_context(node)

        async def run(node: SimNode) -> None:
            await node.connect()
            await node.subscribe(f"{topic}/all", qos=1)
            for i in range(3):
                await node.publish(f"{topic}/up/{node.client_id}", f"{i}".encode(), qos=1)

        await asyncio.wait_for(asyncio.gather(*(run(node) for node in nodes)), 20)
        async with aiomqtt.Client(broker.host, broker.port) as client:
            await client.publish(f"{topic}/all", b"to everyone", qos=1)
        for node in nodes:
            received = await asyncio.wait_for(anext(node.messages()), 5)
            assert (node.client_id, received.payload) == (node.client_id, b"to everyone")
        sessions = media.gateway.core.sessions
        assert isinstance(sessions["mt-udp"].address, UdpAddress)
        assert sessions["mt-xbee"].address == XBeeAddress(XBEE_NODE + 1)
        assert sessions["mt-serial"].address == SerialAddress(media.line.path)


async def test_udp_xbee_and_serial_nodes_at_once(mosquitto, observe, mode, topic):
    """Injected UDP, XBee and serial transports serve a node each, concurrently, in one gateway."""
    observer = await observe(mosquitto, f"{topic}/up/#")
    async with three_media(mosquitto, mode, from_toml=False) as media:
        await nodes_on_each_medium_at_once(media, mosquitto, topic)
    for client_id in ("mt-udp", "mt-xbee", "mt-serial"):
        assert await observer.wait_count(f"{topic}/up/{client_id}", 3) == [b"0", b"1", b"2"]


async def test_three_transports_from_a_toml_config(mosquitto, observe, topic):
    """[transports.udp], [transports.xbee] and [transports.serial] in TOML go through the registry."""
    observer = await observe(mosquitto, f"{topic}/up/#")
    async with three_media(mosquitto, from_toml=True) as media:
        kinds = {t.name: type(t) for t in media.gateway.transports}
        assert kinds == {"udp": UdpTransport, "xbee": XBeeTransport, "serial": SerialTransport}
        serial = kinds["serial"]
        assert [t.framing for t in media.gateway.transports if isinstance(t, serial)] == ["slip"]
        await nodes_on_each_medium_at_once(media, mosquitto, topic)
    for client_id in ("mt-udp", "mt-xbee", "mt-serial"):
        assert await observer.wait_count(f"{topic}/up/{client_id}", 3) == [b"0", b"1", b"2"]


async def test_session_moves_from_udp_to_xbee(mosquitto, mode, topic):
    """A persistent session made over UDP follows its ClientId when the node reconnects over XBee."""
    async with three_media(mosquitto, mode, from_toml=False) as media:
        sessions = media.gateway.core.sessions
        async with media.udp_node("mt-mover") as node:
            await node.connect(clean_session=False)
            await node.subscribe(f"{topic}/cmd/+", qos=1)
            assert isinstance(sessions["mt-mover"].address, UdpAddress)
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
            await client.publish(f"{topic}/cmd/away", b"while away", qos=1)
            async with media.xbee_node("mt-mover", 2) as node:
                await node.connect(clean_session=False)
                assert sessions["mt-mover"].address == XBeeAddress(XBEE_NODE + 2)
                await client.publish(f"{topic}/cmd/here", b"over xbee", qos=1)
                messages = node.messages()
                got = [await asyncio.wait_for(anext(messages), 5) for _ in range(2)]
        assert [(m.topic_name, m.payload) for m in got] == [
            (f"{topic}/cmd/away", b"while away"),
            (f"{topic}/cmd/here", b"over xbee"),
        ]

"""XBee nodes (simulated Zigbee network, coordinator on a real pty) -> gateway -> Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiomqtt
import pytest

from firmware_sim.node import SimNode
from firmware_sim.radios.xbee_network import NodeFaults, XBeeNetwork, XBeeNodeLink
from gateway.config import parse_config
from gateway.protocol.codec import decode, encode
from gateway.protocol.constants import QoS, TopicIdType
from gateway.protocol.messages import Advertise, Connect, GwInfo, Message, Publish
from gateway.runtime import GatewayRuntime
from tests.integration.conftest import wait_for
from transports.xbee import XBeeAddress, XBeeTransport

NODE = 0x0013A200_41000000  # + n: the nodes' 64-bit addresses

XBeeGatewayFactory = Callable[..., Any]


@pytest.fixture
def topic() -> str:
    """A short unique topic prefix: REGISTER and WILLTOPIC must fit the radio's 84-byte NP."""
    return f"xb/{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def xbee_gateway() -> AsyncIterator[XBeeGatewayFactory]:
    """``gateway, network = await xbee_gateway(broker, mqttsn={...})``: XBee-only gateway."""
    stack = contextlib.AsyncExitStack()

    async def factory(
        broker: Any,
        mode: str = "aggregating",
        *,
        mqttsn: dict[str, Any] | None = None,
        predefined: dict[int, str] | None = None,
    ) -> tuple[GatewayRuntime, XBeeNetwork]:
        network = await stack.enter_async_context(XBeeNetwork(seed=11))
        settings = {"t-adv": 0, "t-retry": 1.0, "n-retry": 3, **(mqttsn or {})}
        config = parse_config(
            {"mqttsn": settings}, broker=broker.url, mode=mode, predefined=predefined
        )
        transport = XBeeTransport(network.port, tx_timeout=1.0, reopen_backoff=(0.05, 0.5))
        gateway = await stack.enter_async_context(GatewayRuntime(config, transports=[transport]))
        await wait_for(lambda: gateway.upstream.connected, 10, "the gateway reaches the broker")
        return gateway, network

    yield factory
    await stack.aclose()


def xbee_node(network: XBeeNetwork, client_id: str, n: int, **kwargs: Any) -> SimNode:
    """A SimNode whose radio is node ``n`` on the simulated Zigbee network."""
    kwargs.setdefault("t_retry", 1.0)
    return SimNode(client_id, network.add_node(NODE + n), **kwargs)


class Listener:
    """A bare radio on the network that records every frame it hears (unicast or broadcast)."""

    def __init__(self, link: XBeeNodeLink) -> None:
        self.link = link
        self.heard: list[Message] = []

    @classmethod
    async def open(cls, network: XBeeNetwork, n: int) -> Listener:
        listener = cls(network.add_node(NODE + n, end_device=False))
        await listener.link.open(lambda frame: listener.heard.append(decode(frame)))
        return listener

    def of_type(self, kind: type[Message]) -> list[Any]:
        return [m for m in self.heard if isinstance(m, kind)]


def xbee_transport(gateway: GatewayRuntime) -> XBeeTransport:
    transport = gateway.transports[0]
    assert isinstance(transport, XBeeTransport)
    return transport


async def test_xbee_node_publishes_qos_minus1_0_1_2(mosquitto, xbee_gateway, observe, mode, topic):
    """QoS -1 (predefined id, raw frame), 0, 1 and 2 from XBee nodes reach a broker subscriber."""
    _gateway, network = await xbee_gateway(mosquitto, mode, predefined={7: f"{topic}/pre"})
    observer = await observe(mosquitto, f"{topic}/#")
    raw = network.add_node(NODE + 1)
    await raw.open(lambda frame: None)
    await raw.send(encode(Publish(7, b"minus-one", QoS.MINUS_ONE, 0, TopicIdType.PREDEFINED)))
    async with xbee_node(network, "xb-pub", 2) as node:
        await node.connect()
        for qos in (0, 1, 2):
            await node.publish(f"{topic}/q{qos}", f"hello {qos}".encode(), qos=qos)
    assert await observer.wait_count(f"{topic}/pre", 1) == [b"minus-one"]
    for qos in (0, 1, 2):
        assert await observer.wait_count(f"{topic}/q{qos}", 1) == [f"hello {qos}".encode()]
    assert network.stats["uplink_delivered"] >= 8
    await raw.close()


async def test_xbee_node_subscribes_and_receives(mosquitto, xbee_gateway, topic):
    """An XBee node subscribed at QoS 1 and 2 receives broker messages up to the radio's NP."""
    gateway, network = await xbee_gateway(mosquitto)
    async with xbee_node(network, "xb-sub", 3) as node:
        await node.connect()
        await node.subscribe(f"{topic}/one", qos=1)
        await node.subscribe(f"{topic}/two", qos=2)
        payload = b"x" * (xbee_transport(gateway).max_frame_size() - 7)  # PUBLISH header: 7
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
            await client.publish(f"{topic}/one", payload, qos=1)
            await client.publish(f"{topic}/two", b"exactly-once", qos=2)
        messages = node.messages()
        got = [await asyncio.wait_for(anext(messages), 5) for _ in range(2)]
    assert [(m.topic_name, m.payload, m.qos) for m in got] == [
        (f"{topic}/one", payload, 1),
        (f"{topic}/two", b"exactly-once", 2),
    ]
    assert network.stats["downlink_delivered"] >= 4


async def test_sleeping_xbee_node_gets_buffered_messages_on_wake(mosquitto, xbee_gateway, topic):
    """Messages for an asleep XBee node are buffered by the gateway and delivered when it wakes."""
    gateway, network = await xbee_gateway(mosquitto)
    async with xbee_node(network, "xb-sleepy", 4) as node:
        await node.connect(keepalive=60)
        await node.subscribe(f"{topic}/cmd", qos=1)
        await node.sleep(30)
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
            for i in range(3):
                await client.publish(f"{topic}/cmd", f"c{i}".encode(), qos=1)
        session = gateway.core.sessions["xb-sleepy"]
        await wait_for(lambda: len(session.queue) == 3, 5, "3 messages buffered")
        # CONNACK, SUBACK, the DISCONNECT answer: nothing is sent to it while it sleeps.
        assert network.stats["downlink_delivered"] == 3
        woken = await node.wake()
        assert [m.payload for m in woken] == [b"c0", b"c1", b"c2"]
        assert session.state.name == "ASLEEP"
        assert session.address == XBeeAddress(NODE + 4)


async def test_searchgw_broadcast_is_answered_by_a_gwinfo_broadcast(mosquitto, xbee_gateway, topic):
    """SEARCHGW by radio broadcast gets GWINFO at the broadcast address: other nodes hear it too."""
    _gateway, network = await xbee_gateway(mosquitto, mqttsn={"gw-id": 42})
    bystander = await Listener.open(network, 5)
    async with xbee_node(network, "xb-search", 6) as node:
        assert await node.search_gateway(radius=1, timeout=5) == 42
    await wait_for(lambda: bystander.of_type(GwInfo), 2, "the bystander hears GWINFO")
    assert bystander.of_type(GwInfo)[0].gw_id == 42
    assert network.stats["downlink_broadcasts"] >= 1


async def test_advertise_is_broadcast_only_while_the_broker_is_up(
    private_mosquitto, xbee_gateway, topic
):
    """With t-adv > 0 and the broker up, ADVERTISE is broadcast; with the broker down it stops."""
    gateway, network = await xbee_gateway(private_mosquitto, mqttsn={"t-adv": 1, "gw-id": 9})
    listener = await Listener.open(network, 7)
    await wait_for(lambda: listener.of_type(Advertise), 5, "an ADVERTISE is heard")
    advertise = listener.of_type(Advertise)[0]
    assert (advertise.gw_id, advertise.duration) == (9, 1)
    private_mosquitto.stop()
    await wait_for(lambda: not gateway.upstream.connected, 10, "the gateway sees the broker go")
    listener.heard.clear()
    await asyncio.sleep(2.5)
    assert listener.of_type(Advertise) == []


async def test_first_advertise_goes_out_when_the_gateway_starts(mosquitto):
    """The first ADVERTISE is heard as soon as the gateway is up, not a whole t-adv later."""
    async with XBeeNetwork(seed=3) as network:
        listener = await Listener.open(network, 10)
        config = parse_config({"mqttsn": {"t-adv": 60}}, broker=mosquitto.url)
        transports = [XBeeTransport(network.port, tx_timeout=1.0)]
        async with GatewayRuntime(config, transports=transports):
            await wait_for(lambda: listener.of_type(Advertise), 2, "the first ADVERTISE")


async def test_transmit_failures_retransmit_then_declare_the_node_lost(
    mosquitto, xbee_gateway, observe, topic
):
    """MAC ACK failures on every downlink: the gateway retransmits, then the node is lost (will)."""
    gateway, network = await xbee_gateway(mosquitto, mqttsn={"t-retry": 0.5, "n-retry": 2})
    observer = await observe(mosquitto, f"{topic}/#")
    async with xbee_node(network, "xb-deaf", 8) as node:
        await node.connect(keepalive=60, will=(f"{topic}/will", b"deaf", 1, False))
        await node.subscribe(f"{topic}/cmd", qos=1)
        network.set_faults(NODE + 8, NodeFaults(mac_ack_failure=True))
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
            await client.publish(f"{topic}/cmd", b"unheard", qos=1)
        assert await observer.wait_count(f"{topic}/will", 1, timeout=10) == [b"deaf"]
        assert gateway.core.counters["retransmissions"] >= 2
        assert network.stats["downlink_failed"] >= 3  # the first try and two retransmissions
        assert xbee_transport(gateway).stats["tx_status_mac_ack_failure"] >= 3
        assert gateway.counters["link_send-failed"] >= 3
        assert "xb-deaf" not in gateway.core.sessions  # clean session: lost and forgotten
        network.set_faults(NODE + 8, NodeFaults())  # let the closing DISCONNECT through


async def test_vanishing_port_returns_and_sessions_survive(mosquitto, xbee_gateway, observe, topic):
    """The XBee dongle is unplugged and replugged; a node connected before publishes without CONNECT."""
    gateway, network = await xbee_gateway(mosquitto)
    transport = xbee_transport(gateway)
    observer = await observe(mosquitto, f"{topic}/#")
    async with xbee_node(network, "xb-survivor", 9) as node:
        await node.connect(keepalive=60)
        await node.subscribe(f"{topic}/cmd", qos=1)
        await node.publish(f"{topic}/before", b"1", qos=1)
        network.unplug()
        await wait_for(lambda: "reopening" in repr(transport), 5, "the gateway sees the port go")
        await asyncio.sleep(0.3)  # a few reopen attempts fail while the port is gone
        network.replug()
        await wait_for(lambda: transport.stats["reconnects"] == 1, 5, "the port is reopened")
        seen: list[Message] = []
        gateway.observers.append(lambda event, **f: seen.append(f.get("message")))
        await node.publish(f"{topic}/after", b"2", qos=1)
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
            await client.publish(f"{topic}/cmd", b"still-subscribed", qos=1)
        received = await asyncio.wait_for(anext(node.messages()), 5)
        assert received.payload == b"still-subscribed"
        assert gateway.core.sessions["xb-survivor"].state.name == "ACTIVE"
        assert not any(isinstance(m, Connect) for m in seen)  # no CONNECT after the replug
    assert await observer.wait_count(f"{topic}/after", 1) == [b"2"]
    assert node.counters.sent > 0 and network.stats["unplugged"] == 1

"""Nodes behind an MQTT-SN forwarder (0xFE encapsulation) over UDP and over a serial line."""

from __future__ import annotations

import asyncio
import contextlib

import aiomqtt
import pytest

from firmware_sim.forwarder import Forwarder
from firmware_sim.node import SimNode
from firmware_sim.serial_link import PtyPair, SerialNodeLink
from firmware_sim.udp_link import UdpNodeLink
from gateway.config import parse_config
from gateway.runtime import ForwardedAddress, GatewayRuntime
from tests.integration.conftest import Observer, wait_for
from tests.mosquitto import MosquittoBroker
from transports.base import UdpAddress
from transports.serial import SerialAddress, SerialTransport

NODE_A = b"\x00\x01"
NODE_B = b"\xab\xcd\xef\x01\x02\x03\x04\x05"  # ids are opaque: 2 bytes, 8 bytes (an EUI-64)...


async def two_nodes_each_keep_their_own_session(
    broker: MosquittoBroker,
    gateway: GatewayRuntime,
    forwarder: Forwarder,
    observer: Observer,
    topic: str,
    forwarder_address: object,
) -> None:
    """The shared scenario: two nodes behind one forwarder connect, publish, subscribe, receive."""
    async with (
        SimNode("fw-a", forwarder.node_link(NODE_A), t_retry=0.5, n_retry=2) as a,
        SimNode("fw-b", forwarder.node_link(NODE_B), t_retry=0.5, n_retry=2) as b,
    ):
        await asyncio.gather(a.connect(), b.connect())
        sessions = gateway.core.sessions
        assert sessions["fw-a"].address == ForwardedAddress(forwarder_address, NODE_A)
        assert sessions["fw-b"].address == ForwardedAddress(forwarder_address, NODE_B)
        await asyncio.gather(
            a.subscribe(f"{topic}/cmd/a", qos=1), b.subscribe(f"{topic}/cmd/b/+", qos=1)
        )
        await asyncio.gather(
            a.publish(f"{topic}/up/a", b"from a", qos=1),
            b.publish(f"{topic}/up/b", b"from b", qos=2),
        )
        async with aiomqtt.Client(broker.host, broker.port) as client:
            await client.publish(f"{topic}/cmd/b/1", b"for b", qos=1)
            await client.publish(f"{topic}/cmd/a", b"for a", qos=1)
            await client.publish(f"{topic}/cmd/b/2", b"for b again", qos=2)
        got_a = await asyncio.wait_for(anext(a.messages()), 5)
        b_messages = b.messages()
        got_b = [await asyncio.wait_for(anext(b_messages), 5) for _ in range(2)]
        assert got_a.payload == b"for a"
        assert [(m.topic_name, m.payload) for m in got_b] == [
            (f"{topic}/cmd/b/1", b"for b"),
            (f"{topic}/cmd/b/2", b"for b again"),
        ]
        await asyncio.sleep(0.2)  # nothing else arrives late at the wrong node
        assert a.counters.delivered == 1 and b.counters.delivered == 2
    assert await observer.wait_count(f"{topic}/up/a", 1) == [b"from a"]
    assert await observer.wait_count(f"{topic}/up/b", 1) == [b"from b"]
    # Every reply came back encapsulated for a node the forwarder knows.
    assert forwarder.counters["plain"] == 0
    assert forwarder.counters["unknown_node"] == 0
    assert forwarder.counters["malformed"] == 0
    assert gateway.counters["rx_malformed"] == 0


async def test_forwarder_over_udp_keeps_one_session_per_node(
    mosquitto, start_gateway, observe, mode, unique_topic
):
    """Two nodes behind one UDP forwarder: sessions keyed (forwarder, node id), replies unwrapped."""
    gateway = await start_gateway(mosquitto, mode)
    observer = await observe(mosquitto, f"{unique_topic}/#")
    uplink = UdpNodeLink(("127.0.0.1", gateway.udp_port))
    async with Forwarder(uplink, name="udp-forwarder") as forwarder:
        port = uplink.local_address[1]  # type: ignore[index]
        await two_nodes_each_keep_their_own_session(
            mosquitto, gateway, forwarder, observer, unique_topic, UdpAddress("127.0.0.1", port)
        )
        # SEARCHGW from a node behind the forwarder: GWINFO comes back encapsulated.
        async with SimNode("fw-c", forwarder.node_link(b"\x07"), t_retry=0.5) as c:
            assert await c.search_gateway(timeout=5) == gateway.config.core.gw_id


@pytest.mark.parametrize("framing", ["slip", "plain"])
async def test_forwarder_over_serial_keeps_one_session_per_node(
    mosquitto, observe, framing, unique_topic
):
    """Two nodes behind a forwarder on a serial line: one session each, replies encapsulated."""
    observer = await observe(mosquitto, f"{unique_topic}/#")
    config = parse_config({"mqttsn": {"t-adv": 0, "t-retry": 1.0}}, broker=mosquitto.url)
    with PtyPair() as line:
        transport = SerialTransport(line.path, framing=framing)  # type: ignore[arg-type]
        async with contextlib.AsyncExitStack() as stack:
            gateway = await stack.enter_async_context(
                GatewayRuntime(config, transports=[transport])
            )
            await wait_for(lambda: gateway.upstream.connected, 10, "the gateway reaches the broker")
            link = SerialNodeLink(line.master, framing=framing)  # type: ignore[arg-type]
            forwarder = await stack.enter_async_context(Forwarder(link, name="serial-forwarder"))
            await two_nodes_each_keep_their_own_session(
                mosquitto, gateway, forwarder, observer, unique_topic, SerialAddress(line.path)
            )
            assert transport.counters["rx_dropped_bytes"] == 0

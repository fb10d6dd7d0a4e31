"""BLE nodes (bleak over the bumble-based simulated radio) -> gateway -> Mosquitto, with UDP beside."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import pytest

from firmware_sim.node import SimNode
from firmware_sim.radios.ble_backend import SimBleNetwork
from firmware_sim.radios.ble_node import BleSimNodeRadio
from gateway.config import parse_config
from gateway.runtime import GatewayRuntime
from tests.integration.conftest import sim_node, wait_for
from tests.mosquitto import free_port
from transports.ble import BleAddress, BleTransport
from transports.udp import UdpTransport


@pytest.fixture
async def ble_gateway(mosquitto: Any) -> AsyncIterator[tuple[GatewayRuntime, SimBleNetwork]]:
    """A gateway with a UDP transport and a BLE transport on the simulated air."""
    async with SimBleNetwork() as network:
        port = free_port(socket.SOCK_DGRAM)
        config = parse_config(
            {"mqttsn": {"t-adv": 0, "t-retry": 2.0}}, udp=f"127.0.0.1:{port}", broker=mosquitto.url
        )
        transports = [
            UdpTransport("127.0.0.1", port),
            BleTransport(backend=network.backend, connect_timeout=2.0, retry_delay=0.2),
        ]
        async with GatewayRuntime(config, transports=transports) as gateway:
            gateway.udp_port = port  # type: ignore[attr-defined]
            await wait_for(lambda: gateway.upstream.connected, 10, "broker connection")
            yield gateway, network


async def test_ble_node_publishes_qos_0_1_2(ble_gateway, observe, mosquitto, unique_topic):
    """A BLE node's QoS 0/1/2 publishes (one longer than the 23-byte MTU) reach the broker."""
    gateway, network = ble_gateway
    observer = await observe(mosquitto, f"{unique_topic}/#")
    radio = BleSimNodeRadio(network, name="ble-pub")
    async with SimNode("ble-pub", radio, t_retry=2.0) as node:
        await node.connect()
        await node.publish(f"{unique_topic}/q0", b"zero", qos=0)
        await node.publish(f"{unique_topic}/q1", b"one" * 100, qos=1)  # 300 bytes, long form
        await node.publish(f"{unique_topic}/q2", b"two", qos=2)
    assert await observer.wait_count(f"{unique_topic}/q0", 1) == [b"zero"]
    assert await observer.wait_count(f"{unique_topic}/q1", 1) == [b"one" * 100]
    assert await observer.wait_count(f"{unique_topic}/q2", 1) == [b"two"]
    session = gateway.core.sessions.get("ble-pub")
    assert session is None or isinstance(session.address, BleAddress)


async def test_ble_node_subscribes_and_receives(ble_gateway, mosquitto, unique_topic):
    """A BLE node subscribed at QoS 1 receives a broker message."""
    _gateway, network = ble_gateway
    async with SimNode(
        "ble-sub", BleSimNodeRadio(network, name="ble-sub", mtu=64), t_retry=2.0
    ) as node:
        await node.connect()
        await node.subscribe(f"{unique_topic}/cmd", qos=1)
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
            await client.publish(f"{unique_topic}/cmd", b"x" * 200, qos=1)
        received = await asyncio.wait_for(anext(node.messages()), 10)
        assert received.payload == b"x" * 200


async def test_ble_node_sleeps_with_link_dropped_and_gets_buffered_messages(
    ble_gateway, mosquitto, unique_topic
):
    """Sleep drops the BLE link; messages published meanwhile arrive after the reconnect and wake."""
    gateway, network = ble_gateway
    async with SimNode(
        "ble-sleepy", BleSimNodeRadio(network, name="ble-sleepy"), t_retry=2.0
    ) as node:
        await node.connect(keepalive=60)
        await node.subscribe(f"{unique_topic}/cmd", qos=1)
        await node.sleep(60)
        ble = gateway.transports[1]
        await wait_for(lambda: not ble.connected, 10, "the BLE link is down while asleep")
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
            for i in range(3):
                await client.publish(f"{unique_topic}/cmd", f"m{i}".encode(), qos=1)
        session = gateway.core.sessions["ble-sleepy"]
        await wait_for(lambda: len(session.queue) == 3, 10, "3 messages buffered")
        woken = await asyncio.wait_for(node.wake(), 20)
        assert [m.payload for m in woken] == [b"m0", b"m1", b"m2"]


async def test_ble_node_vanishing_mid_frame_does_not_desynchronise(
    ble_gateway, observe, mosquitto, unique_topic
):
    """Half a frame then a dropped link: the node's next connection is read correctly."""
    gateway, network = ble_gateway
    observer = await observe(mosquitto, f"{unique_topic}/#")
    radio = BleSimNodeRadio(network, name="ble-flaky")
    async with SimNode("ble-flaky", radio, t_retry=1.0) as node:
        await node.connect()
        from gateway.protocol.codec import encode
        from gateway.protocol.messages import Pingreq

        await radio.vanish_mid_frame(encode(Pingreq("ble-flaky-with-a-long-client-id")))
        await radio.wake_radio()  # back in range: advertises, the gateway reconnects
        await node.publish(f"{unique_topic}/after", b"intact", qos=1)
    assert await observer.wait_count(f"{unique_topic}/after", 1, timeout=20) == [b"intact"]
    assert gateway.counters["rx_malformed"] == 0


async def test_several_ble_nodes_and_a_udp_node_at_once(
    ble_gateway, observe, mosquitto, unique_topic
):
    """Three BLE nodes and one UDP node publish through one gateway at the same time."""
    gateway, network = ble_gateway
    observer = await observe(mosquitto, f"{unique_topic}/#")

    async def ble(i: int) -> None:
        async with SimNode(
            f"ble-{i}", BleSimNodeRadio(network, name=f"ble-{i}"), t_retry=2.0
        ) as node:
            await node.connect()
            await node.publish(f"{unique_topic}/ble{i}", f"b{i}".encode(), qos=1)

    async def udp() -> None:
        async with sim_node(gateway, "udp-0") as node:
            await node.connect()
            await node.publish(f"{unique_topic}/udp", b"u", qos=1)

    await asyncio.wait_for(asyncio.gather(*(ble(i) for i in range(3)), udp()), 60)
    for i in range(3):
        assert await observer.wait_count(f"{unique_topic}/ble{i}", 1) == [f"b{i}".encode()]
    assert await observer.wait_count(f"{unique_topic}/udp", 1) == [b"u"]

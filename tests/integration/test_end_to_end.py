"""SimNode -> gateway -> Mosquitto -> subscriber, over real sockets, in both gateway modes."""

from __future__ import annotations

import asyncio

import aiomqtt

from gateway.protocol.constants import TopicIdType
from tests.integration.conftest import sim_node, wait_for


async def test_publish_qos_0_1_2_reach_the_broker(
    mosquitto, start_gateway, observe, mode, unique_topic
):
    """A node's QoS 0, 1 and 2 publishes arrive at a broker subscriber."""
    gateway = await start_gateway(mosquitto, mode)
    observer = await observe(mosquitto, f"{unique_topic}/#")
    async with sim_node(gateway, "pub-node") as node:
        await node.connect()
        for qos in (0, 1, 2):
            await node.publish(f"{unique_topic}/q{qos}", f"hello {qos}".encode(), qos=qos)
        for qos in (0, 1, 2):
            assert await observer.wait_count(f"{unique_topic}/q{qos}", 1) == [
                f"hello {qos}".encode()
            ]


async def test_subscribe_and_receive_qos_2_downlink(mosquitto, start_gateway, mode, unique_topic):
    """A node subscribed at QoS 2 receives a broker message exactly once."""
    gateway = await start_gateway(mosquitto, mode)
    async with sim_node(gateway, "sub-node") as node:
        await node.connect()
        await node.subscribe(f"{unique_topic}/cmd", qos=2)
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
            await client.publish(f"{unique_topic}/cmd", b"on", qos=2)
        received = await asyncio.wait_for(anext(node.messages()), 5)
        assert (received.topic_name, received.payload, received.qos) == (
            f"{unique_topic}/cmd",
            b"on",
            2,
        )


async def test_wildcard_subscription_registers_each_topic_first(
    mosquitto, start_gateway, mode, unique_topic
):
    """A wildcard subscriber gets REGISTER then PUBLISH for every new concrete topic."""
    gateway = await start_gateway(mosquitto, mode)
    async with sim_node(gateway, "wild-node") as node:
        await node.connect()
        topic_id, _ = await node.subscribe(f"{unique_topic}/+/temp", qos=1)
        assert topic_id == 0  # wildcard: SUBACK carries TopicId 0 (P1)
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
            for room in ("kitchen", "hall", "kitchen"):
                await client.publish(f"{unique_topic}/{room}/temp", room.encode(), qos=1)
        messages = node.messages()
        got = [await asyncio.wait_for(anext(messages), 5) for _ in range(3)]
        assert [(m.topic_name, m.payload) for m in got] == [
            (f"{unique_topic}/kitchen/temp", b"kitchen"),
            (f"{unique_topic}/hall/temp", b"hall"),
            (f"{unique_topic}/kitchen/temp", b"kitchen"),
        ]
        session = gateway.core.sessions["wild-node"]
        assert len(session.registry) == 2  # two topics registered, the third reused an id


async def test_retained_message_delivered_after_suback(
    mosquitto, start_gateway, mode, unique_topic
):
    """A retained message at the broker reaches a node that subscribes later."""
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
        await client.publish(f"{unique_topic}/state", b"retained-on", qos=1, retain=True)
    gateway = await start_gateway(mosquitto, mode)
    async with sim_node(gateway, "ret-node") as node:
        await node.connect()
        await node.subscribe(f"{unique_topic}/state", qos=1)
        received = await asyncio.wait_for(anext(node.messages()), 5)
        assert (received.payload, received.retain) == (b"retained-on", True)
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
        await client.publish(f"{unique_topic}/state", b"", qos=1, retain=True)


async def test_will_published_when_node_is_lost(
    mosquitto, start_gateway, observe, mode, unique_topic
):
    """A node that goes silent past 1.5x its keep-alive is lost and its will is published."""
    gateway = await start_gateway(mosquitto, mode)
    observer = await observe(mosquitto, f"{unique_topic}/#")
    node = sim_node(gateway, "will-node")
    async with node:
        await node.connect(keepalive=1, will=(f"{unique_topic}/will", b"gone", 1, False))
        # Silence the node's radio so it neither pings nor disconnects.
        await node.link.close()
        assert await observer.wait_count(f"{unique_topic}/will", 1, timeout=8) == [b"gone"]
        assert "will-node" not in gateway.core.sessions or (
            gateway.core.sessions["will-node"].state.name == "LOST"
        )


async def test_qos_minus_one_with_predefined_topic(
    mosquitto, start_gateway, observe, mode, unique_topic
):
    """QoS -1 with a pre-defined id needs no connection and reaches the broker."""
    gateway = await start_gateway(mosquitto, mode, predefined={7: f"{unique_topic}/pre"})
    observer = await observe(mosquitto, f"{unique_topic}/#")
    from gateway.protocol.codec import encode
    from gateway.protocol.constants import QoS
    from gateway.protocol.messages import Publish

    frame = encode(Publish(7, b"minus-one", QoS.MINUS_ONE, 0, TopicIdType.PREDEFINED))
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=("127.0.0.1", gateway.udp_port)
    )
    transport.sendto(frame)
    assert await observer.wait_count(f"{unique_topic}/pre", 1) == [b"minus-one"]
    transport.close()


async def test_sleeping_node_gets_messages_published_while_asleep(
    mosquitto, start_gateway, mode, unique_topic
):
    """Messages published at the broker while a node sleeps are delivered when it wakes."""
    gateway = await start_gateway(mosquitto, mode)
    async with sim_node(gateway, "sleepy") as node:
        await node.connect(keepalive=60)
        await node.subscribe(f"{unique_topic}/cmd", qos=1)
        await node.sleep(30)
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
            for i in range(3):
                await client.publish(f"{unique_topic}/cmd", f"c{i}".encode(), qos=1)
        session = gateway.core.sessions["sleepy"]
        await wait_for(lambda: len(session.queue) == 3, 5, "3 messages buffered")
        woken = await node.wake()
        assert [m.payload for m in woken] == [b"c0", b"c1", b"c2"]
        assert session.state.name == "ASLEEP"


async def test_client_ids_match_exactly(mosquitto, start_gateway, mode, unique_topic):
    """`sensor1` waking never takes over `sensor10`'s session or messages."""
    gateway = await start_gateway(mosquitto, mode)
    async with sim_node(gateway, "sensor10") as ten, sim_node(gateway, "sensor1") as one:
        await ten.connect()
        await ten.subscribe(f"{unique_topic}/ten", qos=1)
        await ten.sleep(60)
        await one.connect()
        await one.sleep(60)
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
            await client.publish(f"{unique_topic}/ten", b"for-ten", qos=1)
        await wait_for(lambda: len(gateway.core.sessions["sensor10"].queue) == 1, 5, "buffered")
        assert await one.wake() == []
        assert len(gateway.core.sessions["sensor10"].queue) == 1
        assert [m.payload for m in await ten.wake()] == [b"for-ten"]


async def test_overlapping_filters_deliver_each_message_once(
    mosquitto, start_gateway, mode, unique_topic
):
    """Nodes on overlapping filters (a/b and a/+) each get a broker message exactly once."""
    gateway = await start_gateway(mosquitto, mode)
    async with (
        sim_node(gateway, "exact") as exact,
        sim_node(gateway, "wild") as wild,
        sim_node(gateway, "both") as both,
    ):
        for node in (exact, wild, both):
            await node.connect()
        await exact.subscribe(f"{unique_topic}/cmd/a", qos=1)
        await wild.subscribe(f"{unique_topic}/cmd/+", qos=1)
        await both.subscribe(f"{unique_topic}/cmd/a", qos=1)
        await both.subscribe(f"{unique_topic}/cmd/+", qos=1)
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
            await client.publish(f"{unique_topic}/cmd/a", b"once", qos=1)
            await client.publish(f"{unique_topic}/cmd/z", b"end", qos=1)
        for node in (exact, wild, both):
            got = []
            async for message in node.messages():
                got.append(message.payload)
                if message.payload == b"end" or (node is exact and message.payload == b"once"):
                    break
            assert got.count(b"once") == 1, (node.client_id, got)

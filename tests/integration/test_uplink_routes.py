"""The QoS 0 uplink route cache end to end: a cached route never outlives what it was made for."""

from __future__ import annotations

import pytest

from gateway.protocol.codec import encode
from gateway.protocol.messages import Publish
from tests.integration.conftest import sim_node, wait_for


@pytest.mark.parametrize("qos", [0, 1])
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_after_a_clean_reconnect_a_publish_goes_to_the_topic_the_id_now_names(
    mosquitto, start_gateway, observe, mode, unique_topic, protocol, qos
):
    """Topic ids start again at 1 after a clean CONNECT; the old id's route must not be used.

    Over both bridges: MQTT 5 (a publisher with pre-encoded topic bytes) and paho (the general
    ``publish`` behind the route); QoS 1 returns only once the PUBACK came back.
    """
    gateway = await start_gateway(mosquitto, mode, protocol=protocol)
    observer = await observe(mosquitto, f"{unique_topic}/#")
    async with sim_node(gateway, "route-node") as node:
        await node.connect()
        old_id = await node.register(f"{unique_topic}/old")
        for n in range(3):  # the first makes the route, the others take it
            await node.publish(f"{unique_topic}/old", f"old {n}".encode(), qos=qos)
        assert await observer.wait_count(f"{unique_topic}/old", 3) == [b"old 0", b"old 1", b"old 2"]
        await node.disconnect()
        await node.connect(clean_session=True)
        assert await node.register(f"{unique_topic}/new") == old_id
        await node.publish(f"{unique_topic}/new", b"new", qos=qos)
        assert await observer.wait_count(f"{unique_topic}/new", 1) == [b"new"]
    assert observer.payloads(f"{unique_topic}/old") == [b"old 0", b"old 1", b"old 2"]


async def test_qos0_from_a_sleeping_node_is_not_published(
    mosquitto, start_gateway, observe, unique_topic
):
    """A route made while the node was active is not taken once it sleeps (it must wake first)."""
    gateway = await start_gateway(mosquitto)
    observer = await observe(mosquitto, f"{unique_topic}/#")
    async with sim_node(gateway, "sleepy-node") as node:
        await node.connect()
        topic_id = await node.register(f"{unique_topic}/t")
        await node.publish(f"{unique_topic}/t", b"awake")
        assert await observer.wait_count(f"{unique_topic}/t", 1) == [b"awake"]
        await node.sleep(60)
        refused = gateway.core.counters["unattributable"]
        # A node that publishes while asleep, from its own address: past the sim's radio, which
        # sends nothing while asleep.
        unicast = node.link._unicast
        assert unicast is not None
        unicast.sendto(encode(Publish(topic_id, b"asleep")), ("127.0.0.1", gateway.udp_port))
        await wait_for(
            lambda: gateway.core.counters["unattributable"] > refused,
            5.0,
            "the gateway refuses the sleeping node's PUBLISH",
        )
    assert observer.payloads(f"{unique_topic}/t") == [b"awake"]

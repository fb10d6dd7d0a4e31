"""Many nodes, a broker that restarts mid-stream, and garbage from a raw socket."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket

import pytest

from firmware_sim.node import ConnectRefused, RequestRejected
from gateway.protocol.constants import ReturnCode
from tests.integration.conftest import sim_node, wait_for
from tests.mosquitto import MosquittoBroker


async def test_200_nodes_10_qos1_messages_each_delivered_exactly(
    mosquitto, start_gateway, observe, mode, unique_topic
):
    """200 nodes x 10 QoS 1 publishes: every payload reaches the broker exactly once."""
    gateway = await start_gateway(mosquitto, mode)
    observer = await observe(mosquitto, f"{unique_topic}/#")
    nodes = [sim_node(gateway, f"load-{i}") for i in range(200)]

    async def run(i: int) -> None:
        async with nodes[i] as node:
            await node.connect(keepalive=60)
            for n in range(10):
                await node.publish(f"{unique_topic}/n{i}", f"{i}:{n}".encode(), qos=1)
            await node.disconnect()

    await asyncio.wait_for(asyncio.gather(*(run(i) for i in range(200))), 90)
    await wait_for(lambda: len(observer.messages) >= 2000, 20, "2000 messages at the broker")
    await asyncio.sleep(0.3)  # anything extra (a duplicate) would arrive now
    payloads = sorted(bytes(m.payload) for m in observer.messages)
    expected = sorted(f"{i}:{n}".encode() for i in range(200) for n in range(10))
    assert payloads == expected


async def test_broker_restart_mid_qos1_stream_loses_nothing(start_gateway, unique_topic):
    """Mosquitto restarts amid 20 nodes x 100 QoS 1 messages: every acknowledged one arrives."""
    # Broker persistence on, so the subscriber's own session survives the restart too: any
    # message missing at the end was lost by the gateway, not by the test's subscriber.
    broker = MosquittoBroker(persistent=True)
    broker.start()
    gateway = await start_gateway(broker, mqttsn={"t-retry": 2.0, "n-retry": 10})
    received: set[bytes] = set()

    # paho's threaded client records each message in on_message, before it acknowledges it,
    # and reconnects by itself: nothing the broker delivered can be lost in the test's client.
    import paho.mqtt.client as paho

    sub = paho.Client(
        paho.CallbackAPIVersion.VERSION2, client_id="restart-sub", clean_session=False
    )
    sub.on_connect = lambda c, *_: c.subscribe(f"{unique_topic}/#", qos=1)
    sub.on_message = lambda c, u, m: received.add(bytes(m.payload))
    sub.reconnect_delay_set(0.1, 0.5)
    sub.connect(broker.host, broker.port)
    sub.loop_start()
    await asyncio.sleep(0.5)
    acked: list[bytes] = []

    async def restart_later() -> None:
        await asyncio.sleep(1.5)
        await asyncio.to_thread(broker.start)

    stopped = asyncio.Event()
    restart: asyncio.Task[None] | None = None

    async def stream(i: int) -> None:
        nonlocal restart
        async with sim_node(gateway, f"streamer-{i}", t_retry=2.0, n_retry=10) as node:
            await node.connect(keepalive=60)
            for n in range(100):
                if i == 0 and n == 30:
                    broker.stop()  # thousands of QoS 1 messages in flight across the outage
                    stopped.set()
                    restart = asyncio.create_task(restart_later())
                payload = f"{i}:{n}".encode()
                await node.publish(f"{unique_topic}/s{i}", payload, qos=1)
                acked.append(payload)

    await asyncio.wait_for(asyncio.gather(*(stream(i) for i in range(20))), 90)
    assert stopped.is_set()
    try:
        await wait_for(lambda: set(acked) <= received, 30, "every acked message at the subscriber")
    except AssertionError as exc:
        missing = sorted(set(acked) - received)
        raise AssertionError(f"{exc}; {len(missing)} missing: {missing[:20]}") from None
    finally:
        sub.loop_stop()
        sub.disconnect()
        if restart is not None:
            await restart
        broker.stop()
    assert len(acked) == 2000


async def test_garbage_datagrams_do_not_stop_the_gateway(
    mosquitto, start_gateway, observe, unique_topic, caplog
):
    """Random and malformed datagrams are counted and logged (rate-limited); nodes still served."""
    gateway = await start_gateway(mosquitto)
    observer = await observe(mosquitto, f"{unique_topic}/#")
    rng = random.Random(7)
    frames = [
        b"",
        b"\x00",
        b"\x01",
        b"\x05\x04",
        b"\x03\x04\x00",
        b"\x01\x00\x02\x0c",
        b"\xff" * 300,
    ]
    frames += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80))) for _ in range(500)]
    frames.append(os.urandom(70_000)[:65_000])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        for frame in frames:
            raw.sendto(frame, ("127.0.0.1", gateway.udp_port))
            await asyncio.sleep(0)
    await asyncio.sleep(0.3)
    malformed = gateway.counters["rx_malformed"] + sum(
        t.counters.get("rx_malformed", 0) + t.counters.get("rx_oversize", 0)
        for t in gateway.transports
        if hasattr(t, "counters")
    )
    assert malformed >= 100
    warnings = [
        r for r in caplog.records if r.levelno >= logging.WARNING and "malformed" in r.getMessage()
    ]
    assert 1 <= len(warnings) <= 10  # rate-limited per source
    async with sim_node(gateway, "survivor") as node:
        await node.connect()
        await node.publish(f"{unique_topic}/ok", b"still-here", qos=1)
    assert await observer.wait_count(f"{unique_topic}/ok", 1) == [b"still-here"]


@pytest.mark.parametrize("family", ["ipv6"])
async def test_ipv6_node(mosquitto, observe, unique_topic, family):
    """A node on IPv6 loopback is served like any other."""
    from firmware_sim.node import SimNode
    from firmware_sim.udp_link import UdpNodeLink
    from gateway.config import parse_config
    from gateway.runtime import GatewayRuntime
    from tests.mosquitto import free_port

    port = free_port(socket.SOCK_DGRAM, "::1")
    config = parse_config({"mqttsn": {"t-adv": 0}}, udp=f"[::1]:{port}", broker=mosquitto.url)
    observer = await observe(mosquitto, f"{unique_topic}/#")
    async with GatewayRuntime(config) as gateway:
        await wait_for(lambda: gateway.upstream.connected, 10, "broker connection")
        async with SimNode("v6-node", UdpNodeLink(("::1", port))) as node:
            await node.connect()
            await node.publish(f"{unique_topic}/v6", b"six", qos=1)
        assert await observer.wait_count(f"{unique_topic}/v6", 1) == [b"six"]


async def test_outage_policy_reject_tells_nodes_to_back_off(
    start_gateway, private_mosquitto, unique_topic
):
    """``outage-policy = "reject"`` end to end: with Mosquitto stopped a QoS 1 PUBLISH and a
    new CONNECT are answered "rejected: congestion" at once; once it is back both go through."""
    gateway = await start_gateway(private_mosquitto, mqttsn={"outage-policy": "reject"})
    topic = f"{unique_topic}/up"
    async with sim_node(gateway, "early") as node:
        await node.connect(keepalive=60)
        await node.register(topic)
        private_mosquitto.stop()
        await wait_for(lambda: not gateway.upstream.connected, 10, "the broker is gone")
        with pytest.raises(RequestRejected) as refused:
            await node.publish(topic, b"v", qos=1)
        assert refused.value.return_code is ReturnCode.REJECTED_CONGESTION
        async with sim_node(gateway, "late") as late:
            with pytest.raises(ConnectRefused) as info:
                await late.connect(keepalive=60)
            assert info.value.return_code is ReturnCode.REJECTED_CONGESTION
            private_mosquitto.start()
            await wait_for(lambda: gateway.upstream.connected, 15, "the broker is back")
            await node.publish(topic, b"v", qos=1)  # accepted: acknowledged by the broker
            await late.connect(keepalive=60)
    assert gateway.core.counters["uplink_refused_outage"] == 1
    assert gateway.core.counters["connect_refused_outage"] == 1

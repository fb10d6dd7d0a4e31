"""Restarts of the real gateway on one state file: closed cleanly, and killed with SIGKILL."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import aiomqtt

from firmware_sim.node import SimNode
from firmware_sim.udp_link import UdpNodeLink
from gateway.core import SessionState
from tests.integration.conftest import sim_node, wait_for


async def publish_at_broker(broker, topic: str, *items: tuple[bytes, int]) -> None:
    """Publish (payload, qos) pairs at the broker, as a backend would."""
    async with aiomqtt.Client(broker.host, broker.port) as client:
        for payload, qos in items:
            await client.publish(topic, payload, qos=qos)


async def test_sleeping_node_buffer_survives_a_clean_restart(
    mosquitto, gateway_with_state, mode, unique_topic, tmp_path: Path
):
    """Buffered messages, the subscription and the remaining sleep time outlive the gateway."""
    state = tmp_path / "state.sqlite"
    topic = f"{unique_topic}/cmd"
    first = await gateway_with_state(mosquitto, state, mode=mode)
    async with sim_node(first, "sleepy") as node:
        await node.connect(keepalive=60, clean_session=False)
        await node.subscribe(topic, qos=2)
        await node.sleep(300)
        await publish_at_broker(mosquitto, topic, (b"c0", 1), (b"c1", 2), (b"c2", 0))
        session = first.core.sessions["sleepy"]
        await wait_for(lambda: len(session.queue) == 3, 5, "3 messages buffered")
        last_rx = session.last_rx
        await first.close()

        second = await gateway_with_state(mosquitto, state, mode=mode, udp_port=first.udp_port)
        restored = second.core.sessions["sleepy"]
        assert restored.state is SessionState.ASLEEP
        assert abs(restored.last_rx - last_rx) < 0.5  # the same remaining sleep time
        woken = await node.wake()
        assert [(m.payload, m.qos) for m in woken] == [(b"c0", 1), (b"c1", 2), (b"c2", 0)]

        # The subscription is live at the broker again: a new command is buffered and delivered.
        if mode == "transparent":
            await wait_for(
                lambda: second.upstream.session("sleepy").connected, 10, "node's session up"
            )
        await publish_at_broker(mosquitto, topic, (b"c3", 1))
        await wait_for(lambda: len(restored.queue) == 1, 5, "buffered after the restart")
        assert [m.payload for m in await node.wake()] == [b"c3"]


async def test_uplink_outbox_survives_a_clean_restart(
    private_mosquitto, gateway_with_state, unique_topic, tmp_path: Path
):
    """A QoS 1 publish taken while the broker is away is saved, sent after the restart, and
    only then acknowledged to the node (which kept retransmitting meanwhile)."""
    state = tmp_path / "state.sqlite"
    topic = f"{unique_topic}/up"
    first = await gateway_with_state(private_mosquitto, state)
    port = first.udp_port
    node = SimNode("up", UdpNodeLink(("127.0.0.1", port)), t_retry=1.0, n_retry=30)
    async with node:
        await node.connect(keepalive=60, clean_session=False)
        await node.register(topic)
        private_mosquitto.stop()
        await wait_for(lambda: not first.upstream.connected, 10, "broker gone")
        publish = asyncio.create_task(node.publish(topic, b"kept", qos=1))
        assert first.store is not None
        await wait_for(lambda: first.store.read_outbox() != [], 5, "the outbox row is saved")
        await first.close()
        assert not publish.done()  # never acknowledged: the broker has not got it

        private_mosquitto.start()
        async with aiomqtt.Client(private_mosquitto.host, private_mosquitto.port) as observer:
            await observer.subscribe(topic, qos=1)
            await gateway_with_state(private_mosquitto, state, udp_port=port)
            async with asyncio.timeout(20):
                message = await anext(aiter(observer.messages))
            assert message.payload == b"kept"
            await asyncio.wait_for(publish, 20)  # acknowledged to the node after the restart
            assert node.counters.acked == 1


async def test_sleeping_node_buffer_survives_kill_9(
    mosquitto, gateway_process, unique_topic, tmp_path: Path
):
    """SIGKILL a gateway holding messages for a sleeping node; a new process delivers them."""
    state = tmp_path / "state.sqlite"
    topic = f"{unique_topic}/cmd"
    first = gateway_process(mosquitto, state)
    await first.start()
    port = first.udp_port
    async with SimNode("sleepy", UdpNodeLink(("127.0.0.1", port)), t_retry=1.0) as node:
        await node.connect(keepalive=60)
        await node.subscribe(topic, qos=2)
        await node.sleep(300)
        mark = len(first.lines)
        await publish_at_broker(mosquitto, topic, (b"k0", 1), (b"k1", 2), (b"k2", 0))
        # The save that holds all three (within flush_interval of their arrival).
        await first.wait_line("(3 held)", 10, after=mark)
        await first.kill()

        second = gateway_process(mosquitto, state, port)
        await second.start()
        await second.wait_line("3 buffered message(s)")
        woken = await node.wake()
        got = [(m.payload, m.qos) for m in woken]
        # The QoS 1 message may come twice (its broker PUBACK may not have left before the
        # SIGKILL, so the broker delivers it again: at least once); QoS 2 and 0 exactly once.
        assert list(dict.fromkeys(got)) == [(b"k0", 1), (b"k1", 2), (b"k2", 0)]
        assert [g for g in got if g[0] != b"k0"] == [(b"k1", 2), (b"k2", 0)]


async def test_uplink_outbox_survives_kill_9(
    private_mosquitto, gateway_process, unique_topic, tmp_path: Path
):
    """Broker down, node publishes QoS 1, gateway SIGKILLed: after both come back the message
    reaches the broker exactly once and the node gets its PUBACK."""
    state = tmp_path / "state.sqlite"
    topic = f"{unique_topic}/up"
    first = gateway_process(private_mosquitto, state)
    await first.start()
    port = first.udp_port
    node = SimNode("up", UdpNodeLink(("127.0.0.1", port)), t_retry=1.0, n_retry=30)
    async with node:
        await node.connect(keepalive=60, clean_session=False)
        await node.register(topic)
        private_mosquitto.stop()
        await first.wait_line("lost")
        mark = len(first.lines)
        publish = asyncio.create_task(node.publish(topic, b"after-kill", qos=1))
        await first.wait_line("outbox +1", 10, after=mark)
        await first.kill()
        assert not publish.done()

        private_mosquitto.start()
        async with aiomqtt.Client(private_mosquitto.host, private_mosquitto.port) as observer:
            await observer.subscribe(topic, qos=1)
            second = gateway_process(private_mosquitto, state, port)
            await second.start()
            async with asyncio.timeout(20):
                message = await anext(aiter(observer.messages))
            assert message.payload == b"after-kill"
            await asyncio.wait_for(publish, 20)
            assert node.counters.acked == 1
            # Exactly once: the node's retransmissions were recognised as duplicates.
            await asyncio.sleep(1.5)
            async with asyncio.timeout(0.5):
                extra = [m async for m in _drain(observer)]
            assert extra == []


async def _drain(client: aiomqtt.Client):
    """Messages already waiting, without blocking for more."""
    while True:
        try:
            async with asyncio.timeout(0.2):
                message = await anext(aiter(client.messages))
        except TimeoutError:
            return
        yield message


async def test_broker_messages_are_acknowledged_only_once_on_disk(
    mosquitto, gateway_process, unique_topic, tmp_path: Path
):
    """SIGKILL right after the broker handed over messages for a sleeper: none is lost.

    The broker PUBACK waits for the state file's commit, and the gateway's broker session
    continues across the restart, so whatever was not yet on disk is delivered again; what the
    broker queued while the gateway was down comes too.
    """
    state = tmp_path / "state.sqlite"
    topic = f"{unique_topic}/cmd"
    first = gateway_process(mosquitto, state)
    await first.start()
    port = first.udp_port
    async with SimNode("sleeper", UdpNodeLink(("127.0.0.1", port)), t_retry=1.0) as node:
        await node.connect(keepalive=60)
        await node.subscribe(topic, qos=1)
        await node.sleep(300)
        await first.wait_line("(0 held)", 10)  # the subscription is on disk
        burst = [(f"b{i}".encode(), 1) for i in range(50)]
        await publish_at_broker(mosquitto, topic, *burst)
        await first.kill()  # no time to save: at most a few of the 50 are on disk
        await publish_at_broker(mosquitto, topic, (b"while-down", 1))

        second = gateway_process(mosquitto, state, port)
        await second.start()
        await asyncio.sleep(1.0)  # the broker redelivers what was never acknowledged
        woken = await node.wake()
        payloads = {m.payload for m in woken}
        assert payloads == {p for p, _ in burst} | {b"while-down"}


async def test_awake_node_hears_broker_qos2_only_after_the_commit(
    mosquitto, gateway_with_state, unique_topic, tmp_path: Path
):
    """A broker QoS 2 message reaches an active node only once the state file committed it
    (with its packet id): a kill -9 before that cannot make the broker's redelivery a second
    copy at the node. QoS 1 is not held back (a duplicate is allowed there)."""
    topic = f"{unique_topic}/cmd"
    runtime = await gateway_with_state(mosquitto, tmp_path / "state.sqlite")
    store = runtime.store
    assert store is not None
    release = threading.Event()
    write = store._write

    def slow_write(batch):  # the writer thread: the disk is slow until released
        release.wait(10)
        return write(batch)

    store._write = slow_write  # type: ignore[method-assign]
    try:
        async with sim_node(runtime, "awake") as node:
            await node.connect(keepalive=60)
            await node.subscribe(topic, qos=2)
            got: list[tuple[bytes, int]] = []

            async def collect() -> None:
                async for message in node.messages():
                    got.append((message.payload, message.qos))

            collector = asyncio.create_task(collect())
            await publish_at_broker(mosquitto, topic, (b"q2", 2))
            await asyncio.sleep(0.5)
            assert got == []  # taken from the broker, held until committed
            release.set()
            await wait_for(lambda: got == [(b"q2", 2)], 5, "delivered after the commit")
            release.clear()
            await publish_at_broker(mosquitto, topic, (b"q1", 1))
            await wait_for(lambda: len(got) == 2, 5, "QoS 1 while the disk is still slow")
            assert got[1] == (b"q1", 1)
            collector.cancel()
    finally:
        release.set()

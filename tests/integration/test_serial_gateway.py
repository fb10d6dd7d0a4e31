"""A node on a serial line (a real pty pair) -> gateway SerialTransport -> Mosquitto, plain and SLIP."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiomqtt
import pytest

from firmware_sim.node import SimNode
from firmware_sim.serial_link import PtyPair, SerialNodeLink
from gateway.config import parse_config
from gateway.runtime import GatewayRuntime
from tests.integration.conftest import wait_for
from transports.framing import slip_crc_encode
from transports.serial import SerialAddress, SerialTransport

SerialGatewayFactory = Callable[..., Any]


@pytest.fixture(params=["plain", "slip"])
def framing(request: pytest.FixtureRequest) -> str:
    """Run the test with both line formats."""
    return str(request.param)


@pytest.fixture
async def serial_gateway() -> AsyncIterator[SerialGatewayFactory]:
    """``gateway, line = await serial_gateway(broker, framing)``: a gateway on one pty line."""
    stack = contextlib.AsyncExitStack()

    async def factory(
        broker: Any, framing: str, **transport_options: Any
    ) -> tuple[GatewayRuntime, PtyPair]:
        line = stack.enter_context(PtyPair())
        config = parse_config({"mqttsn": {"t-adv": 0, "t-retry": 1.0}}, broker=broker.url)
        transport = SerialTransport(line.path, framing=framing, **transport_options)  # type: ignore[arg-type]
        gateway = await stack.enter_async_context(GatewayRuntime(config, transports=[transport]))
        await wait_for(lambda: gateway.upstream.connected, 10, "the gateway reaches the broker")
        return gateway, line

    yield factory
    await stack.aclose()


def serial_transport(gateway: GatewayRuntime) -> SerialTransport:
    transport = gateway.transports[0]
    assert isinstance(transport, SerialTransport)
    return transport


async def next_payload(node: SimNode, wanted: bytes, within: float = 10.0) -> int:
    """Read the node's messages until one carries ``wanted``; how many came before it."""
    skipped = 0
    async with asyncio.timeout(within):
        async for message in node.messages():
            if message.payload == wanted:
                return skipped
            skipped += 1
    raise AssertionError(f"node closed before {wanted!r} arrived")


async def test_serial_node_publishes_subscribes_and_receives(
    mosquitto, serial_gateway, observe, framing, unique_topic
):
    """Over plain and SLIP framing: CONNECT, QoS 0/1 PUBLISH, SUBSCRIBE and a downlink message."""
    gateway, line = await serial_gateway(mosquitto, framing)
    observer = await observe(mosquitto, f"{unique_topic}/#")
    link = SerialNodeLink(line.master, framing=framing)
    async with SimNode("serial-node", link, t_retry=1.0) as node:
        await node.connect()
        await node.publish(f"{unique_topic}/q0", b"zero", qos=0)
        await node.publish(f"{unique_topic}/q1", b"one" * 50, qos=1)
        await node.subscribe(f"{unique_topic}/cmd", qos=1)
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
            await client.publish(f"{unique_topic}/cmd", b"\xc0\xdb down \x01", qos=1)
        received = await asyncio.wait_for(anext(node.messages()), 5)
        assert received.payload == b"\xc0\xdb down \x01"  # SLIP's END/ESC bytes survive
        assert gateway.core.sessions["serial-node"].address == SerialAddress(line.path)
    assert await observer.wait_count(f"{unique_topic}/q0", 1) == [b"zero"]
    assert await observer.wait_count(f"{unique_topic}/q1", 1) == [b"one" * 50]
    assert serial_transport(gateway).counters["rx_dropped_bytes"] == 0
    assert link.dropped_bytes == 0


async def test_garbage_on_the_line_is_skipped(
    mosquitto, serial_gateway, observe, framing, unique_topic
):
    """Line noise and a truncated frame are dropped and counted; traffic goes on undisturbed."""
    gateway, line = await serial_gateway(mosquitto, framing)
    transport = serial_transport(gateway)
    observer = await observe(mosquitto, f"{unique_topic}/#")
    link = SerialNodeLink(line.master, framing=framing)
    if framing == "plain":
        # Never a plausible header: 0x00 is no Length, 0xFF 0x00 no 255-byte ADVERTISE.
        noise = b"\x00\x00\xff\x00\x03\x03\x00"
        truncated = bytes.fromhex("0A 0C 20 00")  # a PUBLISH header whose body never comes
    else:
        noise = b"\xc0\x01\x02\xc0\xdb\x01\xc0" + slip_crc_encode(b"\x02\x16")[:-2] + b"\x00\xc0"
        truncated = b"\xc0\x0a\x0c\x20"  # no END: discarded after the idle gap
    async with SimNode("noisy-node", link, t_retry=1.0) as node:
        link.write_raw(noise)
        await node.connect()
        link.write_raw(noise)
        await node.publish(f"{unique_topic}/a", b"after noise", qos=1)
        link.write_raw(truncated)
        await asyncio.sleep(0.2)  # longer than the transport's inter-frame timeout
        await node.publish(f"{unique_topic}/b", b"after a truncated frame", qos=1)
        await node.subscribe(f"{unique_topic}/cmd", qos=1)
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
            await client.publish(f"{unique_topic}/cmd", b"down", qos=1)
        assert (await asyncio.wait_for(anext(node.messages()), 5)).payload == b"down"
        assert node.counters.retransmitted == 0  # nothing was lost to the noise
    assert await observer.wait_count(f"{unique_topic}/a", 1) == [b"after noise"]
    assert await observer.wait_count(f"{unique_topic}/b", 1) == [b"after a truncated frame"]
    if framing == "plain":
        assert transport.counters["rx_dropped_bytes"] == 2 * len(noise) + len(truncated)
    else:
        assert transport.counters["rx_crc_errors"] >= 2
        assert transport.counters["rx_malformed"] >= 2
    assert gateway.counters["rx_malformed"] == 0  # nothing undecodable got past the framing


async def test_back_pressured_line_stays_bounded_and_recovers(
    mosquitto, serial_gateway, observe, unique_topic
):
    """A node that stops reading under a flood: bounded queue, whole frames dropped, then recovery."""
    gateway, line = await serial_gateway(
        mosquitto, "plain", queue_limit=8192, write_buffer_high=2048
    )
    transport = serial_transport(gateway)
    observer = await observe(mosquitto, f"{unique_topic}/#")
    link = SerialNodeLink(line.master, framing="plain")
    async with SimNode("slow-reader", link, t_retry=1.0, inbox_size=5000) as node:
        await node.connect()
        await node.subscribe(f"{unique_topic}/flood", qos=0)
        await node.register(f"{unique_topic}/up")
        link.pause_reading()
        peak = 0

        def sample() -> bool:
            nonlocal peak
            peak = max(peak, transport.queued_bytes)
            return transport.counters["tx_dropped"] > 0

        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
            for i in range(1500):
                await client.publish(f"{unique_topic}/flood", b"%05d" % i + bytes(195), qos=0)
                sample()
            await wait_for(sample, 10, "the gateway drops frames for the stalled line")
            for _ in range(20):  # the flood keeps arriving for a while
                sample()
                await asyncio.sleep(0.01)
        # Full, but never beyond our queue + pyserial-asyncio's buffer + one frame.
        assert 8192 - 255 <= peak <= 8192 + 2048 + 255
        assert transport.counters["tx_dropped"] > 0
        # Uplink still works while the downlink is stalled (QoS 0: no answer needed).
        await node.publish(f"{unique_topic}/up", b"while stalled", qos=0)
        link.resume_reading()
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
            await client.publish(f"{unique_topic}/flood", b"after", qos=1)
        assert await next_payload(node, b"after") > 0  # the held frames came first, intact
        await node.publish(f"{unique_topic}/up", b"after", qos=1)
        await wait_for(lambda: transport.queued_bytes == 0, 5, "the line drains")
        assert link.dropped_bytes == 0  # frames were dropped whole, never cut
    assert await observer.wait_count(f"{unique_topic}/up", 2) == [b"while stalled", b"after"]

"""SimNode over the simulated BLE radio, against BleTransport and a tiny hand-made responder."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from firmware_sim.client import ClientState
from firmware_sim.node import SimNode
from firmware_sim.radios.ble_backend import SimBleNetwork
from firmware_sim.radios.ble_node import BleSimNodeRadio
from transports.base import Address, LinkEvent
from transports.ble import BleAddress, BleTransport


class Responder:
    """Plays just enough gateway over BleTransport with hand-made bytes (no codec)."""

    def __init__(self, transport: BleTransport) -> None:
        self.transport = transport
        self.frames: list[bytes] = []
        self.events: list[tuple[Address, LinkEvent]] = []
        self.buffered: list[bytes] = []  # for a sleeping node, flushed on PINGREQ with ClientId
        self.link_down = asyncio.Event()

    def deliver(self, address: Address, frame: bytes) -> None:
        self.frames.append(frame)
        for reply in self.answer(frame):
            self.transport.send(address, reply)

    def on_event(self, address: Address, event: LinkEvent) -> None:
        self.events.append((address, event))
        if event is LinkEvent.LINK_DOWN:
            self.link_down.set()

    def answer(self, data: bytes) -> list[bytes]:
        body = data[3:] if data[0] == 0x01 else data[1:]
        match body[0]:
            case 0x04:  # CONNECT -> CONNACK accepted
                return [bytes([3, 0x05, 0x00])]
            case 0x0C if body[1] & 0x60 == 0x20:  # PUBLISH QoS 1 -> PUBACK
                return [bytes([7, 0x0D]) + body[2:6] + b"\x00"]
            case 0x18:  # DISCONNECT (with or without duration) -> DISCONNECT
                return [bytes([2, 0x18])]
            case 0x16:  # PINGREQ
                flushed = self.buffered if len(body) > 1 else []
                self.buffered = []
                return [*flushed, bytes([2, 0x17])]
        return []

    def types(self) -> list[int]:
        return [(f[3] if f[0] == 0x01 else f[1]) for f in self.frames]


@pytest.fixture
async def setup() -> AsyncIterator[tuple[SimBleNetwork, BleTransport, Responder]]:
    """A simulated air with a started BleTransport answered by a Responder."""
    async with SimBleNetwork() as network:
        transport = BleTransport(backend=network.backend, connect_timeout=2.0, retry_delay=0.2)
        responder = Responder(transport)
        await transport.start(responder.deliver, responder.on_event)
        yield network, transport, responder
        await transport.close()


async def test_connect_and_publish_a_long_payload(
    setup: tuple[SimBleNetwork, BleTransport, Responder],
) -> None:
    """CONNECT/CONNACK and a 300-byte QoS 1 PUBLISH/PUBACK cross the 23-byte-MTU link."""
    network, _, responder = setup
    radio = BleSimNodeRadio(network, name="ble-1")
    async with SimNode("ble-1", radio, t_retry=1.0) as node:
        await node.connect(keepalive=30)
        assert node.state is ClientState.ACTIVE
        await node.publish(7, bytes(range(256)) + bytes(35), qos=1)
        assert (node.counters.published, node.counters.acked) == (1, 1)
    assert responder.types() == [0x04, 0x0C, 0x18]
    assert len(responder.frames[1]) == 300 and responder.frames[1][0] == 0x01
    await radio.close()


async def test_sleep_and_wake_over_ble(
    setup: tuple[SimBleNetwork, BleTransport, Responder],
) -> None:
    """Sleeping drops the BLE link (LINK_DOWN); waking reconnects and collects buffered data."""
    network, _, responder = setup
    radio = BleSimNodeRadio(network, name="ble-2")
    address = BleAddress(radio.address)
    async with SimNode("ble-2", radio, predefined={5: "cmd/ble-2"}, t_retry=1.0) as node:
        await node.connect(keepalive=30)
        await node.sleep(60)
        async with asyncio.timeout(5):
            await responder.link_down.wait()
        # PUBLISH QoS 0 to predefined topic id 5, kept for the sleeper (the core's job).
        responder.buffered = [bytes([9, 0x0C, 0x01, 0x00, 0x05, 0x00, 0x00]) + b"on"]
        woken = await node.wake()
        assert [(m.topic_id, m.payload) for m in woken] == [(5, b"on")]
    assert [e for a, e in responder.events if a == address][:3] == [
        LinkEvent.LINK_UP,
        LinkEvent.LINK_DOWN,
        LinkEvent.LINK_UP,
    ]
    assert radio.connections >= 2
    await radio.close()

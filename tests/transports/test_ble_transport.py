"""BleTransport over the simulated BLE air: real bleak code, bumble controllers, no mocks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from firmware_sim.radios.ble_backend import SimBleNetwork
from firmware_sim.radios.ble_node import BleSimNodeRadio
from transports.base import Address, LinkEvent
from transports.ble import BleAddress, BleTransport

PINGREQ = b"\x02\x16"
PINGRESP = b"\x02\x17"
WAIT = 5.0  # generous bound on every wait; the simulated air answers in milliseconds


def long_frame(size: int = 300, fill: int = 0) -> bytes:
    """A PUBLISH-typed frame in the three-byte length form."""
    body = bytes([0x0C]) + bytes((fill + i) & 0xFF for i in range(size - 4))
    return b"\x01" + size.to_bytes(2, "big") + body


class Gateway:
    """What the runtime would see: frames and link events, with waits."""

    def __init__(self) -> None:
        self.frames: list[tuple[Address, bytes]] = []
        self.events: list[tuple[Address, LinkEvent]] = []
        self._changed = asyncio.Event()

    def deliver(self, address: Address, frame: bytes) -> None:
        self.frames.append((address, frame))
        self._changed.set()

    def on_event(self, address: Address, event: LinkEvent) -> None:
        self.events.append((address, event))
        self._changed.set()

    def frames_from(self, address: Address) -> list[bytes]:
        return [f for a, f in self.frames if a == address]

    def count(self, address: Address, event: LinkEvent) -> int:
        return self.events.count((address, event))

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Wait for ``predicate``: re-checked on each frame or event, and every 20 ms."""
        async with asyncio.timeout(WAIT):
            while not predicate():
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.02):
                        await self._changed.wait()


class Node:
    """A simulated node radio plus the frames it received."""

    def __init__(self, radio: BleSimNodeRadio) -> None:
        self.radio = radio
        self.address = BleAddress(radio.address)
        self.received: list[bytes] = []
        self._changed = asyncio.Event()

    def receive(self, frame: bytes) -> None:
        self.received.append(frame)
        self._changed.set()

    async def until_received(self, n: int) -> None:
        async with asyncio.timeout(WAIT):
            while len(self.received) < n:
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
async def network() -> AsyncIterator[SimBleNetwork]:
    """A fresh simulated air."""
    async with SimBleNetwork() as net:
        yield net


@pytest.fixture
async def make_node(network: SimBleNetwork) -> AsyncIterator[Callable[..., Awaitable[Node]]]:
    """Factory of opened (advertising) node radios, closed after the test."""
    nodes: list[Node] = []

    async def make(**kwargs: Any) -> Node:
        node = Node(BleSimNodeRadio(network, **{"name": f"n{len(nodes)}", **kwargs}))
        await node.radio.open(node.receive)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        await node.radio.close()


@pytest.fixture
async def start_gateway(
    network: SimBleNetwork,
) -> AsyncIterator[Callable[..., Awaitable[tuple[BleTransport, Gateway]]]]:
    """Factory of started BleTransports on the simulated backend, closed after the test."""
    transports: list[BleTransport] = []

    async def start(**kwargs: Any) -> tuple[BleTransport, Gateway]:
        options = {"connect_timeout": 2.0, "retry_delay": 0.2, "scan_interval": 0.5, **kwargs}
        transport = BleTransport(backend=network.backend, **options)
        gateway = Gateway()
        await transport.start(gateway.deliver, gateway.on_event)
        transports.append(transport)
        return transport, gateway

    yield start
    for transport in transports:
        await transport.close()


async def test_discovers_by_service_uuid_and_connects(make_node: Any, start_gateway: Any) -> None:
    """The NUS node is connected (LINK_UP with its BleAddress); another service is ignored."""
    node = await make_node()
    stranger = await make_node(service_uuid="0000feed-0000-1000-8000-00805f9b34fb")
    transport, gw = await start_gateway()
    await gw.until(lambda: gw.count(node.address, LinkEvent.LINK_UP) == 1)
    await node.radio.wake_radio()  # returns once subscribed
    await asyncio.sleep(0.2)
    assert transport.connected == {node.address}
    assert stranger.radio.connections == 0
    assert transport.owns(node.address) and not transport.owns(("10.0.0.1", 1884))
    assert "links=1/8" in repr(transport)


async def test_node_to_gateway_frame(make_node: Any, start_gateway: Any) -> None:
    """A node's frame arrives whole, tagged with the node's BLE address."""
    _, gw = await start_gateway()
    node = await make_node()
    await node.radio.send(PINGREQ)  # waits until the gateway connected and subscribed
    await gw.until(lambda: len(gw.frames) == 1)
    assert gw.frames == [(node.address, PINGREQ)]
    assert gw.events[0] == (node.address, LinkEvent.LINK_UP)  # LINK_UP comes first


async def test_gateway_to_node_frame(make_node: Any, start_gateway: Any) -> None:
    """send(address, frame) writes to the node's RX characteristic."""
    transport, gw = await start_gateway()
    node = await make_node()
    await gw.until(lambda: node.address in transport.connected)
    transport.send(node.address, PINGRESP)
    await node.until_received(1)
    assert node.received == [PINGRESP]
    assert transport.counters["frames_out"] == 1


@pytest.mark.parametrize(("mtu", "chunk"), [(23, 20), (247, 244)])
async def test_frames_larger_than_the_mtu(
    make_node: Any, start_gateway: Any, mtu: int, chunk: int
) -> None:
    """300-byte long-form frames cross in (MTU - 3)-byte chunks, both ways, in order."""
    transport, gw = await start_gateway()
    node = await make_node(mtu=mtu)
    await gw.until(lambda: node.address in transport.connected)
    link = transport.link(node.address)
    assert link is not None and link.chunk_size == chunk
    assert node.radio.att_mtu == mtu
    frames = [long_frame(300, fill=1), PINGREQ, long_frame(600, fill=2)]
    for frame in frames:
        await node.radio.send(frame)
        transport.send(node.address, frame)
    await gw.until(lambda: len(gw.frames) == 3)
    await node.until_received(3)
    assert gw.frames_from(node.address) == frames
    assert node.received == frames


async def test_write_with_response_when_rx_lacks_write_without_response(
    make_node: Any, start_gateway: Any
) -> None:
    """An RX characteristic without Write Without Response gets Write Requests, still chunked."""
    transport, gw = await start_gateway()
    node = await make_node(write_without_response=False)
    await gw.until(lambda: node.address in transport.connected)
    link = transport.link(node.address)
    assert link is not None and link.write_with_response
    transport.send(node.address, long_frame(300))
    await node.until_received(1)
    assert node.received == [long_frame(300)]


async def test_five_nodes_at_once(make_node: Any, start_gateway: Any) -> None:
    """Five nodes connect; each one's frames reach the gateway and only its own come back."""
    transport, gw = await start_gateway()
    nodes = [await make_node(mtu=23 + 50 * i) for i in range(5)]
    await gw.until(lambda: transport.connected == {n.address for n in nodes})
    for i, node in enumerate(nodes):
        await node.radio.send(long_frame(100 + i, fill=i))
        transport.send(node.address, bytes([3, 0x17, i]))
    await gw.until(lambda: len(gw.frames) == 5)
    for i, node in enumerate(nodes):
        await node.until_received(1)
        assert gw.frames_from(node.address) == [long_frame(100 + i, fill=i)]
        assert node.received == [bytes([3, 0x17, i])]


async def test_connection_cap(make_node: Any, start_gateway: Any) -> None:
    """No more than max_connections links; a freed slot goes to a waiting node."""
    transport, gw = await start_gateway(max_connections=2)
    nodes = [await make_node() for _ in range(3)]
    await gw.until(lambda: len(transport.connected) == 2)
    await asyncio.sleep(0.3)  # several advertising intervals: the third must stay out
    assert len(transport.connected) == 2
    waiting = next(n for n in nodes if n.address not in transport.connected)
    sleeper = next(n for n in nodes if n.address in transport.connected)
    await sleeper.radio.sleep_radio()
    await gw.until(lambda: waiting.address in transport.connected)
    assert transport.connected == {n.address for n in nodes if n is not sleeper}
    assert sum(n.radio.connections for n in nodes) == 3


async def test_sleep_link_down_then_wake_link_up(make_node: Any, start_gateway: Any) -> None:
    """Sleep -> LINK_DOWN and sends are dropped (counted); wake -> reconnected, LINK_UP, traffic."""
    transport, gw = await start_gateway()
    node = await make_node()
    await node.radio.send(PINGREQ)
    await gw.until(lambda: len(gw.frames) == 1)
    await node.radio.sleep_radio()
    await gw.until(lambda: gw.count(node.address, LinkEvent.LINK_DOWN) == 1)
    transport.send(node.address, PINGRESP)  # the core buffers for sleepers, not the transport
    assert transport.counters["dropped_not_connected"] == 1
    await node.radio.wake_radio()
    await gw.until(lambda: gw.count(node.address, LinkEvent.LINK_UP) == 2)
    await node.radio.send(PINGREQ)
    transport.send(node.address, PINGRESP)
    await gw.until(lambda: len(gw.frames) == 2)
    await node.until_received(1)
    assert node.received == [PINGRESP]
    assert [e for a, e in gw.events if a == node.address] == [
        LinkEvent.LINK_UP,
        LinkEvent.LINK_DOWN,
        LinkEvent.LINK_UP,
    ]


async def test_vanish_mid_frame_does_not_desynchronise(
    make_node: Any, start_gateway: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Half a frame then a dropped link: the next connection starts clean, nothing is stitched."""
    transport, gw = await start_gateway()
    node = await make_node()
    await gw.until(lambda: node.address in transport.connected)
    await node.radio.vanish_mid_frame(long_frame(300))
    await gw.until(lambda: gw.count(node.address, LinkEvent.LINK_DOWN) == 1)
    await node.radio.wake_radio()
    await gw.until(lambda: gw.count(node.address, LinkEvent.LINK_UP) == 2)
    for frame in (PINGREQ, long_frame(300, fill=9)):
        await node.radio.send(frame)
    await gw.until(lambda: len(gw.frames) == 2)
    assert gw.frames_from(node.address) == [PINGREQ, long_frame(300, fill=9)]
    assert transport.counters["resyncs"] == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_node_vanishing_while_receiving_gets_a_clean_next_connection(
    make_node: Any, start_gateway: Any
) -> None:
    """The node drops out mid-way through a gateway frame; after waking it gets whole frames."""
    transport, gw = await start_gateway()
    node = await make_node()
    await gw.until(lambda: node.address in transport.connected)
    node.radio.vanish_when_receiving(after_bytes=100)
    transport.send(node.address, long_frame(600))
    await gw.until(lambda: gw.count(node.address, LinkEvent.LINK_DOWN) == 1)
    await node.radio.wake_radio()
    await gw.until(lambda: gw.count(node.address, LinkEvent.LINK_UP) == 2)
    transport.send(node.address, PINGRESP)
    transport.send(node.address, long_frame(300, fill=5))
    await node.until_received(2)
    assert node.received == [PINGRESP, long_frame(300, fill=5)]


async def test_node_without_the_tx_characteristic_is_not_linked(
    make_node: Any, start_gateway: Any
) -> None:
    """A node advertising the service but lacking TX fails to connect, with doubling back-off."""
    node = await make_node(tx_uuid="6e400099-b5a3-f393-e0a9-e50e24dcca9e")
    transport, gw = await start_gateway(retry_delay=0.2)
    await gw.until(lambda: transport.counters["connect_failures"] >= 1)
    await asyncio.sleep(0.5)
    assert transport.connected == set() and gw.events == []
    assert 1 <= transport.counters["connect_failures"] <= 3
    assert node.radio.connections == transport.counters["connect_failures"]


async def test_bad_header_resyncs_and_counts(
    make_node: Any, start_gateway: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage from a node is dropped with a counted WARNING; the next frame gets through."""
    transport, gw = await start_gateway()
    node = await make_node()
    with caplog.at_level(logging.WARNING, logger="transports.ble_stream"):
        await node.radio.send(b"\x00\x13\x37")
        await node.radio.send(PINGREQ)
        await gw.until(lambda: len(gw.frames) == 1)
    assert gw.frames == [(node.address, PINGREQ)]
    assert transport.counters["resyncs"] == 1
    assert str(node.address) in caplog.text


async def test_name_prefix_filter(make_node: Any, start_gateway: Any) -> None:
    """Only nodes whose advertised name starts with the prefix are connected."""
    wanted = await make_node(name="mqsn-1")
    other = await make_node(name="lamp-1")
    transport, gw = await start_gateway(name_prefix="mqsn-")
    await gw.until(lambda: wanted.address in transport.connected)
    await asyncio.sleep(0.3)
    assert transport.connected == {wanted.address}
    assert other.radio.connections == 0


async def test_allow_list_filter(make_node: Any, start_gateway: Any) -> None:
    """Only allow-listed addresses are connected (case-insensitive)."""
    nodes = [await make_node() for _ in range(3)]
    allowed = nodes[1]
    transport, gw = await start_gateway(allow_addresses={str(allowed.address).lower()})
    await gw.until(lambda: allowed.address in transport.connected)
    await asyncio.sleep(0.3)
    assert transport.connected == {allowed.address}


async def test_broadcast_reaches_every_connected_node(make_node: Any, start_gateway: Any) -> None:
    """broadcast() writes to each connected node (ADVERTISE/GWINFO)."""
    transport, gw = await start_gateway()
    nodes = [await make_node() for _ in range(2)]
    await gw.until(lambda: transport.connected == {n.address for n in nodes})
    transport.broadcast(b"\x05\x00\x01\x00\x3c", radius=1)
    for node in nodes:
        await node.until_received(1)
        assert node.received == [b"\x05\x00\x01\x00\x3c"]


async def test_oversize_and_unknown_addresses_are_dropped(
    make_node: Any, start_gateway: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Frames above max_frame_size and frames for strangers are counted, not sent."""
    transport, gw = await start_gateway(max_frame_size=256)
    node = await make_node()
    await gw.until(lambda: node.address in transport.connected)
    with caplog.at_level(logging.WARNING, logger="transports.ble"):
        transport.send(node.address, long_frame(300))
    transport.send(BleAddress("C0:FF:FF:FF:FF:FF"), PINGRESP)
    assert transport.counters["dropped_oversize"] == 1
    assert transport.counters["dropped_not_connected"] == 1
    assert transport.max_frame_size(node.address) == 256


async def test_close_disconnects_without_events(make_node: Any, start_gateway: Any) -> None:
    """close() drops every node but reports no LINK_DOWN; nodes go back to advertising."""
    transport, gw = await start_gateway()
    node = await make_node()
    await gw.until(lambda: node.address in transport.connected)
    await transport.close()
    assert transport.connected == set()
    assert gw.count(node.address, LinkEvent.LINK_DOWN) == 0
    await asyncio.sleep(0.05)
    assert not node.radio.is_ready

"""XBeeTransport against the simulated XBee network on a real pty: traffic, failures, replug."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from firmware_sim.radios.xbee_network import NodeFaults, XBeeNetwork, XBeeNodeLink
from gateway.errors import TransportError
from transports.base import Address, LinkEvent
from transports.xbee import XBEE_BROADCAST, XBeeAddress, XBeeTransport
from transports.xbee_frames import DeliveryStatus

NODE_A = 0x0013A200_41000001
NODE_B = 0x0013A200_41000002
NODE_C = 0x0013A200_41000003
SEARCHGW = b"\x03\x01\x00"  # MQTT-SN SEARCHGW radius 0
PUBLISH = b"\x0c\x0c\x00\x00\x01\x00\x01" + b"21.5C"
TRICKY = b"\x7e\x7d\x11\x13 escaped bytes \x7e"


@dataclass
class Gateway:
    transport: XBeeTransport
    received: asyncio.Queue[tuple[Address, bytes]]
    events: asyncio.Queue[tuple[Address, LinkEvent]]


async def eventually(predicate: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - polling state the transport does not signal
            await asyncio.sleep(0.01)


async def start_gateway(port: str, **options: object) -> Gateway:
    options = {"tx_timeout": 1.0, "reopen_backoff": (0.02, 0.2)} | options
    transport = XBeeTransport(port, **options)  # type: ignore[arg-type]
    gateway = Gateway(transport, asyncio.Queue(), asyncio.Queue())
    await transport.start(
        lambda a, f: gateway.received.put_nowait((a, f)),
        lambda a, e: gateway.events.put_nowait((a, e)),
    )
    return gateway


async def open_node(
    network: XBeeNetwork, ieee64: int, faults: NodeFaults | None = None
) -> tuple[XBeeNodeLink, asyncio.Queue[bytes]]:
    inbox: asyncio.Queue[bytes] = asyncio.Queue()
    link = network.add_node(ieee64, faults=faults)
    await link.open(inbox.put_nowait)
    return link, inbox


async def next_item(queue: asyncio.Queue, within: float = 2.0):  # type: ignore[type-arg]
    async with asyncio.timeout(within):
        return await queue.get()


@pytest.fixture
async def network() -> AsyncIterator[XBeeNetwork]:
    async with XBeeNetwork(seed=7) as net:
        yield net


@pytest.fixture
async def gateway(network: XBeeNetwork) -> AsyncIterator[Gateway]:
    gw = await start_gateway(network.port)
    yield gw
    await gw.transport.close()


async def test_start_reads_the_radio(network, gateway):
    """AP/SH/SL/NP/AI/VR/HV are read at start; NP becomes the frame limit."""
    radio = gateway.transport.radio
    assert radio is not None
    assert radio.ieee64 == network.coordinator.ieee64
    assert (radio.api_mode, radio.max_payload, radio.association) == (2, 84, 0)
    assert (radio.firmware, radio.hardware) == (0x100D, 0x4247)
    assert gateway.transport.max_frame_size(XBeeAddress(NODE_A)) == 84
    assert "open radio=0013A20041A7B3C1 NP=84" in repr(gateway.transport)


async def test_node_frame_is_delivered_with_its_address(network, gateway):
    link, _ = await open_node(network, NODE_A)
    await link.send(PUBLISH)
    assert await next_item(gateway.received) == (XBeeAddress(NODE_A), PUBLISH)
    assert str(XBeeAddress(NODE_A)) == "0013A20041000001"


async def test_send_reaches_the_node(network, gateway):
    _, inbox = await open_node(network, NODE_A)
    gateway.transport.send(XBeeAddress(NODE_A), TRICKY)
    assert await next_item(inbox) == TRICKY
    status = await gateway.transport.transmit(XBeeAddress(NODE_A), b"\x02\x17")
    assert status is DeliveryStatus.SUCCESS
    assert await next_item(inbox) == b"\x02\x17"
    await eventually(lambda: gateway.transport.stats["tx_ok"] == 2)


async def test_broadcast_reaches_every_node(network, gateway):
    inboxes = [(await open_node(network, ieee64))[1] for ieee64 in (NODE_A, NODE_B, NODE_C)]
    gateway.transport.broadcast(b"\x05\x02\x01\x00\x3c", radius=1)  # ADVERTISE
    for inbox in inboxes:
        assert await next_item(inbox) == b"\x05\x02\x01\x00\x3c"


async def test_node_broadcast_reaches_the_gateway(network, gateway):
    link, _ = await open_node(network, NODE_B)
    await link.broadcast(SEARCHGW, radius=1)
    assert await next_item(gateway.received) == (XBeeAddress(NODE_B), SEARCHGW)


async def test_oversize_frame_is_refused_counted_and_warned(network, gateway, caplog):
    _, inbox = await open_node(network, NODE_A)
    sent_before = network.coordinator.stats["transmit_requests"]
    with caplog.at_level(logging.WARNING, logger="transports.xbee"):
        gateway.transport.send(XBeeAddress(NODE_A), bytes(85))
    assert gateway.transport.stats["tx_oversize"] == 1
    assert "refusing a 85-byte frame for 0013A20041000001" in caplog.text
    assert "NP=84" in caplog.text
    status = await gateway.transport.transmit(XBeeAddress(NODE_A), bytes(84))  # exactly NP: ok
    assert status is DeliveryStatus.SUCCESS
    assert await next_item(inbox) == bytes(84)
    assert network.coordinator.stats["transmit_requests"] == sent_before + 1


async def test_mac_ack_failure_is_reported_as_send_failed(network, gateway):
    await open_node(network, NODE_A, NodeFaults(mac_ack_failure=True))
    gateway.transport.send(XBeeAddress(NODE_A), PUBLISH)
    assert await next_item(gateway.events) == (XBeeAddress(NODE_A), LinkEvent.SEND_FAILED)
    assert gateway.transport.stats["tx_status_mac_ack_failure"] == 1


async def test_unknown_address_is_reported_as_send_failed(gateway):
    status = await gateway.transport.transmit(XBeeAddress(0x0013A200_4DEADBEE), PUBLISH)
    assert status is DeliveryStatus.ADDRESS_NOT_FOUND
    assert await next_item(gateway.events) == (
        XBeeAddress(0x0013A200_4DEADBEE),
        LinkEvent.SEND_FAILED,
    )
    assert gateway.transport.stats["tx_status_address_not_found"] == 1


async def test_missing_transmit_status_times_out(network):
    await open_node(network, NODE_A, NodeFaults(latency=0.6))
    gw = await start_gateway(network.port, tx_timeout=0.2)
    try:
        assert await gw.transport.transmit(XBeeAddress(NODE_A), PUBLISH) is None
        assert await next_item(gw.events) == (XBeeAddress(NODE_A), LinkEvent.SEND_FAILED)
        assert gw.transport.stats["tx_timeout"] == 1
        await eventually(lambda: gw.transport.stats["rx_unsolicited"] == 1)  # the late status
    finally:
        await gw.transport.close()


async def test_order_is_kept_for_500_frames_from_one_node(network, gateway):
    link, _ = await open_node(network, NODE_A)
    frames = [b"\x07\x0c" + i.to_bytes(2, "big") + b"\x7e\x7d\x11" for i in range(500)]
    for frame in frames:
        await link.send(frame)
    got = [await next_item(gateway.received) for _ in frames]
    assert got == [(XBeeAddress(NODE_A), frame) for frame in frames]


async def test_more_than_255_in_flight_are_queued_not_lost(network):
    _, inbox = await open_node(network, NODE_A, NodeFaults(latency=0.2))
    gw = await start_gateway(network.port)
    try:
        frames = [i.to_bytes(2, "big") for i in range(300)]
        statuses = [gw.transport.transmit(XBeeAddress(NODE_A), frame) for frame in frames]
        assert "in_flight=255 backlog=45" in repr(gw.transport)
        assert set(await asyncio.gather(*statuses)) == {DeliveryStatus.SUCCESS}
        assert [inbox.get_nowait() for _ in frames] == frames
    finally:
        await gw.transport.close()


async def test_unplug_and_replug_reconnects(network, gateway, caplog):
    link, inbox = await open_node(network, NODE_A)
    transport = gateway.transport
    network.unplug()
    await eventually(lambda: "reopening" in repr(transport))
    assert "serial port" in caplog.text and "lost" in caplog.text
    transport.send(XBeeAddress(NODE_A), PUBLISH)  # port down: reported, not queued forever
    assert await next_item(gateway.events) == (XBeeAddress(NODE_A), LinkEvent.SEND_FAILED)
    await asyncio.sleep(0.1)  # a few reopen attempts fail while the port is gone
    network.replug()
    await eventually(lambda: transport.stats["reconnects"] == 1)
    assert network.coordinator.stats["at_AP"] >= 2  # the AT queries ran again
    await link.send(PUBLISH)
    assert await next_item(gateway.received) == (XBeeAddress(NODE_A), PUBLISH)
    assert await transport.transmit(XBeeAddress(NODE_A), b"back") is DeliveryStatus.SUCCESS
    assert await next_item(inbox) == b"back"


async def test_line_noise_is_skipped(network, gateway):
    link, _ = await open_node(network, NODE_A)
    network.coordinator.port.write(b"\x00\xff\x7e\x00\x05garbage" + b"\x7e\x7d")
    await link.send(PUBLISH)
    assert await next_item(gateway.received) == (XBeeAddress(NODE_A), PUBLISH)
    assert gateway.transport.stats["rx_noise_events"] >= 1


async def test_modem_status_is_logged_and_at_errors_are_clear(gateway, caplog):
    with caplog.at_level(logging.INFO, logger="transports.xbee"):
        assert await gateway.transport.at_command("FR") == b""  # software reset
        await eventually(lambda: "COORDINATOR_STARTED" in caplog.text)
    assert "modem status WATCHDOG_RESET (0x01)" in caplog.text
    assert await gateway.transport.at_command("NI") == b"MQTT-SN GW"
    with pytest.raises(TransportError, match="ATXX failed: INVALID_COMMAND"):
        await gateway.transport.at_command("XX")


async def test_a_failing_deliver_callback_does_not_stop_delivery(network, caplog):
    link, _ = await open_node(network, NODE_A)
    delivered: list[bytes] = []

    def deliver(address: Address, frame: bytes) -> None:
        if frame == b"boom":
            raise RuntimeError("a bug upstream")
        delivered.append(frame)

    transport = XBeeTransport(network.port)
    await transport.start(deliver)
    try:
        await link.send(b"boom")
        await link.send(b"fine")
        await eventually(lambda: delivered == [b"fine"])
        assert "deliver failed for a frame from 0013A20041000001" in caplog.text
    finally:
        await transport.close()


async def test_api_mode_1_end_to_end():
    async with XBeeNetwork(api_mode=1) as network:
        link, inbox = await open_node(network, NODE_A)
        gw = await start_gateway(network.port, api_mode=1)
        try:
            await link.send(TRICKY)
            assert await next_item(gw.received) == (XBeeAddress(NODE_A), TRICKY)
            assert await gw.transport.transmit(XBeeAddress(NODE_A), TRICKY) == 0
            assert await next_item(inbox) == TRICKY
        finally:
            await gw.transport.close()


async def test_api_mode_mismatch_is_a_clear_error():
    async with XBeeNetwork(api_mode=1) as network:
        transport = XBeeTransport(network.port, api_mode=2)
        with pytest.raises(TransportError, match=r"AP=1.*api_mode=2"):
            await transport.start(lambda a, f: None)
        assert "closed" in repr(transport)


async def test_missing_port_is_a_clear_error(tmp_path):
    transport = XBeeTransport(str(tmp_path / "ttyUSB9"))
    with pytest.raises(TransportError, match=r"cannot open .*ttyUSB9"):
        await transport.start(lambda a, f: None)


async def test_send_and_broadcast_use_the_documented_fields(network, gateway):
    """0x10 with dest16 0xFFFE, radius 0, options 0; broadcast to 0xFFFF with its radius."""
    seen = network.coordinator.requests  # the Transmit Requests the module heard, newest last
    gateway.transport.send(XBeeAddress(NODE_A), b"u")
    gateway.transport.broadcast(b"b", radius=3)
    await eventually(lambda: len(seen) == 2)
    unicast, broadcast = seen
    assert (unicast.dest64, unicast.dest16, unicast.radius, unicast.options) == (
        NODE_A,
        0xFFFE,
        0,
        0,
    )
    assert (broadcast.dest64, broadcast.radius) == (XBEE_BROADCAST.ieee64, 3)
    assert unicast.frame_id != 0 and broadcast.frame_id != 0


def test_constructor_validates():
    with pytest.raises(ValueError, match="api_mode"):
        XBeeTransport("/dev/null", api_mode=0)
    with pytest.raises(ValueError, match="reopen_backoff"):
        XBeeTransport("/dev/null", reopen_backoff=(2.0, 1.0))
    assert XBeeTransport("/dev/null").owns(XBeeAddress(1))

"""The simulated XBee network, spoken to by hand on its pty: AT answers, routing, faults, power."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest
import serial_asyncio

from firmware_sim.radios.xbee_network import NodeFaults, XBeeNetwork
from transports.xbee_frames import (
    ApiFrame,
    AtCommand,
    AtCommandQueue,
    AtResponse,
    AtStatus,
    DeliveryStatus,
    FrameDecoder,
    ModemStatus,
    ModemStatusCode,
    ReceiveOptions,
    ReceivePacket,
    TransmitRequest,
    TransmitStatus,
    encode_frame,
    parse_frame_data,
)

NODE_A = 0x0013A200_41000001
NODE_B = 0x0013A200_41000002
NODE_C = 0x0013A200_41000003


class RawHost:
    """The host end of the serial line, driven by hand: API frames out, API frames back."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, api_mode: int
    ) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder(api_mode)
        self.frames: list[ApiFrame] = []

    @classmethod
    async def open(cls, port: str, api_mode: int = 2) -> RawHost:
        reader, writer = await serial_asyncio.open_serial_connection(url=port, baudrate=9600)
        return cls(reader, writer, api_mode)

    def write(self, frame: ApiFrame) -> None:
        self.writer.write(encode_frame(frame, self.decoder.api_mode))

    async def read(self, within: float = 2.0) -> ApiFrame:
        async with asyncio.timeout(within):
            while not self.frames:
                chunk = await self.reader.read(1024)
                if not chunk:
                    raise EOFError("port closed")
                self.frames += [parse_frame_data(d) for d in self.decoder.feed(chunk)]
        return self.frames.pop(0)

    async def at(self, command: str, parameter: bytes = b"", *, queue: bool = False) -> AtResponse:
        kind = AtCommandQueue if queue else AtCommand
        self.write(kind(0x42, command, parameter))
        response = await self.read()
        assert isinstance(response, AtResponse) and response.frame_id == 0x42
        return response

    def close(self) -> None:
        self.writer.close()


def port_exists(path: str) -> bool:
    return os.path.exists(path)


@pytest.fixture
async def network() -> AsyncIterator[XBeeNetwork]:
    async with XBeeNetwork(seed=3) as net:
        yield net


@pytest.fixture
async def host(network: XBeeNetwork) -> AsyncIterator[RawHost]:
    raw = await RawHost.open(network.port)
    yield raw
    raw.close()


@pytest.mark.parametrize(
    ("command", "value"),
    [
        ("AP", "02"),
        ("SH", "0013a200"),
        ("SL", "41a7b3c1"),
        ("NP", "0054"),
        ("AI", "00"),
        ("VR", "100d"),
        ("HV", "4247"),
        ("MY", "0000"),
        ("ID", "0000000000002b2b"),
        ("CE", "01"),
        ("NI", b"MQTT-SN GW".hex()),
        ("BD", "03"),
        ("AO", "00"),
        ("EE", "00"),
    ],
)
async def test_answers_at_reads(host, command, value):
    response = await host.at(command)
    assert (response.command, response.status, response.data.hex()) == (command, 0, value)


async def test_at_sets_and_errors(host):
    assert (await host.at("NI", b"gw-7")).status is AtStatus.OK
    assert (await host.at("NI")).data == b"gw-7"
    assert (await host.at("SH", b"\x00")).status is AtStatus.INVALID_PARAMETER  # read-only
    assert (await host.at("AO", b"\x01")).status is AtStatus.INVALID_PARAMETER  # 0x91 not simulated
    assert (await host.at("XX")).status is AtStatus.INVALID_COMMAND


async def test_queued_set_waits_for_ac(host):
    """0x09 AT Command - Queue: the value applies on AC."""
    assert (await host.at("NI", b"later", queue=True)).status is AtStatus.OK
    assert (await host.at("NI", queue=True)).data == b"MQTT-SN GW"
    await host.at("AC")
    assert (await host.at("NI")).data == b"later"


async def test_ap_switch_changes_the_framing(network, host):
    await host.at("AP", b"\x01")  # answered in mode 2, then mode 1 from the next frame
    host.decoder = FrameDecoder(1)
    response = await host.at("SH")  # 0x13 in the value: raw in mode 1, escaped in mode 2
    assert response.data == bytes.fromhex("0013a200")
    assert network.coordinator.api_mode == 1


async def test_software_reset_reports_modem_status(host):
    await host.at("FR")
    assert await host.read() == ModemStatus(ModemStatusCode.WATCHDOG_RESET)
    assert await host.read() == ModemStatus(ModemStatusCode.COORDINATOR_STARTED)


async def test_payload_beyond_np_gets_0x74(network, host):
    inbox: list[bytes] = []
    await network.add_node(NODE_A).open(inbox.append)
    host.write(TransmitRequest(1, NODE_A, bytes(85)))
    assert await host.read() == TransmitStatus(1, DeliveryStatus.PAYLOAD_TOO_LARGE)
    host.write(TransmitRequest(2, NODE_A, bytes(84)))
    status = await host.read()
    assert isinstance(status, TransmitStatus) and status.delivery_status == 0
    assert inbox == [bytes(84)]


async def test_unicast_is_routed_by_64_bit_address(network, host):
    inboxes: dict[int, list[bytes]] = {NODE_A: [], NODE_B: []}
    links = {ieee: network.add_node(ieee) for ieee in inboxes}
    for ieee, link in links.items():
        await link.open(inboxes[ieee].append)
    host.write(TransmitRequest(9, NODE_B, b"\x7e for B"))
    assert await host.read() == TransmitStatus(9, DeliveryStatus.SUCCESS, links[NODE_B].nwk16)
    assert inboxes == {NODE_A: [], NODE_B: [b"\x7e for B"]}


async def test_unknown_or_switched_off_node_gets_0x24(network, host):
    link = network.add_node(NODE_A)  # added, never opened: radio off
    host.write(TransmitRequest(3, NODE_A, b"x"))
    host.write(TransmitRequest(4, NODE_C, b"x"))
    for frame_id in (3, 4):
        status = await host.read()
        assert isinstance(status, TransmitStatus)
        assert (status.frame_id, status.delivery_status) == (
            frame_id,
            DeliveryStatus.ADDRESS_NOT_FOUND,
        )
    assert "off" in repr(link)


async def test_frame_id_zero_asks_for_no_status(network, host):
    await network.add_node(NODE_A).open(lambda frame: None)
    host.write(TransmitRequest(0, NODE_A, b"quiet"))
    host.write(TransmitRequest(5, NODE_A, b"loud"))
    status = await host.read()
    assert isinstance(status, TransmitStatus) and status.frame_id == 5


async def test_node_traffic_becomes_0x90(network, host):
    heard_by_c: list[bytes] = []
    a, b, c = (network.add_node(ieee) for ieee in (NODE_A, NODE_B, NODE_C))
    await a.open(lambda frame: None)
    await c.open(heard_by_c.append)
    await b.open(lambda frame: None)
    await a.send(b"unicast")
    await b.broadcast(b"\x03\x01\x00")
    assert await host.read() == ReceivePacket(
        NODE_A, b"unicast", a.nwk16, ReceiveOptions.ACKNOWLEDGED | ReceiveOptions.FROM_END_DEVICE
    )
    broadcast = await host.read()
    assert isinstance(broadcast, ReceivePacket)
    assert (broadcast.src64, broadcast.options & ReceiveOptions.BROADCAST) == (NODE_B, 0x02)
    await asyncio.sleep(0.01)
    assert heard_by_c == [b"\x03\x01\x00"]  # other nodes hear a broadcast too


async def test_host_broadcast_reaches_awake_nodes_only(network, host):
    inbox_a: list[bytes] = []
    inbox_b: list[bytes] = []
    a, b = network.add_node(NODE_A), network.add_node(NODE_B)
    await a.open(inbox_a.append)
    await b.open(inbox_b.append)
    await b.sleep_radio()
    host.write(TransmitRequest(1, 0xFFFF, b"advertise", radius=1))
    assert await host.read() == TransmitStatus(1, DeliveryStatus.SUCCESS)
    await asyncio.sleep(0.01)
    assert (inbox_a, inbox_b) == ([b"advertise"], [])


async def test_sleeping_end_device_gets_held_frames_on_wake(network, host):
    inbox: list[bytes] = []
    link = network.add_node(NODE_A)
    await link.open(inbox.append)
    await link.sleep_radio()
    host.write(TransmitRequest(1, NODE_A, b"one"))
    host.write(TransmitRequest(2, NODE_A, b"two"))
    with pytest.raises(TimeoutError):
        await host.read(within=0.1)
    assert "held=2" in repr(link)
    await link.wake_radio()
    statuses = [await host.read(), await host.read()]
    assert [(s.frame_id, s.delivery_status) for s in statuses] == [(1, 0), (2, 0)]  # type: ignore[union-attr]
    assert inbox == [b"one", b"two"]


async def test_held_frame_expires_with_a_failure():
    async with XBeeNetwork(indirect_timeout=0.05) as network:
        host = await RawHost.open(network.port)
        link = network.add_node(NODE_A)
        await link.open(lambda frame: None)
        await link.sleep_radio()
        host.write(TransmitRequest(1, NODE_A, b"too late"))
        assert await host.read() == TransmitStatus(1, DeliveryStatus.NETWORK_ACK_FAILURE)
        host.close()


async def test_injected_faults(network, host):
    deaf = network.add_node(NODE_A, faults=NodeFaults(mac_ack_failure=True))
    lossy = network.add_node(NODE_B, faults=NodeFaults(loss=1.0))
    for link in (deaf, lossy):
        await link.open(lambda frame: None)
    host.write(TransmitRequest(1, NODE_A, b"x"))
    host.write(TransmitRequest(2, NODE_B, b"x"))
    for frame_id in (1, 2):
        assert await host.read() == TransmitStatus(
            frame_id, DeliveryStatus.MAC_ACK_FAILURE, retry_count=3
        )
    await lossy.send(b"lost")
    assert network.stats["uplink_lost"] == 1
    network.set_faults(NODE_B, NodeFaults(loss=0.5))
    for _ in range(200):
        await lossy.send(b"maybe")
    assert 50 < network.stats["uplink_lost"] < 150


async def test_latency_delays_but_keeps_order(network, host):
    link = network.add_node(NODE_A, faults=NodeFaults(latency=0.05))
    await link.open(lambda frame: None)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(20):
        await link.send(bytes((i,)))
    got = [await host.read() for _ in range(20)]
    assert loop.time() - started >= 0.05
    assert [p.rf_data for p in got] == [bytes((i,)) for i in range(20)]  # type: ignore[union-attr]


async def test_unplug_and_replug(network, host):
    link = network.add_node(NODE_A)
    await link.open(lambda frame: None)
    network.unplug()
    assert not port_exists(network.port)
    await link.send(b"into the void")
    await asyncio.sleep(0.01)
    assert network.stats["uplink_lost_unplugged"] == 1
    with pytest.raises((EOFError, OSError)):
        await host.read()  # the host's open port is dead, as with a pulled USB adapter
    network.replug()
    assert port_exists(network.port)
    again = await RawHost.open(network.port)
    assert (await again.at("SL")).data.hex() == "41a7b3c1"
    await link.send(b"back")
    assert (await again.read()).rf_data == b"back"  # type: ignore[union-attr]
    again.close()
    assert "plugged" in repr(network)


def test_node_faults_validate():
    with pytest.raises(ValueError, match="loss"):
        NodeFaults(loss=1.5)
    with pytest.raises(ValueError, match="latency"):
        NodeFaults(latency=-1)

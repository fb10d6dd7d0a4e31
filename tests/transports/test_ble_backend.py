"""Plain bleak code against the bumble-based simulated backend: scan, connect, GATT, disconnect."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic

from firmware_sim.radios.ble_backend import SimBleNetwork
from firmware_sim.radios.ble_node import BleSimNodeRadio
from transports.ble_stream import NUS_RX_UUID, NUS_SERVICE_UUID, NUS_TX_UUID

OTHER_SERVICE = "0000feed-0000-1000-8000-00805f9b34fb"


@pytest.fixture
async def network() -> AsyncIterator[SimBleNetwork]:
    """A fresh simulated air, closed after the test."""
    async with SimBleNetwork() as net:
        yield net


@pytest.fixture
async def node(network: SimBleNetwork) -> AsyncIterator[tuple[BleSimNodeRadio, list[bytes]]]:
    """One advertising NUS node (MTU 247) and the list of frames it received."""
    radio = BleSimNodeRadio(network, name="node-1", mtu=247)
    received: list[bytes] = []
    await radio.open(received.append)
    yield radio, received
    await radio.close()


async def test_scanner_filters_by_service_uuid(network: SimBleNetwork) -> None:
    """BleakScanner(service_uuids=...) hears the NUS node and not a node with another service."""
    nus = BleSimNodeRadio(network, name="nus")
    other = BleSimNodeRadio(network, name="other", service_uuid=OTHER_SERVICE)
    await nus.open(lambda f: None)
    await other.open(lambda f: None)
    scanner_cls, _ = network.backend
    found = await BleakScanner.discover(
        timeout=0.2, return_adv=True, service_uuids=[NUS_SERVICE_UUID], backend=scanner_cls
    )
    assert set(found) == {nus.address}
    _, adv = found[nus.address]
    assert adv.local_name == "nus" and NUS_SERVICE_UUID in adv.service_uuids
    everyone = await BleakScanner.discover(timeout=0.2, backend=scanner_cls)
    assert {d.address for d in everyone} == {nus.address, other.address}
    await nus.close()
    await other.close()


async def test_long_name_is_shortened_to_fit_advertising_data(network: SimBleNetwork) -> None:
    """A 128-bit service UUID leaves 8 bytes of the 31 for the name."""
    radio = BleSimNodeRadio(network, name="a-very-long-node-name")
    await radio.open(lambda f: None)
    scanner_cls, _ = network.backend
    device = await BleakScanner.find_device_by_address(
        radio.address, timeout=1, backend=scanner_cls
    )
    assert device is not None and device.name == "a-very-l"
    await radio.close()


async def test_connect_discover_notify_write(
    network: SimBleNetwork, node: tuple[BleSimNodeRadio, list[bytes]]
) -> None:
    """Connect in about one advertising interval; GATT works both ways."""
    radio, received = node
    scanner_cls, client_cls = network.backend
    device = await BleakScanner.find_device_by_address(
        radio.address, timeout=1, backend=scanner_cls
    )
    assert device is not None
    notified: list[bytes] = []

    def on_notify(_char: BleakGATTCharacteristic, data: bytearray) -> None:
        notified.append(bytes(data))

    started = time.monotonic()
    async with BleakClient(device, backend=client_cls, timeout=2) as client:
        assert time.monotonic() - started < 1.0  # bumble's default interval would make it ~1 s
        assert client.mtu_size == 247
        rx = client.services.get_characteristic(NUS_RX_UUID)
        assert rx is not None and rx.max_write_without_response_size == 244
        assert set(rx.properties) == {"write", "write-without-response"}
        name = await client.read_gatt_char("00002a00-0000-1000-8000-00805f9b34fb")
        assert name == bytearray(b"node-1")
        await client.start_notify(NUS_TX_UUID, on_notify)
        await radio.send(b"\x03\x16\x00")
        await client.write_gatt_char(NUS_RX_UUID, b"\x02\x17", response=True)
        await client.write_gatt_char(NUS_RX_UUID, b"\x02\x16", response=False)
        await asyncio.sleep(0.05)
        await client.stop_notify(NUS_TX_UUID)
    assert notified == [b"\x03\x16\x00"]
    assert received == [b"\x02\x17", b"\x02\x16"]


async def test_default_mtu_is_23(network: SimBleNetwork) -> None:
    """A node that accepts no larger MTU keeps 23 (20-byte writes); services= filters."""
    radio = BleSimNodeRadio(network, name="small")
    await radio.open(lambda f: None)
    _, client_cls = network.backend
    async with BleakClient(
        radio.address, services=[NUS_SERVICE_UUID], backend=client_cls, timeout=2
    ) as client:
        assert client.mtu_size == 23
        assert [s.uuid for s in client.services] == [NUS_SERVICE_UUID]  # filtered discovery
        rx = client.services.get_characteristic(NUS_RX_UUID)
        assert rx is not None and rx.max_write_without_response_size == 20
    await radio.close()


async def test_disconnected_callback_on_node_sleep(
    network: SimBleNetwork, node: tuple[BleSimNodeRadio, list[bytes]]
) -> None:
    """An unsolicited disconnect (the node sleeps) calls bleak's disconnected_callback."""
    radio, _ = node
    _, client_cls = network.backend
    gone = asyncio.Event()
    client = BleakClient(radio.address, lambda c: gone.set(), backend=client_cls, timeout=2)
    await client.connect()
    await client.start_notify(NUS_TX_UUID, lambda c, d: None)
    await radio.sleep_radio()
    async with asyncio.timeout(2):
        await gone.wait()
    assert not client.is_connected


async def test_connect_timeout_then_next_connect_works(
    network: SimBleNetwork, node: tuple[BleSimNodeRadio, list[bytes]]
) -> None:
    """A connect to a silent address times out without wedging the simulated controller."""
    radio, _ = node
    _, client_cls = network.backend
    with pytest.raises(TimeoutError):
        await BleakClient("C0:00:00:00:FF:FF", backend=client_cls, timeout=0.2).connect()
    async with BleakClient(radio.address, backend=client_cls, timeout=2) as client:
        assert client.is_connected

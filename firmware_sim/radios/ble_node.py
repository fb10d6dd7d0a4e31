"""One simulated sensor node's BLE radio: a bumble GATT peripheral (NUS service) as a NodeLink.

The node advertises (every 20 ms by default) until the gateway connects and enables TX
notifications; then ``send`` notifies frames chunked by the connection's ATT MTU, and frames the
gateway writes to RX are reassembled and handed to the node. The link format is documented in
``transports/ble_stream.py``.

Usage::

    network = SimBleNetwork()
    radio = BleSimNodeRadio(network, name="node-1")
    node = SimNode("node-1", radio)          # or: await radio.open(on_frame)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from bumble import core, hci
from bumble.core import UUID, AdvertisingData
from bumble.device import Connection, Device
from bumble.gatt import Characteristic, CharacteristicValue, Service

from firmware_sim.link import FrameReceiver, NodeLink
from firmware_sim.radios.ble_backend import SimBleNetwork, new_bumble_device
from gateway.errors import TransportError
from transports.ble_stream import (
    ATT_DEFAULT_MTU,
    DEFAULT_MAX_FRAME_SIZE,
    NUS_RX_UUID,
    NUS_SERVICE_UUID,
    NUS_TX_UUID,
    StreamReassembler,
    chunk_size_for_mtu,
    split_frame,
)

__all__ = ["BleSimNodeRadio"]

_LOGGER = logging.getLogger(__name__)

_ADV_DATA_MAX = 31  # legacy advertising PDU payload
_DISCONNECT_TIMEOUT = 2.0
_USER_TERMINATED = hci.HCI_REMOTE_USER_TERMINATED_CONNECTION_ERROR
_OUT_OF_RANGE = hci.HCI_CONNECTION_TIMEOUT_ERROR  # what a supervision timeout reports


class BleSimNodeRadio(NodeLink):
    """A sensor node's BLE peripheral on a ``SimBleNetwork``.

    Args:
        network: the simulated air to join.
        name: advertised local name (shortened to fit the 31-byte advertising data when the
            service UUID is 128-bit: 8 bytes for NUS) and GAP device name.
        address: static random address; allocated from the network when omitted.
        mtu: the largest ATT MTU this node accepts in the exchange (23 = no larger MTU).
        advertising_interval: seconds between advertisements (bumble's floor is 10 ms).
        write_without_response: give RX the Write Without Response property (else the gateway
            must write with response).
        link_timeout: how long ``send`` and ``wake_radio`` wait for the gateway to connect and
            enable notifications before raising ``TransportError``.
    """

    def __init__(
        self,
        network: SimBleNetwork,
        *,
        name: str = "mqttsn",
        address: str | None = None,
        mtu: int = ATT_DEFAULT_MTU,
        service_uuid: str = NUS_SERVICE_UUID,
        rx_uuid: str = NUS_RX_UUID,
        tx_uuid: str = NUS_TX_UUID,
        advertising_interval: float = 0.020,
        write_without_response: bool = True,
        link_timeout: float = 10.0,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        self.network = network
        self.name = name
        self.address = (address or network.allocate_node_address()).upper()
        self.mtu = mtu
        self.advertising_interval = advertising_interval
        self.write_without_response = write_without_response
        self.link_timeout = link_timeout
        self.max_frame_size = max_frame_size
        self._uuids = (UUID(service_uuid), UUID(rx_uuid), UUID(tx_uuid))
        self._device: Device | None = None
        self._tx: Characteristic[bytes] | None = None
        self._receive: FrameReceiver | None = None
        self._connection: Connection | None = None
        self._reassembler = StreamReassembler(max_frame_size, peer=f"gateway@{self.address}")
        self._ready = asyncio.Event()  # connected and TX notifications enabled
        self._send_lock = asyncio.Lock()  # one frame's chunks are never interleaved with another's
        self._adv_lock = asyncio.Lock()
        self._awake = False
        self._vanish_after: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.frames_sent = 0
        self.frames_received = 0
        self.connections = 0

    def __repr__(self) -> str:
        state = "closed" if self._device is None else "awake" if self._awake else "asleep"
        peer = self._connection.peer_address if self._connection else None
        return (
            f"<BleSimNodeRadio {self.name!r} {self.address} {state} peer={peer} "
            f"ready={self._ready.is_set()} mtu={self.att_mtu} sent={self.frames_sent} "
            f"received={self.frames_received}>"
        )

    @property
    def is_ready(self) -> bool:
        """True while a gateway is connected and has enabled TX notifications."""
        return self._ready.is_set()

    @property
    def att_mtu(self) -> int:
        """The ATT MTU of the live connection (23 when there is none)."""
        return self._connection.att_mtu if self._connection else ATT_DEFAULT_MTU

    async def open(self, receive: FrameReceiver) -> None:
        """Power the radio up, publish the NUS service and start advertising."""
        if self._device is not None:
            raise RuntimeError(f"{self!r} is already open")
        self._receive = receive
        controller, device = new_bumble_device(self.network.link, self.name, self.address)
        service_uuid, rx_uuid, tx_uuid = self._uuids
        rx_properties = Characteristic.Properties.WRITE
        if self.write_without_response:
            rx_properties |= Characteristic.Properties.WRITE_WITHOUT_RESPONSE
        rx: Characteristic[bytes] = Characteristic(
            rx_uuid,
            rx_properties,
            Characteristic.WRITEABLE,
            CharacteristicValue[bytes](write=self._on_rx_write),
        )
        tx: Characteristic[bytes] = Characteristic(
            tx_uuid, Characteristic.Properties.NOTIFY, Characteristic.READABLE, b""
        )
        tx.on(tx.EVENT_SUBSCRIPTION, self._on_subscription)
        device.add_service(Service(service_uuid, [rx, tx]))
        device.gatt_server.max_mtu = self.mtu
        device.on(device.EVENT_CONNECTION, self._on_connection)
        self._controller, self._device, self._tx = controller, device, tx
        await device.power_on()
        self._awake = True
        await self._advertise()

    async def send(self, frame: bytes) -> None:
        """Notify one frame to the gateway, waiting (bounded) for it to connect and subscribe.

        Raises:
            TransportError: the radio sleeps, no gateway subscribed within ``link_timeout``, or
                the link dropped while the frame was going out.
        """
        if not self._awake:
            raise TransportError(f"{self.name}: the BLE radio is asleep; frame not sent")
        await self._wait_ready()
        async with self._send_lock:
            if not await self._notify(frame):
                raise TransportError(f"{self.name}: BLE link lost while sending")
            self.frames_sent += 1

    async def broadcast(self, frame: bytes, radius: int = 0) -> None:
        """A BLE node's only reach is the gateway it is connected to."""
        await self.send(frame)

    async def close(self) -> None:
        """Stop advertising, drop the connection and leave the air."""
        if self._device is None:
            return
        self._awake = False
        for task in list(self._tasks):
            task.cancel()
        await self._go_quiet(_USER_TERMINATED)
        for connection in list(self._device.connections.values()):  # e.g. a cancelled vanish
            await self._shut_down(connection, _USER_TERMINATED)
        await self._device.power_off()
        with contextlib.suppress(KeyError):
            self.network.link.remove_controller(self._controller)
        self._device = None

    async def sleep_radio(self) -> None:
        """Stop advertising and disconnect (the gateway sees LINK_DOWN)."""
        self._awake = False
        await self._go_quiet(_USER_TERMINATED)

    async def wake_radio(self) -> None:
        """Advertise again and wait until the gateway has reconnected and subscribed."""
        if self._device is None:
            raise RuntimeError(f"{self!r} is not open")
        if not self._awake:
            self._awake = True
            await self._advertise()
        await self._wait_ready()

    async def vanish_mid_frame(self, frame: bytes) -> None:
        """Send the first half of ``frame``, then drop the link as if out of range (radio off).

        The node stays silent until ``wake_radio()``; the gateway must not stitch the half
        frame to what the next connection carries.
        """
        await self._wait_ready()
        async with self._send_lock:
            await self._notify(frame[: max(1, len(frame) // 2)])
        self._awake = False
        await self._go_quiet(_OUT_OF_RANGE)

    def vanish_when_receiving(self, after_bytes: int) -> None:
        """Arm a one-shot fault: drop the link while a frame from the gateway is half received.

        Once ``after_bytes`` of an incomplete frame have arrived, the node goes quiet as if out
        of range (radio off until ``wake_radio()``).
        """
        self._vanish_after = after_bytes

    async def _wait_ready(self) -> None:
        try:
            async with asyncio.timeout(self.link_timeout):
                await self._ready.wait()
        except TimeoutError:
            raise TransportError(
                f"{self.name}: no gateway connected and subscribed within {self.link_timeout}s"
            ) from None

    async def _notify(self, data: bytes) -> bool:
        """Notify ``data`` in MTU-sized chunks; False if the connection went away first."""
        connection, device, tx = self._connection, self._device, self._tx
        if connection is None or device is None or tx is None:
            return False
        for chunk in split_frame(data, chunk_size_for_mtu(connection.att_mtu)):
            if connection is not self._connection:
                return False
            await device.notify_subscriber(connection, tx, chunk)
        return True

    async def _advertise(self) -> None:
        """Advertise if awake and unconnected (serialised: bumble's sets break on overlap)."""
        async with self._adv_lock:
            device = self._device
            if device is None or not self._awake or self._connection is not None:
                return
            await device.start_advertising(
                advertising_data=self._advertising_data(),
                advertising_interval_min=self.advertising_interval * 1000,
                advertising_interval_max=self.advertising_interval * 1000,
            )

    async def _stop_advertising(self) -> None:
        async with self._adv_lock:
            if self._device is not None:
                await self._device.stop_advertising()

    def _advertising_data(self) -> bytes:
        service = self._uuids[0]
        uuid_type = (
            AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS
            if len(service.to_bytes()) == 2
            else AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS
        )
        head = [(AdvertisingData.FLAGS, bytes([0x06])), (uuid_type, service.to_bytes())]
        room = _ADV_DATA_MAX - len(bytes(AdvertisingData(head))) - 2
        name = self.name.encode()
        name_type = AdvertisingData.COMPLETE_LOCAL_NAME
        if len(name) > room:
            name, name_type = name[:room], AdvertisingData.SHORTENED_LOCAL_NAME
        return bytes(AdvertisingData([*head, (name_type, name)]))

    async def _go_quiet(self, reason: int) -> None:
        """Stop advertising and drop the connection (the caller cleared ``_awake`` first)."""
        # From here on the radio is off: chunks still in flight are not heard.
        connection = self._connection
        self._forget_connection()
        await self._shut_down(connection, reason)

    async def _shut_down(self, connection: Connection | None, reason: int) -> None:
        device = self._device
        if device is None:
            return
        await self._stop_advertising()
        if connection is not None and connection.handle in device.connections:
            with contextlib.suppress(core.BaseBumbleError, TimeoutError):
                async with asyncio.timeout(_DISCONNECT_TIMEOUT):
                    await connection.disconnect(reason)

    def _on_connection(self, connection: Connection) -> None:
        if not self._awake:  # the radio went to sleep while this connection was forming
            self._spawn(self._shut_down(connection, _USER_TERMINATED))
            return
        self._connection = connection
        self.connections += 1
        self._reassembler.reset()  # link format rule 2: a frame never straddles connections
        connection.on(
            connection.EVENT_DISCONNECTION,
            lambda reason: self._on_disconnection(connection, reason),
        )
        _LOGGER.debug("%s: connected to %s", self.name, connection.peer_address)

    def _on_subscription(self, bearer: Any, notify_enabled: bool, indicate_enabled: bool) -> None:
        if bearer is self._connection and notify_enabled:
            self._ready.set()
        elif bearer is self._connection:
            self._ready.clear()

    def _on_disconnection(self, connection: Connection, reason: int) -> None:
        if connection is not self._connection:
            return
        self._forget_connection()
        _LOGGER.debug("%s: disconnected (reason 0x%02X)", self.name, reason)
        if self._awake and self._device is not None:
            # A peripheral that lost its central advertises again, as real firmware does.
            self._spawn(self._readvertise())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _readvertise(self) -> None:
        with contextlib.suppress(core.BaseBumbleError):
            await self._advertise()

    def _forget_connection(self) -> None:
        self._connection = None
        self._ready.clear()
        self._reassembler.reset()

    def _on_rx_write(self, connection: Connection, value: bytes) -> None:
        if connection is not self._connection or self._receive is None:
            return
        for frame in self._reassembler.feed(bytes(value)):
            self.frames_received += 1
            self._receive(frame)
        if self._vanish_after is not None and self._reassembler.buffered >= self._vanish_after:
            self._vanish_after = None
            self._awake = False
            self._forget_connection()  # deaf at once: the rest of the frame is already in flight
            self._spawn(self._shut_down(connection, _OUT_OF_RANGE))

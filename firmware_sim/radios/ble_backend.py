"""A bleak backend on Google's bumble: plain bleak code scans and connects over a simulated radio.

``SimBleNetwork`` is the air: one ``bumble.link.LocalLink`` joining virtual controllers. Each
gateway adapter on it (``SimAdapter``, the stand-in for ``hci0``) is a bumble ``Controller`` +
``Host`` + ``Device`` acting as central; ``SimBleakScanner`` / ``SimBleakClient`` implement bleak's
``BaseBleakScanner`` / ``BaseBleakClient`` on top of it, so ``BleakScanner(backend=...)`` and
``BleakClient(backend=...)`` work unchanged. Sensor nodes are bumble peripherals on the same link
(``firmware_sim.radios.ble_node.BleSimNodeRadio``).

Usage::

    network = SimBleNetwork()
    transport = BleTransport(backend=network.backend)   # (scanner class, client class)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, ClassVar, TypeVar

from bleak.assigned_numbers import CHARACTERISTIC_PROPERTIES
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError, BleakGATTProtocolError
from bleak.uuids import normalize_uuid_str
from bumble import att, core, hci
from bumble.controller import Controller
from bumble.core import UUID, AdvertisingData
from bumble.device import Advertisement, Connection, Device
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport.common import AsyncPipeSink

__all__ = ["SimAdapter", "SimBleNetwork", "SimBleakClient", "SimBleakScanner"]

_LOGGER = logging.getLogger(__name__)
_T = TypeVar("_T")

DEFAULT_CENTRAL_MTU = 517  # what BlueZ asks for in its MTU exchange
_DISCONNECT_TIMEOUT = 2.0
_UUID_LISTS = (
    (AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS, 2),
    (AdvertisingData.INCOMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS, 2),
    (AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS, 16),
    (AdvertisingData.INCOMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS, 16),
)


def new_bumble_device(link: LocalLink, name: str, address: str) -> tuple[Controller, Device]:
    """A virtual controller on ``link`` and a bumble Device driving it (static random address)."""
    controller = Controller(name, link=link, public_address=address)
    device = Device(
        name=name, address=hci.Address(address), host=Host(controller, AsyncPipeSink(controller))
    )
    return controller, device


def bleak_uuid(uuid: UUID) -> str:
    """A bumble UUID as bleak spells it (lower-case, 128-bit)."""
    return normalize_uuid_str(uuid.to_hex_str("-"))


class SimBleNetwork:
    """The simulated air: one LocalLink shared by gateway adapters and sensor nodes."""

    def __init__(self, *, central_mtu: int = DEFAULT_CENTRAL_MTU) -> None:
        self.link = LocalLink()  # type: ignore[no-untyped-call]
        self.central_mtu = central_mtu
        self.adapters: list[SimAdapter] = []
        self._node_numbers = itertools.count(1)
        self._default: tuple[type[SimBleakScanner], type[SimBleakClient]] | None = None

    def __repr__(self) -> str:
        controllers = len(self.link.controllers)
        return f"<SimBleNetwork controllers={controllers} adapters={len(self.adapters)}>"

    @property
    def backend(self) -> tuple[type[SimBleakScanner], type[SimBleakClient]]:
        """The (scanner, client) backend classes of this network's first gateway adapter."""
        if self._default is None:
            self._default = self.add_adapter()
        return self._default

    def add_adapter(
        self, address: str | None = None
    ) -> tuple[type[SimBleakScanner], type[SimBleakClient]]:
        """One more gateway adapter (several gateways on one air); returns its backend classes."""
        number = len(self.adapters) + 1
        adapter = SimAdapter(
            self, address or f"F0:00:00:00:00:{number:02X}", name=f"hci{number - 1}"
        )
        self.adapters.append(adapter)
        scanner = type("SimBleakScanner", (SimBleakScanner,), {"adapter": adapter})
        client = type("SimBleakClient", (SimBleakClient,), {"adapter": adapter})
        return scanner, client

    def allocate_node_address(self) -> str:
        """A fresh static random address for a sensor node (top two bits set)."""
        n = next(self._node_numbers)
        return f"C0:00:00:00:{n >> 8 & 0xFF:02X}:{n & 0xFF:02X}"

    async def close(self) -> None:
        """Power every gateway adapter down (nodes close themselves)."""
        for adapter in self.adapters:
            await adapter.close()

    async def __aenter__(self) -> SimBleNetwork:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class SimAdapter:
    """One gateway Bluetooth adapter: a bumble central shared by a scanner and many clients."""

    def __init__(self, network: SimBleNetwork, address: str, *, name: str) -> None:
        self.network = network
        self.address = address
        self.name = name
        self.controller, self.device = new_bumble_device(network.link, name, address)
        self._power_lock = asyncio.Lock()
        self._connect_lock = asyncio.Lock()  # the controller allows one pending LE connection
        self._scan_lock = asyncio.Lock()
        self._scan_listeners: list[Callable[[Advertisement], None]] = []
        self.device.on(self.device.EVENT_ADVERTISEMENT, self._on_advertisement)
        self.powered = False

    def __repr__(self) -> str:
        return (
            f"<SimAdapter {self.name} {self.address} powered={self.powered} "
            f"connections={len(self.device.connections)} scanners={len(self._scan_listeners)}>"
        )

    async def power_on(self) -> None:
        """Bring the controller up (idempotent)."""
        async with self._power_lock:
            if not self.powered:
                await self.device.power_on()
                self.powered = True

    async def close(self) -> None:
        """Drop every connection and power down."""
        if not self.powered:
            return
        for connection in list(self.device.connections.values()):
            with contextlib.suppress(core.BaseBumbleError, TimeoutError):
                async with asyncio.timeout(_DISCONNECT_TIMEOUT):
                    await connection.disconnect()
        self._scan_listeners.clear()
        await self.device.power_off()
        self.powered = False

    async def start_scan(self, listener: Callable[[Advertisement], None]) -> None:
        """Start passing every advertisement heard to ``listener``."""
        await self.power_on()
        async with self._scan_lock:
            self._scan_listeners.append(listener)
            if len(self._scan_listeners) == 1:
                await self.device.start_scanning(filter_duplicates=False)

    async def stop_scan(self, listener: Callable[[Advertisement], None]) -> None:
        """Stop passing advertisements to ``listener``; the radio stops when nobody listens."""
        async with self._scan_lock:
            with contextlib.suppress(ValueError):
                self._scan_listeners.remove(listener)
            if not self._scan_listeners and self.powered and self.device.scanning:
                await self.device.stop_scanning()

    def _on_advertisement(self, advertisement: Advertisement) -> None:
        for listener in list(self._scan_listeners):
            listener(advertisement)

    async def connect(self, peer: hci.Address) -> Connection:
        """Open an LE connection to a peer once it advertises, one attempt at a time.

        Waits as long as the peer stays silent: callers bound it with ``asyncio.timeout``.
        """
        await self.power_on()
        async with self._connect_lock:
            try:
                return await self.device.connect(peer, timeout=None)
            except BaseException:
                # bumble 0.0.236: LE Create Connection Cancel leaves the controller's pending
                # connection set, so every later connect would fail with COMMAND_DISALLOWED.
                self.controller.pending_le_connection = None
                raise


def advertisement_data(advertisement: Advertisement) -> AdvertisementData:
    """bleak's view of one bumble advertisement report."""
    data = advertisement.data
    uuids: list[str] = []
    for ad_type, size in _UUID_LISTS:
        for raw in data.get_all(ad_type, raw=True):
            assert isinstance(raw, bytes)
            uuids += [
                bleak_uuid(UUID.from_bytes(raw[i : i + size])) for i in range(0, len(raw), size)
            ]
    name = data.get(AdvertisingData.COMPLETE_LOCAL_NAME, raw=True) or data.get(
        AdvertisingData.SHORTENED_LOCAL_NAME, raw=True
    )
    manufacturer: dict[int, bytes] = {}
    for raw in data.get_all(AdvertisingData.MANUFACTURER_SPECIFIC_DATA, raw=True):
        assert isinstance(raw, bytes)
        manufacturer[int.from_bytes(raw[:2], "little")] = raw[2:]
    return AdvertisementData(
        local_name=name.decode(errors="replace") if isinstance(name, bytes) else None,
        manufacturer_data=manufacturer,
        service_data={},
        service_uuids=list(dict.fromkeys(uuids)),  # the scan response repeats the data
        tx_power=None,
        rssi=advertisement.rssi,
        platform_data=(advertisement,),
    )


class SimBleakScanner(BaseBleakScanner):
    """bleak scanner backend over a ``SimAdapter`` (bound by ``SimBleNetwork.add_adapter``)."""

    adapter: ClassVar[SimAdapter]

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: str = "active",
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        self._scanning = False

    def __repr__(self) -> str:
        seen = len(self.seen_devices)
        return f"<SimBleakScanner {self.adapter.name} scanning={self._scanning} seen={seen}>"

    async def start(self) -> None:
        """Start scanning (clears ``seen_devices``, as bleak requires)."""
        self.seen_devices = {}
        await self.adapter.start_scan(self._on_advertisement)
        self._scanning = True

    async def stop(self) -> None:
        """Stop scanning."""
        self._scanning = False
        await self.adapter.stop_scan(self._on_advertisement)

    def _on_advertisement(self, advertisement: Advertisement) -> None:
        adv = advertisement_data(advertisement)
        if not self.is_allowed_uuid(adv.service_uuids):
            return
        address = advertisement.address.to_string(False)
        device = self.create_or_update_device(
            address, address, adv.local_name, advertisement.address, adv
        )
        self.call_detection_callbacks(device, adv)


class SimBleakClient(BaseBleakClient):
    """bleak client backend over a ``SimAdapter`` (bound by ``SimBleNetwork.add_adapter``)."""

    adapter: ClassVar[SimAdapter]

    def __init__(
        self,
        address_or_ble_device: BLEDevice | str,
        *,
        disconnected_callback: Callable[[], None] | None = None,
        timeout: float = 10.0,
        services: set[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            address_or_ble_device, disconnected_callback=disconnected_callback, timeout=timeout
        )
        details = getattr(address_or_ble_device, "details", None)
        self._peer = details if isinstance(details, hci.Address) else hci.Address(self.address)
        self._device_name = getattr(address_or_ble_device, "name", None)
        self._service_filter = services
        self._connection: Connection | None = None
        self._disconnecting = False
        self._notify_callbacks: dict[int, Callable[[bytes], None]] = {}

    def __repr__(self) -> str:
        return (
            f"<SimBleakClient {self.address} via {self.adapter.name} connected={self.is_connected}>"
        )

    @property
    def name(self) -> str:
        """The advertised name, else the address."""
        return self._device_name or self.address

    @property
    def mtu_size(self) -> int:
        """The negotiated ATT MTU of the live connection (23 before the exchange)."""
        return self._connection.att_mtu if self._connection else att.ATT_DEFAULT_MTU

    @property
    def is_connected(self) -> bool:
        """True while the LE connection is up."""
        return self._connection is not None

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        """Connect, exchange the MTU and discover services (bleak expects ``services`` after)."""
        if pair:
            _LOGGER.debug("%s: pairing is not simulated; connecting without it", self.address)
        self._disconnecting = False
        async with asyncio.timeout(self._timeout):
            connection = await self.adapter.connect(self._peer)
        self._connection = connection
        connection.on(connection.EVENT_DISCONNECTION, self._on_disconnection)
        try:
            await self._gatt(
                "MTU exchange", connection.gatt_client.request_mtu(self.adapter.network.central_mtu)
            )
            self.services = await self._discover(connection)
        except BaseException:
            await self.disconnect()
            raise

    async def disconnect(self) -> None:
        """Disconnect (a requested disconnect does not call the disconnected callback)."""
        connection = self._connection
        if connection is None:
            return
        self._disconnecting = True
        if connection.handle in self.adapter.device.connections:
            with contextlib.suppress(core.BaseBumbleError, TimeoutError):
                async with asyncio.timeout(_DISCONNECT_TIMEOUT):
                    await connection.disconnect()
        self._forget()

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        """Pairing is not simulated."""
        raise BleakError("pairing is not supported by the simulated backend")

    async def unpair(self) -> None:
        """Pairing is not simulated."""
        raise BleakError("pairing is not supported by the simulated backend")

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        """Read a characteristic value."""
        value = await self._gatt("read", self._client().read_value(characteristic.handle))
        return bytearray(value)

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        """Read a descriptor value."""
        value = await self._gatt("read descriptor", self._client().read_value(descriptor.handle))
        return bytearray(value)

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: Any, response: bool
    ) -> None:
        """Write a characteristic (a Write Request with ``response``, else a Write Command)."""
        client = self._client()
        await self._gatt(
            "write", client.write_value(characteristic.handle, bytes(data), with_response=response)
        )

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: Any) -> None:
        """Write a descriptor."""
        client = self._client()
        await self._gatt(
            "write descriptor",
            client.write_value(descriptor.handle, bytes(data), with_response=True),
        )

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        """Enable notifications (CCCD write) and route them to ``callback``."""

        def on_value(value: bytes) -> None:
            callback(bytearray(value))

        self._notify_callbacks[characteristic.handle] = on_value
        await self._gatt("subscribe", characteristic.obj.subscribe(on_value))

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        """Disable notifications."""
        on_value = self._notify_callbacks.pop(characteristic.handle, None)
        await self._gatt("unsubscribe", characteristic.obj.unsubscribe(on_value))

    def _client(self) -> Any:
        if self._connection is None:
            raise BleakError("Not connected")
        return self._connection.gatt_client

    async def _gatt(self, what: str, awaitable: Awaitable[_T]) -> _T:
        """Await a bumble GATT operation, turning bumble's errors into bleak's."""
        with self._bleak_errors(what):
            try:
                return await awaitable
            except asyncio.CancelledError:
                # bumble cancels a pending request's future when the link drops: that is a
                # failed operation for us, not a cancellation of the calling task.
                task = asyncio.current_task()
                if (task is not None and task.cancelling()) or self._connection is not None:
                    raise
                raise BleakError(f"{self.address}: {what} failed: disconnected") from None

    @contextlib.contextmanager
    def _bleak_errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except att.ATT_Error as exc:
            raise BleakGATTProtocolError(exc.error_code) from exc
        except core.BaseBumbleError as exc:
            raise BleakError(f"{self.address}: {what} failed: {exc!r}") from exc

    async def _discover(self, connection: Connection) -> BleakGATTServiceCollection:
        gatt = connection.gatt_client
        collection = BleakGATTServiceCollection()
        uuids = [UUID(u) for u in self._service_filter or ()]
        for service in await self._gatt("discover services", gatt.discover_services(uuids)):
            bleak_service = BleakGATTService(service, service.handle, bleak_uuid(service.uuid))
            collection.add_service(bleak_service)
            for char in await self._gatt(
                "discover characteristics", gatt.discover_characteristics([], service)
            ):
                properties = [
                    name for bit, name in CHARACTERISTIC_PROPERTIES.items() if char.properties & bit
                ]
                bleak_char = BleakGATTCharacteristic(
                    char,
                    char.handle,
                    bleak_uuid(char.uuid),
                    properties,
                    lambda: max(connection.att_mtu, att.ATT_DEFAULT_MTU) - 3,
                    bleak_service,
                )
                collection.add_characteristic(bleak_char)
                for desc in await self._gatt(
                    "discover descriptors", gatt.discover_descriptors(char)
                ):
                    collection.add_descriptor(
                        BleakGATTDescriptor(desc, desc.handle, bleak_uuid(desc.type), bleak_char)
                    )
        return collection

    def _on_disconnection(self, reason: int) -> None:
        requested = self._disconnecting
        self._forget()
        _LOGGER.debug(
            "%s: disconnected (reason 0x%02X, requested=%s)", self.address, reason, requested
        )
        if not requested and self._disconnected_callback is not None:
            self._disconnected_callback()

    def _forget(self) -> None:
        self._connection = None
        self.services = None
        self._notify_callbacks.clear()

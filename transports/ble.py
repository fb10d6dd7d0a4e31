"""Bluetooth LE transport: the gateway as GATT central for many MQTT-SN nodes, through bleak.

The gateway scans for the service UUID (optionally also a name prefix and an address allow-list),
connects to each node it accepts (up to ``max_connections``), enables TX notifications and keeps
the node's BLE address as its transport address (``BleAddress``). A node that disconnects
(sleeps, leaves range) is reported as ``LinkEvent.LINK_DOWN`` and is reconnected when it
advertises again (``LINK_UP``). Frames are carried as described in ``transports/ble_stream.py``.

Every bleak call goes through ``BleakFactory``: production uses bleak's default backend (BlueZ on
a Raspberry Pi); tests pass ``backend=(scanner class, client class)`` of the simulated radio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final

from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner

from gateway.errors import TransportError
from transports.base import Address, FrameSink, LinkEvent, LinkEventSink, Transport
from transports.ble_stream import (
    ATT_DEFAULT_MTU,
    ATT_HEADER_SIZE,
    DEFAULT_MAX_FRAME_SIZE,
    NUS_RX_UUID,
    NUS_SERVICE_UUID,
    NUS_TX_UUID,
    StreamReassembler,
    split_frame,
)

__all__ = ["BleAddress", "BleLink", "BleTransport", "BleakFactory"]

_LOGGER = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT: Final = 10.0
DEFAULT_SCAN_INTERVAL: Final = 5.0
DEFAULT_RETRY_DELAY: Final = 2.0
_DISCONNECT_TIMEOUT: Final = 5.0
_FORGET_FAILURES: Final = 600.0  # seconds after its back-off a failing node starts afresh
_EARLY_FRAMES: Final = 16  # frames notified between subscribe and LINK_UP (a tiny window)


@dataclass(frozen=True, slots=True)
class BleAddress:
    """A BLE node, named by its Bluetooth address as bleak reports it (upper-case MAC)."""

    mac: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "mac", self.mac.upper())

    def __str__(self) -> str:
        return self.mac


async def cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it to end, cancelling again if the cancel was swallowed.

    Python 3.11's ``asyncio.wait_for`` (used inside bumble and some bleak backends) returns the
    result instead of raising when the awaited future completes in the same loop iteration as
    the cancellation, so one ``cancel()`` is not always enough.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    if not task.cancelled() and task.exception() is not None:
        _LOGGER.error("%s ended with %r", task.get_name(), task.exception())


class BleakFactory:
    """The one place bleak objects are made; ``backend`` = (scanner class, client class) or None."""

    def __init__(
        self, backend: tuple[type[BaseBleakScanner], type[BaseBleakClient]] | None = None
    ) -> None:
        self.backend = backend

    def __repr__(self) -> str:
        names = "default" if self.backend is None else "/".join(c.__name__ for c in self.backend)
        return f"<BleakFactory backend={names}>"

    def scanner(self, **kwargs: Any) -> BleakScanner:
        """A ``BleakScanner`` on the configured backend."""
        if self.backend is not None:
            kwargs["backend"] = self.backend[0]
        return BleakScanner(**kwargs)

    def client(self, device: BLEDevice | str, **kwargs: Any) -> BleakClient:
        """A ``BleakClient`` on the configured backend."""
        if self.backend is not None:
            kwargs["backend"] = self.backend[1]
        return BleakClient(device, **kwargs)


class BleTransport(Transport):
    """MQTT-SN over BLE GATT (Nordic UART Service by default), gateway = central.

    Args:
        service_uuid, rx_uuid, tx_uuid: the GATT service scanned for, the characteristic the
            gateway writes (gateway -> node) and the one it subscribes to (node -> gateway).
        name_prefix: only connect to nodes whose advertised name starts with this.
        allow_addresses: only connect to these BLE addresses.
        max_connections: simultaneous node connections (the adapter's limit is often 7-10).
        scan_interval: a scan round that hears no acceptable node is restarted after this long.
        connect_timeout: bound on connect + service discovery + subscribe for one node.
        retry_delay: a node whose connection attempt failed is ignored for this long (doubling
            on each further failure, up to 64 times).
        max_frame_size: largest frame carried (reassembly bound in both directions).
        queue_size: frames waiting to be written to one node; more are dropped (counted).
        backend: (BaseBleakScanner subclass, BaseBleakClient subclass); None = bleak's default.
        name: this transport's name in logs and the registry.
    """

    def __init__(
        self,
        *,
        service_uuid: str = NUS_SERVICE_UUID,
        rx_uuid: str = NUS_RX_UUID,
        tx_uuid: str = NUS_TX_UUID,
        name_prefix: str | None = None,
        allow_addresses: set[str] | None = None,
        max_connections: int = 8,
        scan_interval: float = DEFAULT_SCAN_INTERVAL,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        queue_size: int = 64,
        backend: tuple[type[BaseBleakScanner], type[BaseBleakClient]] | None = None,
        name: str = "ble",
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self.name = name
        self.service_uuid = service_uuid.lower()
        self.rx_uuid = rx_uuid.lower()
        self.tx_uuid = tx_uuid.lower()
        self.name_prefix = name_prefix
        self.allow_addresses = (
            None if allow_addresses is None else {a.upper() for a in allow_addresses}
        )
        self.max_connections = max_connections
        self.scan_interval = scan_interval
        self.connect_timeout = connect_timeout
        self.retry_delay = retry_delay
        self._max_frame_size = max_frame_size
        self.queue_size = queue_size
        self.bleak = BleakFactory(backend)
        self.counters: Counter[str] = Counter()
        self._links: dict[BleAddress, BleLink] = {}
        self._backoff: dict[BleAddress, float] = {}
        self._failures: Counter[BleAddress] = Counter()
        self._slot_free = asyncio.Event()
        self._deliver: FrameSink | None = None
        self._on_event: LinkEventSink | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closing = False

    def __repr__(self) -> str:
        up = sum(link.up for link in self._links.values())
        return (
            f"<BleTransport {self.name!r} {self.bleak!r} links={up}/{self.max_connections} "
            f"running={self._runner is not None and not self._runner.done()} "
            f"counters={dict(self.counters)}>"
        )

    @property
    def connected(self) -> set[BleAddress]:
        """Addresses of the nodes whose link is up."""
        return {address for address, link in self._links.items() if link.up}

    def link(self, address: BleAddress) -> BleLink | None:
        """The live link to ``address`` (for inspection), if any."""
        return self._links.get(address)

    async def start(self, deliver: FrameSink, on_event: LinkEventSink | None = None) -> None:
        """Start scanning and connecting in the background."""
        if self._runner is not None:
            raise RuntimeError(f"{self!r} already started")
        self._deliver, self._on_event = deliver, on_event
        self._closing = False
        self._runner = asyncio.create_task(self._supervise(), name=f"transport[{self.name}].scan")

    def send(self, address: Address, frame: bytes) -> None:
        """Queue one frame for a connected node; drop it (counted) if the node is not connected."""
        link = self._links.get(address) if isinstance(address, BleAddress) else None
        if link is None or not link.up:
            # Holding frames for sleeping nodes is the core's job (sleep buffer), not ours.
            self.counters["dropped_not_connected"] += 1
            _LOGGER.debug(
                "%s: %s not connected; dropped %d-byte frame", self.name, address, len(frame)
            )
            return
        if len(frame) > self._max_frame_size:
            self.counters["dropped_oversize"] += 1
            _LOGGER.warning(
                "%s: %d-byte frame for %s exceeds max_frame_size %d; dropped",
                self.name,
                len(frame),
                address,
                self._max_frame_size,
            )
            return
        if not link.enqueue(bytes(frame)):
            self.counters["dropped_queue_full"] += 1
            _LOGGER.warning("%s: send queue to %s full; dropped a frame", self.name, address)

    def broadcast(self, frame: bytes, radius: int = 0) -> None:
        """Send to every connected node (BLE has no connectionless path to a GATT node)."""
        for address in self.connected:
            self.send(address, frame)

    def max_frame_size(self, address: Address | None = None) -> int:
        """The reassembly bound; the link itself streams any length."""
        return self._max_frame_size

    def owns(self, address: Address) -> bool:
        """True for ``BleAddress`` values."""
        return isinstance(address, BleAddress)

    async def close(self) -> None:
        """Stop scanning and disconnect every node (no LINK_DOWN events while closing)."""
        self._closing = True
        if self._runner is not None:
            await cancel_and_wait(self._runner)
            self._runner = None
        links = list(self._links.values())
        self._links.clear()
        for link in links:
            await link.close()

    # -- scanning and connecting ------------------------------------------------------------

    async def _supervise(self) -> None:
        while not self._closing:
            await self._wait_for_slot()
            self._prune_backoff()
            try:
                devices = await self._scan_round()
            except Exception as exc:  # an adapter failure must not end the transport
                self.counters["scan_failures"] += 1
                n = self.counters["scan_failures"]
                _LOGGER.log(
                    logging.ERROR if n == 1 or n % 30 == 0 else logging.DEBUG,
                    "%s: scanning failed (%d times): %r; retrying in %.1fs",
                    self.name,
                    n,
                    exc,
                    self.retry_delay,
                )
                await asyncio.sleep(self.retry_delay)
                continue
            for device in devices:
                if len(self._links) >= self.max_connections or self._closing:
                    break
                await self._connect(device)

    def _prune_backoff(self) -> None:
        # Failure counts outlive the back-off (for the doubling) but not forever.
        forget = time.monotonic() - _FORGET_FAILURES
        for address in [a for a, until in self._backoff.items() if until <= forget]:
            del self._backoff[address]
            self._failures.pop(address, None)

    async def _wait_for_slot(self) -> None:
        while len(self._links) >= self.max_connections:
            self._slot_free.clear()
            await self._slot_free.wait()

    async def _scan_round(self) -> list[BLEDevice]:
        """Scan until at least one acceptable node is heard (or ``scan_interval`` passes)."""
        found: dict[str, BLEDevice] = {}
        heard = asyncio.Event()

        def on_advertisement(device: BLEDevice, adv: AdvertisementData) -> None:
            if self._accepts(device, adv):
                found.setdefault(device.address.upper(), device)
                heard.set()

        scanner = self.bleak.scanner(
            detection_callback=on_advertisement, service_uuids=[self.service_uuid]
        )
        await scanner.start()
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.scan_interval):
                    await heard.wait()
        finally:
            await scanner.stop()
        return list(found.values())

    def _accepts(self, device: BLEDevice, adv: AdvertisementData) -> bool:
        address = BleAddress(device.address)
        if address in self._links or self._backoff.get(address, 0.0) > time.monotonic():
            return False
        if self.service_uuid not in (u.lower() for u in adv.service_uuids):
            return False
        if self.allow_addresses is not None and address.mac not in self.allow_addresses:
            return False
        name = adv.local_name or device.name or ""
        return self.name_prefix is None or name.startswith(self.name_prefix)

    async def _connect(self, device: BLEDevice) -> None:
        address = BleAddress(device.address)
        link = BleLink(self, address, device)
        self._links[address] = link  # holds the slot while connecting
        try:
            async with asyncio.timeout(self.connect_timeout):
                await link.open()
        except Exception as exc:  # one node's failure must not stop the scan loop
            self._links.pop(address, None)
            self._failures[address] += 1
            # Doubling back-off, so a node with the wrong GATT layout is not retried forever.
            delay = self.retry_delay * 2 ** min(self._failures[address] - 1, 6)
            self._backoff[address] = time.monotonic() + delay
            self.counters["connect_failures"] += 1
            _LOGGER.info(
                "%s: connecting to %s failed: %r; next try in %.1fs", self.name, address, exc, delay
            )
            await link.close()
            return
        if link.lost:  # dropped between the last await of open() and here
            return
        self._backoff.pop(address, None)
        self._failures.pop(address, None)
        self.counters["connects"] += 1
        _LOGGER.info("%s: %s connected (%r)", self.name, address, link)
        self._emit(address, LinkEvent.LINK_UP)
        link.start()

    # -- called by links ----------------------------------------------------------------------

    def link_frame(self, link: BleLink, frame: bytes) -> None:
        """A whole frame arrived from ``link``'s node."""
        self.counters["frames_in"] += 1
        if self._deliver is None or self._closing:
            return
        try:
            self._deliver(link.address, frame)
        except Exception:  # the sink's bug must not break the radio stack's callback
            _LOGGER.exception("%s: deliver() failed for a frame from %s", self.name, link.address)

    def link_lost(self, link: BleLink, why: str) -> None:
        """``link`` went down (unsolicited disconnect, failed write); free its slot."""
        if self._links.get(link.address) is not link:
            return
        del self._links[link.address]
        self._slot_free.set()
        if link.up and not self._closing:
            self.counters["disconnects"] += 1
            _LOGGER.info("%s: %s disconnected (%s)", self.name, link.address, why)
            self._emit(link.address, LinkEvent.LINK_DOWN)

    def _emit(self, address: BleAddress, event: LinkEvent) -> None:
        if self._on_event is not None and not self._closing:
            self._on_event(address, event)


class BleLink:
    """One node's GATT connection: TX notifications reassembled in, an ordered write queue out."""

    def __init__(self, transport: BleTransport, address: BleAddress, device: BLEDevice) -> None:
        self.transport = transport
        self.address = address
        self.client = transport.bleak.client(
            device, disconnected_callback=self._on_disconnected, timeout=transport.connect_timeout
        )
        self.reassembler = StreamReassembler(transport.max_frame_size(), peer=str(address))
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(transport.queue_size)
        self.rx: BleakGATTCharacteristic | None = None
        self.write_with_response = False
        self.up = False  # subscribed and announced (LINK_UP)
        self.lost = False  # disconnected or closed; never comes back (a reconnect is a new link)
        self.frames_in = 0
        self.frames_out = 0
        self._early: list[bytes] = []
        self._writer: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "lost" if self.lost else "up" if self.up else "connecting"
        return (
            f"<BleLink {self.address} {state} mtu={self.client.mtu_size if self.up else '?'} "
            f"chunk={self.chunk_size} with_response={self.write_with_response} "
            f"queued={self.queue.qsize()} in={self.frames_in} out={self.frames_out} "
            f"partial={self.reassembler.buffered}>"
        )

    @property
    def chunk_size(self) -> int:
        """Bytes per write: the negotiated ATT MTU - 3, as the backend reports it."""
        if self.rx is None:
            return ATT_DEFAULT_MTU - ATT_HEADER_SIZE
        return max(self.rx.max_write_without_response_size, ATT_DEFAULT_MTU - ATT_HEADER_SIZE)

    async def open(self) -> None:
        """Connect, find the RX/TX characteristics and enable TX notifications."""
        transport = self.transport
        await self.client.connect()
        service = self.client.services.get_service(transport.service_uuid)
        if service is None:
            raise TransportError(f"{self.address} has no GATT service {transport.service_uuid}")
        rx = service.get_characteristic(transport.rx_uuid)
        tx = service.get_characteristic(transport.tx_uuid)
        if rx is None or not {"write", "write-without-response"} & set(rx.properties):
            raise TransportError(
                f"{self.address}: no writable RX characteristic {transport.rx_uuid}"
            )
        if tx is None or not {"notify", "indicate"} & set(tx.properties):
            raise TransportError(
                f"{self.address}: no notifying TX characteristic {transport.tx_uuid}"
            )
        self.rx = rx
        self.write_with_response = "write-without-response" not in rx.properties
        # Link format rule 2: a new connection starts at a frame boundary.
        self.reassembler.reset()
        await self.client.start_notify(tx, self._on_notify)
        self.up = not self.lost

    def start(self) -> None:
        """After LINK_UP: hand over frames that beat it, start the writer."""
        early, self._early = self._early, []
        for frame in early:
            self._deliver(frame)
        self._writer = asyncio.create_task(
            self._write_loop(), name=f"transport[{self.transport.name}].write[{self.address}]"
        )

    def enqueue(self, frame: bytes) -> bool:
        """Queue a frame for writing; False when the queue is full."""
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            return False
        return True

    async def close(self) -> None:
        """Stop writing and disconnect (no events)."""
        self.lost = True
        writer, self._writer = self._writer, None
        if writer is not None and writer is not asyncio.current_task():
            await cancel_and_wait(writer)
        with contextlib.suppress(Exception):  # the link is going away whatever bleak says
            async with asyncio.timeout(_DISCONNECT_TIMEOUT):
                await self.client.disconnect()

    def _on_notify(self, _sender: BleakGATTCharacteristic, data: bytearray) -> None:
        if self.lost:
            return
        before = self.reassembler.resyncs
        frames = self.reassembler.feed(bytes(data))
        self.transport.counters["resyncs"] += self.reassembler.resyncs - before
        for frame in frames:
            if self.up:
                self._deliver(frame)
            elif len(self._early) < _EARLY_FRAMES:
                self._early.append(frame)

    def _deliver(self, frame: bytes) -> None:
        self.frames_in += 1
        self.transport.link_frame(self, frame)

    def _on_disconnected(self, _client: BleakClient) -> None:
        if self.lost:
            return
        self.lost = True
        if self._writer is not None:
            self._writer.cancel()
        self._dropped(0)
        self.transport.link_lost(self, "disconnected by the node or the radio")

    async def _write_loop(self) -> None:
        assert self.rx is not None
        while not self.lost:
            frame = await self.queue.get()
            try:
                for chunk in split_frame(frame, self.chunk_size):
                    await self.client.write_gatt_char(
                        self.rx, chunk, response=self.write_with_response
                    )
            except Exception as exc:  # any failure breaks the frame stream
                self._dropped(1)
                if self.lost:  # the disconnect got there first; nothing more to say
                    return
                # Link format rule 2: a partly written frame poisons the node's stream, so the
                # connection is dropped; the node resets its buffer on the next one.
                self.transport.counters["write_failures"] += 1
                _LOGGER.warning(
                    "%s: write to %s failed mid-frame: %r; dropping the connection",
                    self.transport.name,
                    self.address,
                    exc,
                )
                self.transport.link_lost(self, f"write failed: {exc!r}")
                await self.close()
                return
            self.frames_out += 1
            self.transport.counters["frames_out"] += 1

    def _dropped(self, in_flight: int) -> None:
        """Count frames that will never be written (queued or mid-write when the link went)."""
        n = in_flight + self.queue.qsize()
        while not self.queue.empty():
            self.queue.get_nowait()
        if n:
            self.transport.counters["dropped_link_lost"] += n
            _LOGGER.debug(
                "%s: %d frame(s) for %s dropped with the link", self.transport.name, n, self.address
            )

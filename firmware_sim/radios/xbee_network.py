"""A simulated Zigbee RF medium: one XBee coordinator on a pty, simulated nodes, injected faults.

The gateway sees what it sees with a USB XBee dongle: a serial port (:attr:`XBeeNetwork.port`)
that speaks the XBee API. Each simulated sensor node gets a :class:`~firmware_sim.link.NodeLink`
from :meth:`XBeeNetwork.add_node`; what it sends arrives at the host as 0x90 Receive Packets, and
the host's 0x10 Transmit Requests are routed to it by 64-bit address and answered with 0x8B
Transmit Status like the real module does::

    async with XBeeNetwork() as network:
        link = network.add_node(0x0013A200_41000001)
        transport = XBeeTransport(network.port)
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Self

from firmware_sim.link import FrameReceiver, NodeLink
from firmware_sim.radios.xbee_coordinator import SimulatedCoordinator
from transports.xbee_frames import (
    BROADCAST_IEEE64,
    DeliveryStatus,
    ReceiveOptions,
    ReceivePacket,
    TransmitRequest,
)

__all__ = ["NodeFaults", "XBeeNetwork", "XBeeNodeLink"]

_LOGGER = logging.getLogger(__name__)

DEFAULT_COORDINATOR = 0x0013A200_41A7B3C1
_MAC_RETRIES = 3  # 802.15.4 macMaxFrameRetries: the module retries thrice before 0x01


@dataclass(frozen=True, slots=True)
class NodeFaults:
    """What goes wrong on one node's radio link; all off by default."""

    mac_ack_failure: bool = False  # every unicast to the node ends in Transmit Status 0x01
    loss: float = 0.0  # chance that one frame, either way, is lost after the radio's retries
    latency: float = 0.0  # one-way delay in seconds (order is always kept)

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError(f"loss must be a probability, not {self.loss!r}")
        if self.latency < 0:
            raise ValueError(f"latency must be >= 0, not {self.latency!r}")


class _DelayLine:
    """Runs callbacks after a delay, strictly in the order they were pushed (a link keeps order)."""

    def __init__(self) -> None:
        self._items: deque[tuple[float, Callable[[], None]]] = deque()
        self._handle: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._items)

    def push(self, delay: float, callback: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        if self._items:
            due = max(due, self._items[-1][0])
        self._items.append((due, callback))
        if self._handle is None:
            self._handle = loop.call_at(due, self._run)

    def clear(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._items.clear()

    def _run(self) -> None:
        self._handle = None
        now = asyncio.get_running_loop().time()
        first = True
        while self._items and (first or self._items[0][0] <= now):
            first = False
            _, callback = self._items.popleft()
            try:
                callback()
            except Exception:
                _LOGGER.exception("simulated XBee: a delivery callback failed")
        if self._items:
            self._handle = asyncio.get_running_loop().call_at(self._items[0][0], self._run)


@dataclass(eq=False, slots=True)
class _Held:
    """A unicast the parent keeps for a sleeping end device (compared by identity)."""

    request: TransmitRequest
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False, slots=True)
class _NodeRadio:
    """One node's XBee module as the medium sees it."""

    ieee64: int
    nwk16: int
    faults: NodeFaults
    end_device: bool
    receive: FrameReceiver | None = None  # None: radio off
    asleep: bool = False
    held: list[_Held] = field(default_factory=list)  # indirect messages, oldest first
    downlink: _DelayLine = field(default_factory=_DelayLine)
    uplink: _DelayLine = field(default_factory=_DelayLine)


class XBeeNodeLink(NodeLink):
    """A simulated node's XBee module: ``send`` goes to the coordinator (DH/DL = 0)."""

    def __init__(self, network: XBeeNetwork, radio: _NodeRadio) -> None:
        self._network = network
        self._radio = radio

    def __repr__(self) -> str:
        radio = self._radio
        state = "off" if radio.receive is None else "asleep" if radio.asleep else "awake"
        return (
            f"<XBeeNodeLink {radio.ieee64:016X} nwk=0x{radio.nwk16:04X} {state} "
            f"held={len(radio.held)} {radio.faults}>"
        )

    @property
    def ieee64(self) -> int:
        """The node's 64-bit address (what the gateway sees as XBeeAddress.ieee64)."""
        return self._radio.ieee64

    @property
    def nwk16(self) -> int:
        """The 16-bit network address the coordinator gave the node when it joined."""
        return self._radio.nwk16

    async def open(self, receive: FrameReceiver) -> None:
        """Power the radio up and join the network."""
        self._radio.receive = receive
        self._radio.asleep = False

    async def send(self, frame: bytes) -> None:
        """Unicast to the coordinator (arrives as a 0x90 with option 0x01)."""
        self._network._uplink(self._radio, frame, broadcast=False)

    async def broadcast(self, frame: bytes, radius: int = 0) -> None:
        """Broadcast to the coordinator (0x90 option 0x02) and every awake node."""
        self._network._uplink(self._radio, frame, broadcast=True)

    async def close(self) -> None:
        """Power the radio down; frames held for it are failed when their time runs out."""
        self._radio.receive = None

    async def sleep_radio(self) -> None:
        """Sleep: unicasts are held by the parent (indirect messaging), broadcasts are missed."""
        self._radio.asleep = True

    async def wake_radio(self) -> None:
        """Wake and poll the parent: held frames are delivered in order."""
        self._radio.asleep = False
        self._network._release_held(self._radio)


class XBeeNetwork:
    """The RF medium around one coordinator; start it, then point the gateway at :attr:`port`.

    Args:
        coordinator_ieee64: the dongle's 64-bit address (ATSH/ATSL).
        api_mode: the dongle's ATAP (1 or 2).
        max_payload: the dongle's ATNP; larger Transmit Requests get status 0x74.
        indirect_timeout: seconds the coordinator holds a unicast for a sleeping end device.
        seed: seeds the loss and 16-bit address generator, for reproducible runs.
        link_path: where the port appears (a symlink); a fresh temporary path by default.
    """

    def __init__(
        self,
        coordinator_ieee64: int = DEFAULT_COORDINATOR,
        *,
        api_mode: int = 2,
        max_payload: int = 84,
        baudrate: int = 9600,
        indirect_timeout: float = 3.0,
        seed: int | None = None,
        link_path: str | None = None,
    ) -> None:
        self.coordinator = SimulatedCoordinator(
            self._downlink,
            ieee64=coordinator_ieee64,
            api_mode=api_mode,
            max_payload=max_payload,
            baudrate=baudrate,
            link_path=link_path,
        )
        self.indirect_timeout = indirect_timeout
        self.stats: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._nodes: dict[int, _NodeRadio] = {}

    def __repr__(self) -> str:
        awake = sum(1 for n in self._nodes.values() if n.receive is not None and not n.asleep)
        return (
            f"<XBeeNetwork port={self.port} coordinator={self.coordinator.ieee64:016X} "
            f"{'plugged' if self.plugged else 'unplugged'} nodes={len(self._nodes)} awake={awake}>"
        )

    @property
    def port(self) -> str:
        """The serial port path the gateway opens (stable across unplug/replug)."""
        return self.coordinator.port.path

    @property
    def plugged(self) -> bool:
        """True while the dongle is present."""
        return self.coordinator.port.plugged

    async def start(self) -> None:
        """Plug the dongle in."""
        self.coordinator.power_up()

    async def close(self) -> None:
        """Unplug for good and stop every pending delivery."""
        for radio in self._nodes.values():
            radio.downlink.clear()
            radio.uplink.clear()
        self._forget_held()
        self.coordinator.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def unplug(self) -> None:
        """The dongle vanishes: its port path disappears and the host's open port breaks."""
        self.stats["unplugged"] += 1
        self._forget_held()  # the frames a parent keeps for its children live in its RAM
        self.coordinator.power_down()

    def replug(self) -> None:
        """The dongle comes back at the same path and reports its start-up (0x8A 0x00, 0x06)."""
        self.coordinator.power_up()

    def add_node(
        self, ieee64: int, *, faults: NodeFaults | None = None, end_device: bool = True
    ) -> XBeeNodeLink:
        """Add a node's radio (off until its link is opened) and return its link."""
        if ieee64 in self._nodes or ieee64 in (BROADCAST_IEEE64, self.coordinator.ieee64):
            raise ValueError(f"address {ieee64:016X} is already taken")
        used = {radio.nwk16 for radio in self._nodes.values()}
        nwk16 = self._rng.randrange(0x0001, 0xFFF8)
        while nwk16 in used:
            nwk16 = self._rng.randrange(0x0001, 0xFFF8)
        radio = _NodeRadio(ieee64, nwk16, faults or NodeFaults(), end_device)
        self._nodes[ieee64] = radio
        return XBeeNodeLink(self, radio)

    def set_faults(self, ieee64: int, faults: NodeFaults) -> None:
        """Change what goes wrong on one node's link from now on."""
        self._nodes[ieee64].faults = faults

    # -- coordinator -> nodes ----------------------------------------------------------------

    def _downlink(self, request: TransmitRequest) -> None:
        if request.dest64 == BROADCAST_IEEE64:
            self._broadcast_down(request)
            return
        radio = self._nodes.get(request.dest64)
        if radio is None or radio.receive is None:
            # The module tries Zigbee address discovery (ZDO NWK_addr_req); nobody answers.
            self.stats["downlink_address_not_found"] += 1
            self.coordinator.transmit_status(
                request, DeliveryStatus.ADDRESS_NOT_FOUND, discovery=0x01
            )
            return
        faults = radio.faults
        if faults.mac_ack_failure or self._lost(faults):
            self.stats["downlink_failed"] += 1
            radio.downlink.push(
                faults.latency,
                lambda: self.coordinator.transmit_status(
                    request, DeliveryStatus.MAC_ACK_FAILURE, retries=_MAC_RETRIES
                ),
            )
            return
        if radio.asleep and radio.end_device:
            # Zigbee indirect messaging: the parent keeps the frame until the child polls.
            entry = _Held(request)
            entry.timer = asyncio.get_running_loop().call_later(
                self.indirect_timeout, self._expire_held, radio, entry
            )
            radio.held.append(entry)
            return
        radio.downlink.push(faults.latency, lambda: self._hand_to_node(radio, request))

    def _hand_to_node(self, radio: _NodeRadio, request: TransmitRequest) -> None:
        if radio.receive is None:  # switched off while the frame was on the air
            self.coordinator.transmit_status(
                request, DeliveryStatus.MAC_ACK_FAILURE, retries=_MAC_RETRIES
            )
            return
        self.stats["downlink_delivered"] += 1
        self._call_receive(radio, request.rf_data)
        self.coordinator.transmit_status(request, DeliveryStatus.SUCCESS, dest16=radio.nwk16)

    def _release_held(self, radio: _NodeRadio) -> None:
        held, radio.held = radio.held, []
        for entry in held:
            if entry.timer is not None:
                entry.timer.cancel()
            radio.downlink.push(
                radio.faults.latency, partial(self._hand_to_node, radio, entry.request)
            )

    def _expire_held(self, radio: _NodeRadio, entry: _Held) -> None:
        if entry not in radio.held:
            return
        radio.held.remove(entry)
        request = entry.request
        self.stats["downlink_indirect_expired"] += 1
        # The child did not poll within the indirect timeout: the parent drops the frame and
        # the sender gets a failure (we report 0x21 network ACK failure).
        self.coordinator.transmit_status(request, DeliveryStatus.NETWORK_ACK_FAILURE)

    def _broadcast_down(self, request: TransmitRequest) -> None:
        self.stats["downlink_broadcasts"] += 1
        for radio in self._nodes.values():
            if radio.receive is None or radio.asleep or self._lost(radio.faults):
                continue
            radio.downlink.push(
                radio.faults.latency, partial(self._call_receive, radio, request.rf_data)
            )
        # A broadcast has no MAC ack: the module reports success once it is on the air.
        self.coordinator.transmit_status(request, DeliveryStatus.SUCCESS)

    # -- nodes -> coordinator ----------------------------------------------------------------

    def _uplink(self, radio: _NodeRadio, rf_data: bytes, *, broadcast: bool) -> None:
        if radio.receive is None:
            raise RuntimeError(f"node {radio.ieee64:016X}: open() the link before sending")
        if len(rf_data) > self.coordinator.max_payload:
            self.stats["uplink_oversize"] += 1
            _LOGGER.warning(
                "simulated XBee node %016X: its radio refuses a %d-byte frame (NP=%d)",
                radio.ieee64,
                len(rf_data),
                self.coordinator.max_payload,
            )
            return
        if self._lost(radio.faults):
            self.stats["uplink_lost"] += 1
            return
        options = ReceiveOptions.BROADCAST if broadcast else ReceiveOptions.ACKNOWLEDGED
        if radio.end_device:
            options |= ReceiveOptions.FROM_END_DEVICE
        packet = ReceivePacket(radio.ieee64, bytes(rf_data), radio.nwk16, options)
        radio.uplink.push(radio.faults.latency, lambda: self._arrive(packet))
        if broadcast:
            for other in self._nodes.values():
                if other is radio or other.receive is None or other.asleep:
                    continue
                other.downlink.push(
                    other.faults.latency, partial(self._call_receive, other, packet.rf_data)
                )

    def _arrive(self, packet: ReceivePacket) -> None:
        if not self.plugged:
            self.stats["uplink_lost_unplugged"] += 1
            return
        self.stats["uplink_delivered"] += 1
        self.coordinator.deliver(packet)

    # -- helpers -----------------------------------------------------------------------------

    def _forget_held(self) -> None:
        for radio in self._nodes.values():
            for entry in radio.held:
                if entry.timer is not None:
                    entry.timer.cancel()
            radio.held.clear()

    def _lost(self, faults: NodeFaults) -> bool:
        return faults.loss > 0 and self._rng.random() < faults.loss

    @staticmethod
    def _call_receive(radio: _NodeRadio, rf_data: bytes) -> None:
        if radio.receive is None:
            return
        try:
            radio.receive(rf_data)
        except Exception:
            _LOGGER.exception("simulated XBee node %016X: receive callback failed", radio.ieee64)

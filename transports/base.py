"""The transport contract: frames up as (address, bytes), frames down; no MQTT-SN parsing."""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable
from typing import NamedTuple

__all__ = [
    "Address",
    "FrameSink",
    "LinkEvent",
    "LinkEventSink",
    "Transport",
    "UdpAddress",
]

# Any frozen, hashable value naming a peer on one transport (UdpAddress, XBeeAddress, ...).
Address = Hashable


class UdpAddress(NamedTuple):
    """A UDP peer; ``host`` is the textual IP address as the socket reports it.

    A NamedTuple, not a frozen dataclass: every frame in or out hashes its address a few times
    (session and peer lookups), and a dataclass's ``__hash__`` is a Python call (~0.3 us, 2.7 %
    of the fan-out profile) where a tuple's is C.
    """

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class LinkEvent(enum.Enum):
    """Link-level news a transport reports about one peer."""

    SEND_FAILED = "send-failed"  # the radio reported no delivery (e.g. XBee Transmit Status != 0)
    LINK_DOWN = "link-down"  # the peer's link went away (BLE disconnect)
    LINK_UP = "link-up"  # the peer's link came (back) up


FrameSink = Callable[[Address, bytes], None]
LinkEventSink = Callable[[Address, LinkEvent], None]


class Transport(ABC):
    """One medium (UDP, XBee, serial, BLE) that carries whole MQTT-SN frames.

    Lifecycle: ``await start(deliver, on_event)`` then ``send``/``broadcast`` (never block the
    loop: they queue), then ``await close()``. ``deliver`` is called once per received frame, in
    arrival order per peer.
    """

    name: str = "transport"

    @abstractmethod
    async def start(self, deliver: FrameSink, on_event: LinkEventSink | None = None) -> None:
        """Open the medium and begin delivering frames."""

    @abstractmethod
    def send(self, address: Address, frame: bytes) -> None:
        """Queue one frame for one peer."""

    def send_many(self, items: list[tuple[Address, bytes]]) -> None:
        """Queue several frames, each for its peer, in order (a fan-out); as ``send`` each.

        A transport that can hand the batch to the medium at once (UDP: one ``sendmmsg``)
        overrides this.
        """
        for address, frame in items:
            self.send(address, frame)

    @abstractmethod
    def broadcast(self, frame: bytes, radius: int = 0) -> None:
        """Queue one frame for every peer in reach (multicast, radio broadcast); may be a no-op."""

    @abstractmethod
    def max_frame_size(self, address: Address | None = None) -> int:
        """The largest frame this medium carries to ``address`` (or to anyone, for ``None``)."""

    @abstractmethod
    async def close(self) -> None:
        """Stop delivering, flush what can be flushed, release the medium."""

    @property
    def can_broadcast(self) -> bool:
        """True when ``broadcast`` reaches peers (radio broadcast, a multicast group)."""
        return False

    def owns(self, address: Address) -> bool:
        """True when ``address`` belongs to this transport (used to route replies)."""
        return False

"""The node side of a radio: how a simulated sensor node sends and receives whole MQTT-SN frames."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

__all__ = ["FrameReceiver", "NodeLink"]

FrameReceiver = Callable[[bytes], None]


class NodeLink(ABC):
    """A node's radio: UDP socket, simulated XBee module, simulated BLE peripheral, serial line.

    ``open(receive)`` starts delivering every frame heard from the gateway (unicast or broadcast)
    to ``receive``; ``send`` goes to the gateway the node knows; ``broadcast`` reaches every
    gateway in radio range (SEARCHGW).
    """

    @abstractmethod
    async def open(self, receive: FrameReceiver) -> None:
        """Power the radio up and start delivering received frames."""

    @abstractmethod
    async def send(self, frame: bytes) -> None:
        """Send one frame to the gateway."""

    @abstractmethod
    async def broadcast(self, frame: bytes, radius: int = 0) -> None:
        """Send one frame to everyone in range."""

    @abstractmethod
    async def close(self) -> None:
        """Power the radio down."""

    async def sleep_radio(self) -> None:  # noqa: B027 - optional hook, default is nothing
        """The node goes to sleep: links that drop the connection (BLE) do it here."""

    async def wake_radio(self) -> None:  # noqa: B027 - optional hook, default is nothing
        """The node wakes: links that reconnect (BLE) do it here."""

"""A simulated MQTT-SN forwarder: wireless nodes reach the gateway through one relay [§5.1, §5.5].

The forwarder owns one link to the gateway (a UDP socket, a serial line: any ``NodeLink``).
Every frame one of its nodes sends goes up wrapped in an Encapsulated message (0xFE) carrying
the node's Wireless Node Id; every encapsulated frame from the gateway is unwrapped and handed
to the node with that id (to all of them when Ctrl carries a broadcast radius)::

    async with Forwarder(UdpNodeLink(("127.0.0.1", 1884))) as forwarder:
        async with SimNode("n1", forwarder.node_link(b"\\x00\\x01")) as node:
            await node.connect()

The gateway keys each node's session by (forwarder address, node id) and answers inside an
encapsulation with the same id (reference §3, §5.1).
"""

from __future__ import annotations

import logging
from collections import Counter
from types import TracebackType
from typing import Self

from firmware_sim.link import FrameReceiver, NodeLink
from gateway.errors import RemoteProtocolError, TransportError
from gateway.protocol.codec import decode, encode
from gateway.protocol.messages import Encapsulated

__all__ = ["ForwardedNodeLink", "Forwarder"]

_LOGGER = logging.getLogger(__name__)

_ENCAPSULATED = 0xFE


class ForwardedNodeLink(NodeLink):
    """One wireless node behind a :class:`Forwarder`, seen from the node."""

    def __init__(self, forwarder: Forwarder, node_id: bytes) -> None:
        self.forwarder = forwarder
        self.node_id = node_id
        self.receive: FrameReceiver | None = None  # None: radio off
        self.asleep = False

    def __repr__(self) -> str:
        state = "off" if self.receive is None else "asleep" if self.asleep else "awake"
        return f"<ForwardedNodeLink {self.node_id.hex()} via {self.forwarder.name} {state}>"

    async def open(self, receive: FrameReceiver) -> None:
        """Power the node's radio up (the forwarder must be open)."""
        if not self.forwarder.is_open:
            raise TransportError(f"{self!r}: open the forwarder before its nodes")
        self.receive = receive
        self.asleep = False

    async def send(self, frame: bytes) -> None:
        """Relay one frame to the gateway, encapsulated with our node id."""
        await self.forwarder._relay_up(self, frame, broadcast=False, radius=0)

    async def broadcast(self, frame: bytes, radius: int = 0) -> None:
        """SEARCHGW and the like: encapsulated too, sent as a broadcast on the forwarder's link."""
        await self.forwarder._relay_up(self, frame, broadcast=True, radius=radius)

    async def close(self) -> None:
        """Power the node's radio down."""
        self.receive = None

    async def sleep_radio(self) -> None:
        """A forwarder keeps nothing for sleeping nodes: frames meanwhile are lost (counted)."""
        self.asleep = True

    async def wake_radio(self) -> None:
        """Hear frames again."""
        self.asleep = False


class Forwarder:
    """Relays frames between wireless nodes and a gateway, in 0xFE encapsulation.

    Args:
        uplink: the forwarder's own link to the gateway.
        name: for logs.

    ``counters``: ``up`` (frames relayed to the gateway), ``down`` (delivered to a node),
    ``down_broadcast`` (frames relayed to every node), ``plain`` (frames from the gateway without
    encapsulation, relayed to every node), ``unknown_node``, ``asleep`` and ``malformed``
    (frames from the gateway that were dropped).
    """

    def __init__(self, uplink: NodeLink, *, name: str = "forwarder") -> None:
        self.uplink = uplink
        self.name = name
        self.counters: Counter[str] = Counter()
        self._nodes: dict[bytes, ForwardedNodeLink] = {}
        self._open = False

    def __repr__(self) -> str:
        c = self.counters
        return (
            f"<Forwarder {self.name} {'open' if self._open else 'closed'} nodes={len(self._nodes)}"
            f" up={c['up']} down={c['down']} dropped={c['unknown_node'] + c['malformed']}>"
        )

    @property
    def is_open(self) -> bool:
        """True while the link to the gateway is open."""
        return self._open

    def node_link(self, node_id: bytes | int) -> ForwardedNodeLink:
        """The link of the node with ``node_id`` (bytes, or an int sent as 2 bytes big-endian)."""
        key = node_id.to_bytes(2, "big") if isinstance(node_id, int) else bytes(node_id)
        if not 1 <= len(key) <= 0xFF - 3:
            raise ValueError(f"a Wireless Node Id has 1..252 bytes, not {len(key)}")
        if key in self._nodes:
            raise ValueError(f"node id {key.hex()} is already behind {self.name}")
        link = ForwardedNodeLink(self, key)
        self._nodes[key] = link
        return link

    async def open(self) -> None:
        """Open the link to the gateway."""
        if self._open:
            raise TransportError(f"{self!r} is already open")
        await self.uplink.open(self._on_gateway_frame)
        self._open = True

    async def close(self) -> None:
        """Close the link to the gateway; the nodes hear nothing more."""
        if self._open:
            self._open = False
            await self.uplink.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- node -> gateway ---------------------------------------------------------------------

    async def _relay_up(
        self, link: ForwardedNodeLink, frame: bytes, *, broadcast: bool, radius: int
    ) -> None:
        if not self._open or link.receive is None:
            raise TransportError(f"{link!r} is not open")
        # Ctrl's radius is meaningful only from the gateway to the forwarder (reference §3).
        wrapped = encode(Encapsulated(link.node_id, bytes(frame)))
        if broadcast:
            await self.uplink.broadcast(wrapped, radius)
        else:
            await self.uplink.send(wrapped)
        self.counters["up"] += 1

    # -- gateway -> nodes --------------------------------------------------------------------

    def _on_gateway_frame(self, frame: bytes) -> None:
        if len(frame) < 2 or frame[0] == 1 or frame[1] != _ENCAPSULATED:
            # Not for one node (ADVERTISE on a shared medium, a frame to the forwarder itself):
            # the forwarder repeats it on its wireless side.
            self.counters["plain"] += 1
            self._deliver_all(frame)
            return
        try:
            message = decode(frame)
        except RemoteProtocolError as exc:
            self.counters["malformed"] += 1
            _LOGGER.warning("%s: malformed frame from the gateway dropped: %s", self.name, exc)
            return
        assert isinstance(message, Encapsulated)
        if message.radius:
            self.counters["down_broadcast"] += 1
            self._deliver_all(message.message)
            return
        link = self._nodes.get(message.wireless_node_id)
        if link is None or link.receive is None:
            self.counters["unknown_node"] += 1
            _LOGGER.info(
                "%s: frame for node %s, which is not in range; dropped",
                self.name,
                message.wireless_node_id.hex(),
            )
            return
        self._deliver(link, message.message)

    def _deliver_all(self, frame: bytes) -> None:
        for link in list(self._nodes.values()):
            if link.receive is not None:
                self._deliver(link, frame)

    def _deliver(self, link: ForwardedNodeLink, frame: bytes) -> None:
        if link.asleep:
            self.counters["asleep"] += 1
            return
        self.counters["down"] += 1
        assert link.receive is not None
        try:
            link.receive(frame)
        except Exception:
            _LOGGER.exception("%s: node %s failed to take a frame", self.name, link.node_id.hex())

"""A simulated node's radio over real UDP: unicast to the gateway, multicast for discovery."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import Any

from firmware_sim.link import FrameReceiver, NodeLink
from gateway.errors import TransportError

__all__ = ["UdpNodeLink"]

_LOGGER = logging.getLogger(__name__)


class _Endpoint(asyncio.DatagramProtocol):
    """Hands every datagram to its link; one per socket (unicast, multicast)."""

    def __init__(self, link: UdpNodeLink, name: str) -> None:
        self._link = link
        self._name = name

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._link._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable (no gateway listening yet) lands here on Linux.
        self._link.errors += 1
        _LOGGER.debug("%s: %s socket error: %s", self._link, self._name, exc)


class UdpNodeLink(NodeLink):
    """``NodeLink`` over an asyncio UDP socket (IPv4 or IPv6).

    ``send`` goes to ``gateway``; ``broadcast`` goes to ``multicast_group:multicast_port`` if
    configured (radius becomes the TTL / hop limit, 0 meaning ``multicast_ttl``), else to the
    gateway. With a group configured, a second socket joins it to hear ADVERTISE and GWINFO.
    While the radio sleeps, received datagrams are dropped (and counted), as on real hardware.
    """

    def __init__(
        self,
        gateway: tuple[str, int],
        *,
        multicast_group: str | None = None,
        multicast_port: int | None = None,
        multicast_ttl: int = 1,
    ) -> None:
        if (multicast_group is None) != (multicast_port is None):
            raise ValueError("give both multicast_group and multicast_port, or neither")
        self.gateway = gateway
        self.multicast_group = multicast_group
        self.multicast_port = multicast_port
        self.multicast_ttl = multicast_ttl
        self.sent = 0
        self.received = 0
        self.dropped_asleep = 0
        self.errors = 0
        self._asleep = False
        self._receive: FrameReceiver | None = None
        self._gateway_addr: tuple[Any, ...] | None = None
        self._family = socket.AF_INET
        self._unicast: asyncio.DatagramTransport | None = None
        self._multicast: asyncio.DatagramTransport | None = None

    def __repr__(self) -> str:
        local = self._unicast.get_extra_info("sockname") if self._unicast else None
        state = "closed" if self._unicast is None else ("asleep" if self._asleep else "open")
        group = (
            f" group={self.multicast_group}:{self.multicast_port}" if self.multicast_group else ""
        )
        return (
            f"<UdpNodeLink {state} local={local} gateway={self.gateway[0]}:{self.gateway[1]}"
            f"{group} sent={self.sent} received={self.received}>"
        )

    @property
    def local_address(self) -> tuple[Any, ...] | None:
        """The (host, port, ...) of the unicast socket, once open."""
        return self._unicast.get_extra_info("sockname") if self._unicast else None

    async def open(self, receive: FrameReceiver) -> None:
        """Resolve the gateway, open the unicast socket and, if configured, join the group."""
        if self._unicast is not None:
            raise TransportError(f"{self!r} is already open")
        loop = asyncio.get_running_loop()
        host, port = self.gateway
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            self._family, _, _, _, self._gateway_addr = infos[0]
            any_host = "::" if self._family == socket.AF_INET6 else "0.0.0.0"
            self._unicast, _ = await loop.create_datagram_endpoint(
                lambda: _Endpoint(self, "unicast"), local_addr=(any_host, 0), family=self._family
            )
            if self.multicast_group is not None:
                sock = self._group_socket()
                self._multicast, _ = await loop.create_datagram_endpoint(
                    lambda: _Endpoint(self, "multicast"), sock=sock
                )
        except OSError as exc:
            await self.close()
            raise TransportError(f"cannot open UDP link to {host}:{port}: {exc}") from exc
        self._receive = receive
        self._asleep = False
        _LOGGER.debug("opened %r", self)

    async def send(self, frame: bytes) -> None:
        """Send one frame to the gateway."""
        self._sendto(frame, self._gateway_addr)

    async def broadcast(self, frame: bytes, radius: int = 0) -> None:
        """Send one frame to the multicast group (TTL = radius) or, without a group, the gateway."""
        if self.multicast_group is None or self.multicast_port is None:
            self._sendto(frame, self._gateway_addr)
            return
        if self._unicast is not None:
            ttl = radius or self.multicast_ttl
            sock = self._unicast.get_extra_info("socket")
            if self._family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ttl)
            else:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        self._sendto(frame, (self.multicast_group, self.multicast_port))

    async def close(self) -> None:
        """Close both sockets; safe to call twice."""
        for transport in (self._unicast, self._multicast):
            if transport is not None:
                transport.close()
        self._unicast = self._multicast = None
        self._receive = None

    async def sleep_radio(self) -> None:
        """Stop hearing anything until ``wake_radio``."""
        self._asleep = True

    async def wake_radio(self) -> None:
        """Hear frames again."""
        self._asleep = False

    def _sendto(self, frame: bytes, addr: tuple[Any, ...] | None) -> None:
        if self._unicast is None or addr is None:
            raise TransportError(f"{self!r} is not open")
        self._unicast.sendto(frame, addr)
        self.sent += 1

    def _on_datagram(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self._asleep:
            self.dropped_asleep += 1
            return
        self.received += 1
        if self._receive is not None:
            self._receive(data)

    def _group_socket(self) -> socket.socket:
        """A non-blocking socket bound to the group port and joined to the group."""
        assert self.multicast_group is not None and self.multicast_port is not None
        family = socket.AF_INET6 if ":" in self.multicast_group else socket.AF_INET
        if family != self._family:
            raise OSError(
                f"multicast group {self.multicast_group} and the gateway differ in family"
            )
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.bind(("::", self.multicast_port))
                group = socket.inet_pton(socket.AF_INET6, self.multicast_group)
                mreq6 = struct.pack("16sI", group, 0)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq6)
            else:
                sock.bind(("", self.multicast_port))
                mreq = struct.pack("4s4s", socket.inet_aton(self.multicast_group), bytes(4))
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

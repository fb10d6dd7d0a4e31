"""MQTT-SN over UDP: IPv4/IPv6 unicast, plus a multicast group for SEARCHGW, GWINFO and ADVERTISE.

One datagram is one MQTT-SN frame (reference §1). This module sits on the hot path of the
gateway, so receiving is a single synchronous call chain per datagram: the reader (a burst of
datagrams per loop wake-up, see ``transports.udp_endpoints``) checks the length header, looks the
sender up in an address cache and calls ``deliver``; no Task, no Future, no per-datagram log
line. Sending hands the frame straight to the socket, queueing only while the kernel's buffer is
full.

Broadcast (reference §5.2): over UDP it means a multicast group (Paho's default is 225.1.1.1).
Without a configured group ``broadcast()`` is a counted no-op. The group is joined on the
unicast socket when it uses the same port and family, otherwise on a second socket bound to
the group address; broadcasts leave from the unicast socket when the family allows, so that
nodes answer to the unicast port (bind it to a wildcard or to an address on the multicast
interface: a loopback-bound socket cannot multicast onto a radio network).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
import sys
from collections.abc import Callable, Hashable

from transports.base import Address, FrameSink, LinkEventSink, Transport, UdpAddress
from transports.udp_endpoints import BurstEndpoint, Endpoint, SockAddr
from transports.warning_limiter import WarningLimiter

__all__ = ["UdpTransport", "WarningLimiter"]

_LOGGER = logging.getLogger(__name__)

_ADDRESS_CACHE_LIMIT = 100_000
_EXCERPT = 16
# Linux socket options that Python 3.11 does not name: without them, a socket bound to a port
# also receives every group any other socket on the host joined on that port.
_IP_MULTICAST_ALL = 49
_IPV6_MULTICAST_ALL = 29


def _family_of(host: str) -> socket.AddressFamily:
    """The address family of a textual IP address or resolvable host name."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
        return infos[0][0]


def _interface_index(interface: str) -> int:
    return int(interface) if interface.isdigit() else socket.if_nametoindex(interface)


def _ipv4_membership(group: str, interface: str | None) -> bytes:
    """``struct ip_mreq`` (interface by address) or Linux ``ip_mreqn`` (interface by name)."""
    if interface is None:
        return socket.inet_aton(group) + socket.inet_aton("0.0.0.0")
    try:
        return socket.inet_aton(group) + socket.inet_aton(str(ipaddress.IPv4Address(interface)))
    except ValueError:
        index = _interface_index(interface)
        return socket.inet_aton(group) + socket.inet_aton("0.0.0.0") + struct.pack("@i", index)


class UdpTransport(Transport):
    """MQTT-SN frames over UDP datagrams, IPv4 or IPv6, with an optional multicast group.

    Args:
        bind_host: local address; ``"::"`` listens on IPv6 and IPv4 (dual stack).
        bind_port: local port; 0 picks a free one (see ``local_address``).
        multicast_group: group for broadcast() and received SEARCHGW; None disables multicast.
        multicast_port: the group's port; defaults to ``bind_port``.
        multicast_ttl: TTL / hop limit of broadcasts; a broadcast radius caps it lower.
        multicast_interface: IPv4 address or interface name (IPv6: name or index) to join on;
            None lets the kernel choose by route.
        multicast_loop: also deliver our broadcasts to listeners on this host (tests, several
            gateways on one machine); the transport then hears its own broadcasts too.
        rcvbuf: SO_RCVBUF to ask for; bursts of many nodes need more than the default.
        read_holdoff: seconds reading pauses after a wake-up that found only a few datagrams
            (0: never pause), so that the next finds a burst; None reads through the loop's
            datagram protocol instead, one callback per datagram.
        max_frame: largest datagram accepted or sent; larger ones are dropped and counted.
        warn_interval: at most one malformed-datagram WARNING per sender in this many seconds.
    """

    def __init__(
        self,
        bind_host: str = "0.0.0.0",
        bind_port: int = 1884,
        *,
        multicast_group: str | None = None,
        multicast_port: int | None = None,
        multicast_ttl: int = 1,
        multicast_interface: str | None = None,
        multicast_loop: bool = False,
        rcvbuf: int = 4 * 1024 * 1024,
        read_holdoff: float | None = 0.0002,
        max_frame: int = 1024,
        warn_interval: float = 10.0,
        name: str = "udp",
    ) -> None:
        if not 2 <= max_frame <= 65535:
            raise ValueError(f"max_frame must be within 2..65535, not {max_frame}")
        if multicast_group is not None and not ipaddress.ip_address(multicast_group).is_multicast:
            raise ValueError(f"multicast_group {multicast_group!r} is not a multicast address")
        if not 1 <= multicast_ttl <= 255:
            raise ValueError(f"multicast_ttl must be within 1..255, not {multicast_ttl}")
        self.name = name
        self.bind_host = bind_host
        self.bind_port = bind_port
        self.multicast_group = multicast_group
        self.multicast_port = multicast_port
        self.multicast_ttl = multicast_ttl
        self.multicast_interface = multicast_interface
        self.multicast_loop = multicast_loop
        self.rcvbuf = rcvbuf
        self.read_holdoff = read_holdoff
        self.max_frame = max_frame
        self.receive_buffer = 0  # SO_RCVBUF as the kernel reports it after start()
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "rx_frames",
                "rx_malformed",
                "rx_oversize",
                "rx_deliver_errors",
                "tx_frames",
                "tx_errors",
                "tx_oversize",
                "tx_dropped",
                "tx_broadcasts",
                "tx_broadcasts_skipped",
            ),
            0,
        )
        self._warnings = WarningLimiter(_LOGGER, warn_interval)
        self._addresses: dict[SockAddr, UdpAddress] = {}
        # The same peers keyed by their raw struct sockaddr (what the recvmmsg reader gets).
        self._raw_addresses: dict[bytes, UdpAddress] = {}
        # The socket address of every peer heard from, to answer it without re-checking the
        # address (and with its scope_id: IPv6 link-local peers need it).
        self._peers: dict[Hashable, SockAddr] = {}
        # And their raw struct sockaddr, for send_many's sendmmsg (peers heard by that reader).
        self._raw_peers: dict[Hashable, bytes] = {}
        self._deliver: FrameSink = _no_sink
        self._unicast: Endpoint | None = None
        self._multicast: Endpoint | None = None
        self._broadcaster: Endpoint | None = None
        self._group_sockaddr: SockAddr | None = None
        self._group_family = socket.AF_INET
        self._group_via_unicast = False
        self._broadcast_ttl = multicast_ttl
        self._sendto: Callable[[bytes, SockAddr], None] = self._not_open
        self._send_pairs: Callable[[list[tuple[bytes, bytes]]], int] | None = None
        self._local: UdpAddress | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, deliver: FrameSink, on_event: LinkEventSink | None = None) -> None:
        """Bind the socket(s), join the multicast group if any, and begin delivering frames."""
        if self._unicast is not None:
            raise RuntimeError(f"{self!r} is already started")
        self._deliver = deliver  # UDP has no link to lose: on_event is never called
        family = _family_of(self.bind_host)
        group = self.multicast_group
        shared = False
        if group is not None:
            self._group_family = _family_of(group)
            dual_stack = family == socket.AF_INET6 and self.bind_host in ("", "::")
            # The unicast socket can send to the group (a dual-stack one via ::ffff:a.b.c.d) ...
            self._group_via_unicast = self._group_family == family or (
                dual_stack and self._group_family == socket.AF_INET
            )
            # ... and, bound to a wildcard address on the group's port, receive from it too.
            shared = (
                self._group_via_unicast
                and self.bind_host in ("", "0.0.0.0", "::")
                and self.multicast_port in (None, 0, self.bind_port)
            )
        sock = self._unicast_socket(family)
        try:
            if group is not None and shared:
                self._join(sock, group)
            self._unicast = await self._open_endpoint(sock, "unicast")
        except BaseException:
            sock.close()
            raise
        self._local = self._make_address(sock.getsockname())
        if group is not None:
            try:
                await self._open_group(group, shared)
            except BaseException:
                await self.close()
                raise
        assert self._unicast.transport is not None
        self._sendto = self._unicast.transport.sendto
        self._send_pairs = getattr(self._unicast.transport, "send_batch", None)
        _LOGGER.info(
            "%s: listening on %s (SO_RCVBUF %d, read with %s)",
            self.name,
            self._local,
            self.receive_buffer,
            getattr(self._unicast, "reader", "the loop's datagram protocol"),
        )

    async def _open_endpoint(self, sock: socket.socket, label: str) -> Endpoint:
        if label == "unicast" and self.read_holdoff is not None:
            burst = BurstEndpoint(self, label, sock, self.read_holdoff)
            burst.start_reading()
            return burst
        endpoint = Endpoint(self, label, sock.family)
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: endpoint, sock=sock)
        return endpoint

    async def _open_group(self, group: str, shared: bool) -> None:
        assert self._unicast is not None and self._local is not None
        port = self.multicast_port or self._local.port
        if not shared:
            msock = self._multicast_socket(group, port)
            try:
                self._multicast = await self._open_endpoint(msock, "multicast")
            except BaseException:
                msock.close()
                raise
        # Broadcasts leave from the unicast socket when it can, so nodes answer to its port.
        self._broadcaster = self._unicast if self._group_via_unicast else self._multicast
        assert self._broadcaster is not None and self._broadcaster.transport is not None
        if self._group_family == socket.AF_INET6:
            self._group_sockaddr = (group, port, 0, self._ipv6_index())
        elif self._broadcaster.family == socket.AF_INET6:
            self._group_sockaddr = (f"::ffff:{group}", port, 0, 0)
        else:
            self._group_sockaddr = (group, port)
        self._configure_sender(self._broadcaster.transport)
        _LOGGER.info(
            "%s: joined multicast group %s port %d on %s (%s)",
            self.name,
            group,
            port,
            self.multicast_interface or "the default interface",
            "unicast socket" if shared else "own socket",
        )

    async def close(self) -> None:
        """Close the socket(s); frames sent afterwards are counted as errors."""
        self._sendto = self._not_open
        endpoints = [e for e in (self._unicast, self._multicast) if e is not None]
        for endpoint in endpoints:
            if endpoint.transport is not None:
                endpoint.transport.close()
        if endpoints:
            await asyncio.wait([e.closed for e in endpoints], timeout=1.0)
        self._unicast = self._multicast = self._broadcaster = None
        self._deliver = _no_sink

    @property
    def local_address(self) -> UdpAddress | None:
        """The address the unicast socket is bound to (after start)."""
        return self._local

    # -- sending -----------------------------------------------------------------------------

    def send(self, address: Address, frame: bytes) -> None:
        """Send one frame to one UDP peer (queued by the loop if the kernel buffer is full)."""
        if len(frame) > self.max_frame:
            self._send_oversize(address, frame)
            return
        if self._unicast is not None and self._unicast.paused:
            self.counters["tx_dropped"] += 1  # the loop's buffer is full: never grow it further
            return
        sockaddr = self._sockaddr(address)
        if sockaddr is None:
            self.counters["tx_errors"] += 1
            self._warnings.warning(
                ("tx-address", address), "%s: cannot send to %r: no UDP address", self.name, address
            )
            return
        try:
            self._sendto(frame, sockaddr)
        except (OSError, ValueError, TypeError) as exc:
            self.counters["tx_errors"] += 1
            _LOGGER.debug("%s: send to %s failed: %s", self.name, address, exc)
            return
        self.counters["tx_frames"] += 1

    def send_many(self, items: list[tuple[Address, bytes]]) -> None:
        """Send several frames, each to its peer, in order; as ``send`` does for each.

        Frames for peers heard by the recvmmsg reader leave with one ``sendmmsg`` (the C
        extension): ~25-30 % less CPU per datagram than ``sendto`` (``tests/bench/bench_mmsg.py``),
        and a fan-out is one datagram per node. What it does not take (a full kernel buffer, an
        error) and the other peers' frames go through ``send``, which queues, drops or counts
        them. A peer's frames are all in the batch or all not, so each peer's order holds.
        """
        send = self.send
        send_pairs = self._send_pairs
        raw_peers = self._raw_peers
        unicast = self._unicast
        if send_pairs is None or len(items) < 2 or unicast is None or unicast.paused:
            for address, frame in items:
                send(address, frame)
            return
        max_frame = self.max_frame
        pairs: list[tuple[bytes, bytes]] = []
        batched: list[Address] = []
        rest: list[tuple[Address, bytes]] = []
        for address, frame in items:
            raw = raw_peers.get(address)
            if raw is None or len(frame) > max_frame:
                rest.append((address, frame))
            else:
                pairs.append((frame, raw))
                batched.append(address)
        sent = send_pairs(pairs) if pairs else 0
        self.counters["tx_frames"] += sent
        for index in range(sent, len(pairs)):
            send(batched[index], pairs[index][0])
        for address, frame in rest:
            send(address, frame)

    def _sockaddr(self, address: Address) -> SockAddr | None:
        """The socket address to send ``address`` to, or None if sendto() could not take it."""
        known = self._peers.get(address)
        if known is not None:
            return known
        host = getattr(address, "host", None)
        port = getattr(address, "port", None)
        # asyncio turns any sendto() exception other than OSError into a fatal error that
        # closes the socket for everyone: refuse such an address here. Hosts are numeric
        # (they come from received datagrams); a name would be resolved synchronously.
        if (
            type(host) is str
            and type(port) is int
            and 0 <= port <= 65535
            and host.isascii()
            and "\x00" not in host
        ):
            return (host, port)
        return None

    def broadcast(self, frame: bytes, radius: int = 0) -> None:
        """Send one frame to the multicast group; ``radius`` > 0 lowers the TTL (hop limit)."""
        endpoint = self._broadcaster
        if endpoint is None or endpoint.transport is None or self._group_sockaddr is None:
            self.counters["tx_broadcasts_skipped"] += 1
            _LOGGER.debug("%s: no multicast group configured, broadcast dropped", self.name)
            return
        if len(frame) > self.max_frame:
            self._send_oversize(self._group_sockaddr, frame)
            return
        # MQTT-SN 1.2 §5.2 / reference §5.2: the radius maps to TTL; the configured TTL is a cap.
        ttl = self.multicast_ttl if radius <= 0 else min(radius, self.multicast_ttl)
        try:
            if ttl != self._broadcast_ttl:
                self._set_ttl(endpoint.transport, ttl)
            endpoint.transport.sendto(frame, self._group_sockaddr)
        except (OSError, ValueError) as exc:
            self.counters["tx_errors"] += 1
            _LOGGER.debug("%s: broadcast failed: %s", self.name, exc)
            return
        self.counters["tx_broadcasts"] += 1

    def max_frame_size(self, address: Address | None = None) -> int:
        """The configured ``max_frame``, for every peer."""
        return self.max_frame

    @property
    def can_broadcast(self) -> bool:
        """True when a multicast group is configured (SEARCHGW / ADVERTISE / GWINFO go there)."""
        return self.multicast_group is not None

    def owns(self, address: Address) -> bool:
        """True for a UdpAddress."""
        return isinstance(address, UdpAddress)

    # -- receive helpers (off the fast path) -------------------------------------------------

    def _accept_odd(self, data: bytes, addr: SockAddr) -> bool:
        """Check a datagram the fast path did not accept: a long-form header, or garbage."""
        size = len(data)
        if size > self.max_frame:
            self.counters["rx_oversize"] += 1
            reason = f"oversize ({size} > {self.max_frame} bytes)"
        elif size == 0:
            reason = "empty"
        elif data[0] == 1:
            if size >= 4 and (data[1] << 8 | data[2]) == size:
                return True  # reference §1: long form, any value allowed (pitfall P6)
            declared = (data[1] << 8 | data[2]) if size >= 3 else None
            reason = f"long-form length {declared} but {size} bytes"
        elif data[0] == 0:
            reason = "length byte 0x00"
        elif size > data[0] >= 3 and data[1] == 0xFE:
            return True  # forwarder encapsulation: Length covers the outer header only [§5.5]
        else:
            reason = f"length {data[0]} but {size} bytes"
        if size <= self.max_frame:
            self.counters["rx_malformed"] += 1
        address = self._addresses.get(addr) or self._make_address(addr)
        self._warnings.warning(
            address,
            "%s: dropped datagram from %s: %s: %s",
            self.name,
            address,
            reason,
            data[:_EXCERPT].hex(" "),
        )
        return False

    def _intern(self, addr: SockAddr, raw: bytes | None = None) -> UdpAddress:
        """The one UdpAddress of the peer at ``addr`` (known to the reader as ``raw``, if given)."""
        addresses = self._addresses
        if (
            len(addresses) >= _ADDRESS_CACHE_LIMIT
            or len(self._raw_addresses) >= _ADDRESS_CACHE_LIMIT
        ):
            addresses.clear()
            self._raw_addresses.clear()
            self._peers.clear()
            self._raw_peers.clear()
        address = addresses.get(addr)
        if address is None:
            address = self._make_address(addr)
            addresses[addr] = address
            self._peers[address] = addr if len(addr) == 4 and addr[3] else (addr[0], addr[1])
        if raw is not None:
            self._raw_addresses[raw] = address
            self._raw_peers[address] = raw
        return address

    @staticmethod
    def _make_address(addr: SockAddr) -> UdpAddress:
        # Linux gives IPv6 peers as (host, port, flowinfo, scope_id); the address keeps two.
        return UdpAddress(addr[0], addr[1])

    def _deliver_failed(self, address: UdpAddress, data: bytes) -> None:
        self.counters["rx_deliver_errors"] += 1
        _LOGGER.exception(
            "%s: deliver() failed for a frame from %s: %s",
            self.name,
            address,
            data[:_EXCERPT].hex(" "),
        )

    def _send_oversize(self, address: object, frame: bytes) -> None:
        self.counters["tx_oversize"] += 1
        self._warnings.warning(
            ("tx-oversize", address),
            "%s: not sending %d-byte frame to %s: larger than max_frame %d",
            self.name,
            len(frame),
            address,
            self.max_frame,
        )

    def _not_open(self, frame: bytes, sockaddr: SockAddr) -> None:
        raise OSError(f"{self.name} is not open")

    # -- socket set-up -----------------------------------------------------------------------

    def _unicast_socket(self, family: socket.AddressFamily) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6 and self.bind_host in ("::", ""):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            self._set_rcvbuf(sock)
            self._no_foreign_groups(sock, family)
            sock.setblocking(False)
            sock.bind((self.bind_host, self.bind_port))
        except BaseException:
            sock.close()
            raise
        return sock

    def _multicast_socket(self, group: str, port: int) -> socket.socket:
        sock = socket.socket(self._group_family, socket.SOCK_DGRAM)
        try:
            # Several gateways on one host may share the group port (DESIGN §7).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._no_foreign_groups(sock, self._group_family)
            sock.setblocking(False)
            # Bound to the group address, Linux hands this socket only the group's datagrams.
            if self._group_family == socket.AF_INET6:
                sock.bind((group, port, 0, self._ipv6_index()))
            else:
                sock.bind((group, port))
            self._join(sock, group)
        except BaseException:
            sock.close()
            raise
        return sock

    def _join(self, sock: socket.socket, group: str) -> None:
        if self._group_family == socket.AF_INET6:
            mreq = socket.inet_pton(socket.AF_INET6, group) + struct.pack("@I", self._ipv6_index())
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
        else:
            # Also right for a dual-stack IPv6 socket: Linux passes IPPROTO_IP options to IPv4.
            mreq = _ipv4_membership(group, self.multicast_interface)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)

    def _configure_sender(self, transport: asyncio.DatagramTransport) -> None:
        sock = transport.get_extra_info("socket")
        loop = int(self.multicast_loop)
        if self._group_family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, loop)
            if self.multicast_interface is not None:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, self._ipv6_index())
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, loop)
            if self.multicast_interface is not None:
                # Linux reads an ip_mreq/ip_mreqn here and uses only its interface part.
                mreq = _ipv4_membership(self.multicast_group or "0.0.0.0", self.multicast_interface)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreq)
        self._set_ttl(transport, self.multicast_ttl)

    def _set_ttl(self, transport: asyncio.DatagramTransport, ttl: int) -> None:
        sock = transport.get_extra_info("socket")
        if self._group_family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ttl)
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        self._broadcast_ttl = ttl

    def _ipv6_index(self) -> int:
        return _interface_index(self.multicast_interface) if self.multicast_interface else 0

    def _set_rcvbuf(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        self.receive_buffer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        # Linux doubles the value asked for (bookkeeping overhead) and reports the doubled size.
        usable = self.receive_buffer // 2 if sys.platform == "linux" else self.receive_buffer
        if usable < self.rcvbuf:
            _LOGGER.warning(
                "%s: asked for a %d-byte receive buffer, the kernel granted %d (getsockopt reports"
                " %d; Linux doubles it); bursts may be dropped: raise net.core.rmem_max"
                " (sysctl -w net.core.rmem_max=%d)",
                self.name,
                self.rcvbuf,
                usable,
                self.receive_buffer,
                self.rcvbuf,
            )

    @staticmethod
    def _no_foreign_groups(sock: socket.socket, family: socket.AddressFamily) -> None:
        if sys.platform != "linux":
            return
        options = [(socket.IPPROTO_IP, _IP_MULTICAST_ALL)]  # also applies to a dual-stack socket
        if family == socket.AF_INET6:
            options.append((socket.IPPROTO_IPV6, _IPV6_MULTICAST_ALL))
        for level, option in options:
            try:
                sock.setsockopt(level, option, 0)
            except OSError:
                pass  # older kernels (IPV6_MULTICAST_ALL came in 4.20): harmless without it

    def __repr__(self) -> str:
        state = "open" if self._unicast is not None else "closed"
        group = (
            f" group={self.multicast_group}:{self._group_sockaddr[1]}"
            if self._group_sockaddr is not None
            else ""
        )
        c = self.counters
        where = self._local or UdpAddress(self.bind_host, self.bind_port)
        return (
            f"<UdpTransport {self.name!r} {where}"
            f"{group} {state} rx={c['rx_frames']} tx={c['tx_frames']}"
            f" malformed={c['rx_malformed']} oversize={c['rx_oversize']}"
            f" peers={len(self._addresses)}>"
        )


def _no_sink(address: Address, frame: bytes) -> None:
    """The deliver callback before start() and after close(): frames are dropped."""

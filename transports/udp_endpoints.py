"""The sockets of a UdpTransport: the protocols that read them and the burst reader's send half.

``Endpoint`` is a plain ``asyncio.DatagramProtocol`` (the multicast socket, or every socket with
``read_holdoff=None``). ``BurstEndpoint`` reads the unicast socket itself, many datagrams per loop
wake-up, with ``recvmmsg`` from the optional C extension ``transports._mmsg`` when it is built
and a ``recvfrom`` loop when not; ``SocketTransport`` is its sending half.

Why C for reading: per forwarded message the gateway spends ~9 us of CPU, of which ``recvfrom``
costs 2.2 us, ~0.75 us of that CPython formatting the sender into a ``(host, port)`` tuple
(glibc ``inet_ntop`` uses sprintf). ``recv_batch`` reads a burst in one call and names each sender
by its raw ``struct sockaddr`` bytes, interned to its ``UdpAddress`` through a dict of their own;
no package on PyPI offers recvmmsg. Measured (``python -m tests.bench.bench_mmsg``): draining
1000 datagrams from 100 senders costs ~1.4-1.7 us of CPU per datagram with ``recvfrom`` and the
address dict, ~0.55-0.65 us with ``recv_batch`` and the raw-address dict.
The same module sends a fan-out (``UdpTransport.send_many``) with one ``sendmmsg``:
``send_batch``, ~25-30 % less CPU per datagram than ``sendto``.
``MQTTSN_UDP_MMSG=0`` in the environment (or ``recv_batch = send_batch = None`` here before a
transport starts) forces the ``recvfrom`` loop and ``sendto``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from transports.base import FrameSink

if TYPE_CHECKING:
    from transports.udp import UdpTransport

__all__ = [
    "BurstEndpoint",
    "Endpoint",
    "SockAddr",
    "SocketTransport",
    "recv_batch",
    "sockaddr_bytes",
    "sockaddr_tuple",
]

# The transport's public face logs for it: one logger name to configure.
_LOGGER = logging.getLogger("transports.udp")

_BURST_MAX = 256  # datagrams read per wake-up at most (then the loop serves the rest)
_BURST_FEW = 8  # a wake-up that found fewer pauses reading for ``read_holdoff``
_SEND_QUEUE_LIMIT = 4096  # datagrams waiting for room in the kernel's send buffer

SockAddr = tuple[Any, ...]
RecvBatch = Callable[[int, int, int], list[tuple[bytes, bytes]]]
SendBatch = Callable[[int, list[tuple[bytes, bytes]]], int]

try:
    from transports import _mmsg
except ImportError:  # not built (no compiler, not Linux): the recvfrom loop reads
    _mmsg = None  # type: ignore[assignment]

# The batch reader burst endpoints use; None: the recvfrom loop. Read when an endpoint is made.
_MMSG = _mmsg if os.environ.get("MQTTSN_UDP_MMSG", "1") != "0" else None
recv_batch: RecvBatch | None = _MMSG.recv_batch if _MMSG is not None else None
# The batch sender SocketTransport.send_batch uses; None: nothing is batched. Read per call.
send_batch: SendBatch | None = _MMSG.send_batch if _MMSG is not None else None

# struct sockaddr_in / sockaddr_in6 on Linux: sa_family in host order, port (and IPv6
# flowinfo) in network order, the IPv6 scope id in host order.
_FAMILY = struct.Struct("=H")
_IPV4_TAIL = struct.Struct("!H4s8x")  # port, address, sin_zero
_IPV6_HEAD = struct.Struct("!HI16s")  # port, flowinfo, address
_SCOPE_ID = struct.Struct("=I")
_AF_INET_BYTES = _FAMILY.pack(socket.AF_INET)
_AF_INET6_BYTES = _FAMILY.pack(socket.AF_INET6)


def sockaddr_tuple(raw: bytes) -> SockAddr:
    """The address tuple ``recvfrom`` gives for a raw ``struct sockaddr``.

    IPv4 ``(host, port)``, IPv6 ``(host, port, flowinfo, scope_id)``.
    """
    family = _FAMILY.unpack_from(raw)[0]
    if family == socket.AF_INET:
        port, packed = _IPV4_TAIL.unpack_from(raw, 2)
        return (socket.inet_ntop(socket.AF_INET, packed), port)
    if family == socket.AF_INET6:
        port, flowinfo, packed = _IPV6_HEAD.unpack_from(raw, 2)
        scope_id = _SCOPE_ID.unpack_from(raw, 24)[0]
        return (socket.inet_ntop(socket.AF_INET6, packed), port, flowinfo, scope_id)
    raise ValueError(f"not an IPv4 or IPv6 socket address: family {family}")


def sockaddr_bytes(addr: SockAddr) -> bytes:
    """The raw ``struct sockaddr`` of a numeric address tuple, as ``sockaddr_tuple`` reads it.

    ``(host, port)`` with an IPv4 host, or ``(host, port[, flowinfo[, scope_id]])`` with an
    IPv6 one.
    """
    host, port = addr[0], addr[1]
    if ":" not in host:
        return _AF_INET_BYTES + _IPV4_TAIL.pack(port, socket.inet_pton(socket.AF_INET, host))
    flowinfo = addr[2] if len(addr) > 2 else 0
    scope_id = addr[3] if len(addr) > 3 else 0
    return (
        _AF_INET6_BYTES
        + _IPV6_HEAD.pack(port, flowinfo, socket.inet_pton(socket.AF_INET6, host))
        + _SCOPE_ID.pack(scope_id)
    )


class Endpoint(asyncio.DatagramProtocol):
    """The protocol of one socket (unicast, or the separate multicast one) of a UdpTransport."""

    def __init__(self, owner: UdpTransport, label: str, family: socket.AddressFamily) -> None:
        self._owner = owner
        self._label = label
        self.family = family
        self._counters = owner.counters
        self._addresses = owner._addresses
        self._deliver: FrameSink = owner._deliver
        self._max_frame = owner.max_frame
        self.transport: asyncio.DatagramTransport | None = None
        self.paused = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: SockAddr) -> None:
        # Hot path: keep it flat. The usual case is a short-form header matching the size.
        size = len(data)
        usual = 1 < size <= self._max_frame and data[0] == size
        if not usual and not self._owner._accept_odd(data, addr):
            return
        address = self._addresses.get(addr)
        if address is None:
            address = self._owner._intern(addr)
        self._counters["rx_frames"] += 1
        try:
            self._deliver(address, data)
        except Exception:
            self._owner._deliver_failed(address, data)

    def error_received(self, exc: Exception) -> None:
        # Linux reports e.g. ICMP port unreachable here; a node that went away is no crash.
        self._counters["tx_errors"] += 1
        _LOGGER.debug("%s %s socket error: %s", self._owner.name, self._label, exc)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            _LOGGER.warning("%s %s socket lost: %s", self._owner.name, self._label, exc)
        if not self.closed.done():
            self.closed.set_result(None)

    def __repr__(self) -> str:
        return f"<Endpoint {self._owner.name} {self._label} paused={self.paused}>"


class SocketTransport:
    """The sending half of a ``BurstEndpoint``: ``sendto`` straight on the non-blocking socket.

    What the kernel cannot take right now waits in a bounded queue drained when the socket is
    writable (as the loop's datagram transport would buffer it); beyond the bound ``sendto``
    reports the frame as not sent.
    """

    __slots__ = ("_endpoint", "_loop", "_queue", "_sock", "_writing")

    def __init__(self, endpoint: BurstEndpoint, sock: socket.socket) -> None:
        self._endpoint = endpoint
        self._sock: socket.socket | None = sock
        self._loop = asyncio.get_running_loop()
        self._queue: deque[tuple[bytes, SockAddr]] = deque()
        self._writing = False

    def sendto(self, data: bytes, addr: SockAddr) -> None:
        """Send one datagram now, or queue it while the kernel's buffer is full."""
        sock = self._sock
        if sock is None:
            raise OSError("socket closed")
        if not self._queue:
            try:
                sock.sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                pass
        if len(self._queue) >= _SEND_QUEUE_LIMIT:
            raise BlockingIOError("send queue full")
        self._queue.append((data, addr))
        if not self._writing:
            self._writing = True
            self._endpoint.paused = True
            self._loop.add_writer(sock.fileno(), self._drain)

    def send_batch(self, pairs: list[tuple[bytes, bytes]]) -> int:
        """Send ``(datagram, raw sockaddr)`` pairs in order with ``sendmmsg``; how many left.

        Stops at the first the kernel does not take (a full buffer, an error): the caller
        sends the rest with ``sendto``, which queues or reports them. 0 while datagrams wait in
        the queue (they go first) or with the extension off.
        """
        sock = self._sock
        batch = send_batch
        if sock is None or self._queue or batch is None:
            return 0
        fd = sock.fileno()
        sent = 0
        try:
            while sent < len(pairs):  # the extension takes up to 1024 per call
                taken = batch(fd, pairs[sent:] if sent else pairs)
                if not taken:
                    break
                sent += taken
        except OSError:
            pass  # e.g. an ICMP error of an earlier send: sendto meets it again, and counts it
        return sent

    def _drain(self) -> None:
        queue = self._queue
        sock = self._sock
        while queue and sock is not None:
            data, addr = queue[0]
            try:
                sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._endpoint.error_received_count()
            queue.popleft()
        if sock is not None:
            self._loop.remove_writer(sock.fileno())
        self._writing = False
        self._endpoint.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``"socket"`` (for the multicast options), as the loop's transports offer it."""
        if name == "socket":
            return self._sock
        if name == "sockname" and self._sock is not None:
            return self._sock.getsockname()
        return default

    def is_closing(self) -> bool:
        """True once closed."""
        return self._sock is None

    def close(self) -> None:
        """Stop reading and writing, close the socket; queued frames are dropped."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._writing:
            self._loop.remove_writer(sock.fileno())
        self._queue.clear()
        self._endpoint.stop_reading()
        sock.close()
        self._endpoint.connection_lost(None)


class BurstEndpoint(Endpoint):
    """The unicast socket read by the transport itself: many datagrams per loop wake-up.

    Measured (tests/bench/RESULTS.md): the loop's datagram protocol wakes up, reads and calls
    back once per datagram or nearly so, and under load the kernel work per wake-up dominates.
    Here one wake-up drains up to ``_BURST_MAX`` datagrams, with one ``recv_batch`` (recvmmsg)
    call when the C extension is there, else with ``recvfrom`` in a loop; when a wake-up
    found only a few (a trickle: each would cost a wake-up of its own) the reader is paused
    for ``holdoff`` seconds so the next one finds a burst. That adds at most ``holdoff`` of
    latency and lets the rest of the gateway (the broker write, the QoS 1 PUBACKs) work in
    batches too.
    """

    def __init__(
        self, owner: UdpTransport, label: str, sock: socket.socket, holdoff: float
    ) -> None:
        super().__init__(owner, label, sock.family)
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = asyncio.get_running_loop()
        self._holdoff = holdoff
        self._bufsize = owner.max_frame + 1  # one byte more: an oversize datagram shows as such
        self._reading = False
        self._resume_handle: asyncio.TimerHandle | None = None
        self._raw_addresses = owner._raw_addresses
        self._recv_batch = recv_batch  # the module's switch, as it is now
        self._read = self._on_readable if self._recv_batch is None else self._on_readable_batch
        self.transport = cast(asyncio.DatagramTransport, SocketTransport(self, sock))

    def start_reading(self) -> None:
        """Begin delivering datagrams."""
        if not self._reading and self.transport is not None and not self.transport.is_closing():
            self._reading = True
            self._loop.add_reader(self._fd, self._read)

    def stop_reading(self) -> None:
        """Stop delivering datagrams (at close)."""
        if self._resume_handle is not None:
            self._resume_handle.cancel()
            self._resume_handle = None
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def error_received_count(self) -> None:
        """A send error surfaced while draining the send queue."""
        self._counters["tx_errors"] += 1

    def _resume(self) -> None:
        self._resume_handle = None
        self.start_reading()

    def _on_readable(self) -> None:
        # Hot path: the body of datagram_received, inlined in the read loop.
        recvfrom = self._sock.recvfrom
        bufsize = self._bufsize
        max_frame = self._max_frame
        addresses = self._addresses
        deliver = self._deliver
        owner = self._owner
        count = accepted = 0
        while count < _BURST_MAX:
            try:
                data, addr = recvfrom(bufsize)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                # Linux reports e.g. ICMP port unreachable of an earlier send here.
                self.error_received(exc)
                continue
            count += 1
            size = len(data)
            if not (1 < size <= max_frame and data[0] == size) and not owner._accept_odd(
                data, addr
            ):
                continue
            address = addresses.get(addr)
            if address is None:
                address = owner._intern(addr)
            accepted += 1
            try:
                deliver(address, data)
            except Exception:
                owner._deliver_failed(address, data)
        self._counters["rx_frames"] += accepted
        if count < _BURST_FEW and self._holdoff > 0 and self._reading:
            self._hold_off()

    def _on_readable_batch(self) -> None:
        # Hot path: as _on_readable, but one recvmmsg reads the burst and each sender comes as
        # its raw sockaddr bytes, looked up in a dict of their own (no tuple, no inet_ntop).
        recv = self._recv_batch
        if recv is None:
            self._on_readable()
            return
        try:
            batch = recv(self._fd, _BURST_MAX, self._bufsize)
        except OSError as exc:
            # Linux reports e.g. ICMP port unreachable of an earlier send here, once.
            self.error_received(exc)
            batch = self._recv_after_error(recv)
        max_frame = self._max_frame
        raw_addresses = self._raw_addresses
        deliver = self._deliver
        owner = self._owner
        accepted = 0
        for data, raw in batch:
            size = len(data)
            if not (1 < size <= max_frame and data[0] == size) and not owner._accept_odd(
                data, sockaddr_tuple(raw)
            ):
                continue
            address = raw_addresses.get(raw)
            if address is None:
                address = owner._intern(sockaddr_tuple(raw), raw)
            accepted += 1
            try:
                deliver(address, data)
            except Exception:
                owner._deliver_failed(address, data)
        self._counters["rx_frames"] += accepted
        if len(batch) < _BURST_FEW and self._holdoff > 0 and self._reading:
            self._hold_off()

    def _recv_after_error(self, recv: RecvBatch) -> list[tuple[bytes, bytes]]:
        # The kernel keeps one pending socket error and clears it once reported: read again.
        for _ in range(3):
            try:
                return recv(self._fd, _BURST_MAX, self._bufsize)
            except OSError as exc:
                self.error_received(exc)
        return []

    def _hold_off(self) -> None:
        self._reading = False
        self._loop.remove_reader(self._fd)
        self._resume_handle = self._loop.call_later(self._holdoff, self._resume)

    @property
    def reader(self) -> str:
        """``"recvmmsg"`` (the C extension) or ``"recvfrom"`` (the loop)."""
        return "recvfrom" if self._recv_batch is None else "recvmmsg"

    def __repr__(self) -> str:
        return (
            f"<BurstEndpoint {self._owner.name} {self._label} reader={self.reader}"
            f" reading={self._reading} paused={self.paused}>"
        )

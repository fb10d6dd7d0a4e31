"""The recvmmsg/sendmmsg extension and its sockaddr helpers, on real loopback sockets."""

from __future__ import annotations

import errno
import os
import select
import shutil
import socket
import sys
from collections.abc import Iterator
from types import ModuleType

import pytest

from tests.transports.net_helpers import have_ipv6_loopback
from transports import udp_endpoints
from transports.udp_endpoints import sockaddr_bytes, sockaddr_tuple

try:
    from transports import _mmsg as built_mmsg
except ImportError:
    built_mmsg = None  # type: ignore[assignment]

PINGREQ = b"\x02\x16"
_NOT_BUILT = (
    "transports._mmsg is not built: the tests need Linux, a C compiler and the Python headers"
    " (apt-get install gcc python3-dev), then pip install -e ."
)


@pytest.fixture
def mmsg() -> ModuleType:
    """The built extension; its absence is a failure (see the test below)."""
    assert built_mmsg is not None, _NOT_BUILT
    return built_mmsg


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Sockets a test opens, closed afterwards."""
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def udp_socket(
    sockets: list[socket.socket], host: str = "127.0.0.1", family: int = socket.AF_INET
) -> socket.socket:
    """A non-blocking UDP socket bound to ``host`` on a free port."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sockets.append(sock)
    if family == socket.AF_INET6 and host == "::":
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


def wait_readable(sock: socket.socket) -> None:
    """Block (2 s at most) until ``sock`` has something to read."""
    ready, _, _ = select.select([sock], [], [], 2.0)
    assert ready, "nothing arrived"


def test_extension_is_built_where_it_can_be() -> None:
    """``pip install -e .`` builds it on Linux with a C compiler: a failed build shows here.

    The gateway itself runs without it (the recvfrom loop reads); the test suite does not.
    """
    assert sys.platform == "linux" and shutil.which("cc") is not None, _NOT_BUILT
    assert built_mmsg is not None, _NOT_BUILT
    if os.environ.get("MQTTSN_UDP_MMSG", "1") != "0":
        assert udp_endpoints.recv_batch is built_mmsg.recv_batch


def test_batch_from_several_senders_dual_stack(
    mmsg: ModuleType, sockets: list[socket.socket]
) -> None:
    """IPv4 and ::1 senders in one batch; each raw sockaddr decodes to what recvfrom says."""
    assert have_ipv6_loopback(), "the tests need IPv6 on loopback (::1)"
    receiver = udp_socket(sockets, "::", socket.AF_INET6)
    port = receiver.getsockname()[1]
    senders = [
        udp_socket(sockets),
        udp_socket(sockets),
        udp_socket(sockets, "::1", socket.AF_INET6),
    ]
    targets = [("127.0.0.1", port), ("127.0.0.1", port), ("::1", port)]
    for round_ in range(2):  # once for recv_batch, once for recvfrom to compare with
        for i, (sender, target) in enumerate(zip(senders, targets, strict=True)):
            sender.sendto(bytes([3, round_, i]), target)
    wait_readable(receiver)
    batch = mmsg.recv_batch(receiver.fileno(), 3, 64)
    assert [data for data, _ in batch] == [b"\x03\x00\x00", b"\x03\x00\x01", b"\x03\x00\x02"]
    for (_, raw), sender in zip(batch, senders, strict=True):
        data, source = receiver.recvfrom(64)
        assert data[2] == senders.index(sender)
        assert sockaddr_tuple(raw) == source
        assert len(raw) == 28  # a dual-stack socket names every sender as sockaddr_in6
        assert sockaddr_bytes(source) == raw
    mapped = sockaddr_tuple(batch[0][1])
    assert mapped[0] == "::ffff:127.0.0.1" and mapped[1] == senders[0].getsockname()[1]
    assert sockaddr_tuple(batch[2][1])[:2] == ("::1", senders[2].getsockname()[1])
    assert batch[0][1] != batch[1][1]  # two senders, two keys
    assert mmsg.recv_batch(receiver.fileno(), 8, 64) == []


def test_ipv4_sockaddr_round_trip(mmsg: ModuleType, sockets: list[socket.socket]) -> None:
    """An IPv4 socket gives 16-byte sockaddr_in; it decodes to (host, port) and back."""
    receiver = udp_socket(sockets)
    sender = udp_socket(sockets)
    for _ in range(2):
        sender.sendto(PINGREQ, receiver.getsockname())
    wait_readable(receiver)
    [(data, raw)] = mmsg.recv_batch(receiver.fileno(), 1, 16)
    assert data == PINGREQ
    assert len(raw) == 16
    assert sockaddr_tuple(raw) == receiver.recvfrom(16)[1] == sender.getsockname()
    assert sockaddr_bytes(sender.getsockname()) == raw


def test_ipv6_scope_and_flowinfo_survive_the_round_trip() -> None:
    """sockaddr_bytes/sockaddr_tuple keep flowinfo and scope_id (link-local peers need it)."""
    addr = ("fe80::1", 1884, 0x12345, 3)
    raw = sockaddr_bytes(addr)
    assert len(raw) == 28
    assert sockaddr_tuple(raw) == addr
    assert sockaddr_tuple(sockaddr_bytes(("::1", 7))) == ("::1", 7, 0, 0)
    with pytest.raises(ValueError, match="family"):
        sockaddr_tuple(b"\x01\x00" + bytes(14))  # AF_UNIX


def test_oversize_datagram_is_cut_to_bufsize(
    mmsg: ModuleType, sockets: list[socket.socket]
) -> None:
    """A datagram longer than bufsize arrives cut to bufsize; the next one is whole."""
    receiver = udp_socket(sockets)
    sender = udp_socket(sockets)
    big = bytes(range(256)) * 8
    sender.sendto(big, receiver.getsockname())
    sender.sendto(PINGREQ, receiver.getsockname())
    wait_readable(receiver)
    batch = mmsg.recv_batch(receiver.fileno(), 4, 101)
    assert [data for data, _ in batch] == [big[:101], PINGREQ]


def test_nothing_to_read_is_an_empty_list(mmsg: ModuleType, sockets: list[socket.socket]) -> None:
    """EAGAIN gives [] (the socket needs not even be non-blocking: MSG_DONTWAIT)."""
    receiver = udp_socket(sockets)
    receiver.setblocking(True)
    assert mmsg.recv_batch(receiver.fileno(), 256, 1025) == []


def test_batch_is_bounded_by_count(mmsg: ModuleType, sockets: list[socket.socket]) -> None:
    """No more than ``count`` per call; the rest stays queued, in order."""
    receiver = udp_socket(sockets)
    sender = udp_socket(sockets)
    for i in range(5):
        sender.sendto(bytes([3, 0, i]), receiver.getsockname())
    wait_readable(receiver)
    first = mmsg.recv_batch(receiver.fileno(), 3, 8)
    rest = mmsg.recv_batch(receiver.fileno(), 3, 8)
    assert [d[2] for d, _ in first] == [0, 1, 2]
    assert [d[2] for d, _ in rest] == [3, 4]


def test_arguments_are_checked(mmsg: ModuleType, sockets: list[socket.socket]) -> None:
    """count 1..1024, bufsize 1..65536, a valid fd; send_batch takes (bytes, bytes) pairs."""
    fd = udp_socket(sockets).fileno()
    for count, bufsize in ((0, 16), (1025, 16), (1, 0), (1, 65537)):
        with pytest.raises(ValueError, match="must be within"):
            mmsg.recv_batch(fd, count, bufsize)
    with pytest.raises(TypeError):
        mmsg.recv_batch(fd, 1)
    with pytest.raises(TypeError):
        mmsg.recv_batch(fd, "1", 16)
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead_fd = closed.fileno()
    closed.close()
    with pytest.raises(OSError) as info:
        mmsg.recv_batch(dead_fd, 1, 16)
    assert info.value.errno == errno.EBADF
    with pytest.raises(TypeError, match="items must be a list"):
        mmsg.send_batch(fd, iter([]))
    with pytest.raises(TypeError, match=r"items\[1\]"):
        mmsg.send_batch(fd, [(PINGREQ, sockaddr_bytes(("127.0.0.1", 9))), (PINGREQ, "x")])
    assert mmsg.send_batch(fd, []) == 0


def test_icmp_port_unreachable_raises_once(mmsg: ModuleType, sockets: list[socket.socket]) -> None:
    """Linux reports ICMP port unreachable on the next receive: OSError, then reading goes on."""
    dead = udp_socket(sockets)
    dead_addr = dead.getsockname()
    dead.close()  # nobody listens there now
    sock = udp_socket(sockets)
    sock.connect(dead_addr)  # a connected UDP socket gets the error without IP_RECVERR
    sock.send(PINGREQ)
    wait_readable(sock)  # the error makes it readable
    with pytest.raises(ConnectionRefusedError):
        mmsg.recv_batch(sock.fileno(), 8, 64)
    assert mmsg.recv_batch(sock.fileno(), 8, 64) == []


def test_send_batch_reaches_many_sockets(mmsg: ModuleType, sockets: list[socket.socket]) -> None:
    """One call sends to every peer, in order, IPv4 and IPv6; the count says how many."""
    receivers = [udp_socket(sockets) for _ in range(5)]
    sender = udp_socket(sockets)
    items = [(bytes([3, 0, i]), sockaddr_bytes(r.getsockname())) for i, r in enumerate(receivers)]
    items.append((b"\x03\x00\x09", items[0][1]))
    assert mmsg.send_batch(sender.fileno(), items) == 6
    for i, receiver in enumerate(receivers):
        wait_readable(receiver)
        data, source = receiver.recvfrom(16)
        assert data == bytes([3, 0, i]) and source == sender.getsockname()
    assert receivers[0].recv(16) == b"\x03\x00\x09"
    if have_ipv6_loopback():
        receiver6 = udp_socket(sockets, "::1", socket.AF_INET6)
        sender6 = udp_socket(sockets, "::1", socket.AF_INET6)
        raw6 = sockaddr_bytes(receiver6.getsockname())
        assert mmsg.send_batch(sender6.fileno(), ((PINGREQ, raw6),)) == 1
        wait_readable(receiver6)
        assert receiver6.recv(16) == PINGREQ


def test_send_batch_stops_at_a_refused_datagram(
    mmsg: ModuleType, sockets: list[socket.socket]
) -> None:
    """An error on the first datagram raises; on a later one the count stops before it."""
    receiver = udp_socket(sockets)
    sender = udp_socket(sockets)
    good = (PINGREQ, sockaddr_bytes(receiver.getsockname()))
    broadcast = (PINGREQ, sockaddr_bytes(("255.255.255.255", 9)))  # EACCES: no SO_BROADCAST
    with pytest.raises(PermissionError):
        mmsg.send_batch(sender.fileno(), [broadcast, good])
    assert mmsg.send_batch(sender.fileno(), [good, broadcast, good]) == 1
    wait_readable(receiver)
    assert receiver.recv(16) == PINGREQ


def test_send_batch_full_buffer_is_zero(mmsg: ModuleType, sockets: list[socket.socket]) -> None:
    """When the kernel's send buffer is full sendmmsg says EAGAIN: 0 sent, no exception."""
    # Loopback UDP hands each datagram over at once (or drops it), so its send buffer never
    # fills; a Unix datagram pair whose reader reads nothing does.
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    sockets += [left, right]
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    item = (bytes(512), b"")  # connected: no address
    sent = [mmsg.send_batch(left.fileno(), [item] * 64) for _ in range(50)]
    assert sent[-1] == 0
    assert 0 < sum(sent) < 64 * 50
    assert right.recv(1024) == bytes(512)

"""UDP transport on real loopback sockets: echo, bad datagrams, receive buffer, multicast."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import transports
from tests.transports.net_helpers import have_ipv6_loopback
from transports import udp, udp_endpoints
from transports.base import Address, UdpAddress
from transports.udp import UdpTransport, WarningLimiter

PINGREQ = b"\x02\x16"
SEARCHGW = b"\x03\x01\x01"
PUBLISH = bytes.fromhex("0A 0C 00 00 01 00 00 68 69 21")
LONG_PUBLISH = bytes([1, 0, 12]) + bytes.fromhex("0C 00 00 01 00 00 68 69 21")
GROUP = "239.255.0.1"
IP_RECVTTL = 12  # Linux <netinet/in.h>; Python 3.11 does not name it
IP_RECVERR = 11  # ditto
MSG_ERRQUEUE = 0x2000  # ditto


class Inbox:
    """Collects what a transport delivers, awaitable."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[Address, bytes]] = asyncio.Queue()

    def __call__(self, address: Address, frame: bytes) -> None:
        self.queue.put_nowait((address, frame))

    async def get(self) -> tuple[Address, bytes]:
        async with asyncio.timeout(2.0):
            return await self.queue.get()


def client_socket(family: socket.AddressFamily = socket.AF_INET) -> socket.socket:
    """A non-blocking UDP socket on loopback playing a sensor node."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def receive(sock: socket.socket) -> tuple[bytes, tuple[object, ...]]:
    """One datagram from ``sock`` without blocking the loop (2 s at most)."""
    await readable(sock)  # uvloop has no loop.sock_recvfrom()
    data, source = sock.recvfrom(65536)
    return data, source


async def readable(sock: socket.socket) -> None:
    """Wait until ``sock`` has a datagram to read (2 s at most)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    loop.add_reader(sock, ready.set_result, None)
    try:
        async with asyncio.timeout(2.0):
            await ready
    finally:
        loop.remove_reader(sock)


def free_udp_port() -> int:
    """A UDP port nobody uses right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def group_listener(port: int) -> socket.socket:
    """A socket on loopback joined to GROUP, as a node listening for ADVERTISE/GWINFO."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((GROUP, port))
    mreq = socket.inet_aton(GROUP) + socket.inet_aton("127.0.0.1")
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    sock.setblocking(False)
    return sock


def group_sender() -> socket.socket:
    """A node's socket that multicasts on loopback (SEARCHGW)."""
    sock = client_socket()
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    return sock


@pytest.fixture(params=["recvmmsg", "recvfrom"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with either reader of the unicast socket: the C extension's or the loop."""
    if request.param == "recvfrom":
        monkeypatch.setattr(udp_endpoints, "recv_batch", None)
    elif udp_endpoints.recv_batch is None:  # switched off (MQTTSN_UDP_MMSG=0) or not built
        from transports import _mmsg  # an ImportError here: not built, see test_mmsg.py

        monkeypatch.setattr(udp_endpoints, "recv_batch", _mmsg.recv_batch)
    return str(request.param)


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Sockets a test opens, closed afterwards."""
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


@pytest.fixture
async def closing(reader: str) -> AsyncIterator[list[UdpTransport]]:
    """Transports a test starts (with each reader in turn), closed afterwards."""
    started: list[UdpTransport] = []
    yield started
    for transport in started:
        if transport._unicast is not None:  # the reader asked for is the one that ran
            assert f"reader={reader}" in repr(transport._unicast)
    for transport in started:
        await transport.close()


async def echo_roundtrip(host: str, family: socket.AddressFamily, reader: str) -> None:
    """Start a transport on ``host`` that echoes, and check a node gets its frames back."""
    inbox = Inbox()
    transport = UdpTransport(host, 0)

    def deliver(address: Address, frame: bytes) -> None:
        inbox(address, frame)
        transport.send(address, frame)

    await transport.start(deliver)
    try:
        assert f"reader={reader}" in repr(transport._unicast)
        assert transport.local_address is not None
        node = client_socket(family)
        with node:
            target = (
                "::1" if family == socket.AF_INET6 else "127.0.0.1",
                transport.local_address.port,
            )
            for frame in (PINGREQ, PUBLISH, LONG_PUBLISH):
                node.sendto(frame, target)
                address, got = await inbox.get()
                assert got == frame
                assert address == UdpAddress(node.getsockname()[0], node.getsockname()[1])
                echoed, _ = await receive(node)
                assert echoed == frame
            first = address
            node.sendto(PINGREQ, target)
            again, _ = await inbox.get()
            assert again is first  # the address cache hands out one object per peer
        assert transport.counters["rx_frames"] == transport.counters["tx_frames"] == 4
    finally:
        await transport.close()


async def test_ipv4_echo(reader: str) -> None:
    """IPv4 loopback: frames in both header forms are delivered and sent back."""
    await echo_roundtrip("127.0.0.1", socket.AF_INET, reader)


async def test_ipv6_echo(reader: str) -> None:
    """IPv6 loopback: the 4-tuple peer address becomes UdpAddress(host, port)."""
    await echo_roundtrip("::1", socket.AF_INET6, reader)


async def test_dual_stack_bind_serves_ipv4(closing: list[UdpTransport]) -> None:
    """Bound to ::, an IPv4 node is seen as ::ffff:a.b.c.d and gets its replies."""
    inbox = Inbox()
    transport = UdpTransport("::", 0)
    closing.append(transport)
    await transport.start(inbox)
    assert transport.local_address is not None
    with client_socket() as node:
        node.sendto(PINGREQ, ("127.0.0.1", transport.local_address.port))
        address, _ = await inbox.get()
        assert address == UdpAddress("::ffff:127.0.0.1", node.getsockname()[1])
        transport.send(address, b"\x02\x17")
        assert (await receive(node))[0] == b"\x02\x17"


async def test_send_many(closing: list[UdpTransport], sockets: list[socket.socket]) -> None:
    """send_many() sends each frame to its own peer, in order."""
    transport = UdpTransport("127.0.0.1", 0)
    closing.append(transport)
    await transport.start(Inbox())
    nodes = [client_socket(), client_socket()]
    sockets += nodes
    addresses = [UdpAddress("127.0.0.1", n.getsockname()[1]) for n in nodes]
    transport.send_many(
        [(addresses[0], PINGREQ), (addresses[1], PUBLISH), (addresses[0], SEARCHGW)]
    )
    assert (await receive(nodes[0]))[0] == PINGREQ
    assert (await receive(nodes[1]))[0] == PUBLISH
    assert (await receive(nodes[0]))[0] == SEARCHGW
    assert transport.counters["tx_frames"] == 3


async def test_send_many_to_peers_heard_from_is_one_sendmmsg(
    closing: list[UdpTransport],
    sockets: list[socket.socket],
    reader: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fan-out to peers the recvmmsg reader heard leaves in sendmmsg calls, each peer in order.

    An unheard peer and an oversize frame go the ``send`` way; with the recvfrom reader (no raw
    addresses) everything does.
    """
    from transports import _mmsg

    calls: list[int] = []

    def counting(fd: int, pairs: list[tuple[bytes, bytes]]) -> int:
        calls.append(len(pairs))
        return _mmsg.send_batch(fd, pairs)

    monkeypatch.setattr(udp_endpoints, "send_batch", counting)
    inbox = Inbox()
    transport = UdpTransport("127.0.0.1", 0)
    closing.append(transport)
    await transport.start(inbox)
    assert transport.local_address is not None
    nodes = [client_socket() for _ in range(5)]
    sockets += nodes
    heard = []
    for node in nodes[:4]:
        node.sendto(PINGREQ, ("127.0.0.1", transport.local_address.port))
        heard.append((await inbox.get())[0])
    unheard = UdpAddress("127.0.0.1", nodes[4].getsockname()[1])
    items = [(address, PINGREQ) for address in heard] + [(unheard, PINGREQ)]
    items += [(heard[0], bytes([200]) + bytes(199) * 10)]  # over max_frame: dropped, counted
    items += [(address, PUBLISH) for address in (*heard, unheard)]
    transport.send_many(items)
    for node in nodes:
        assert [(await receive(node))[0] for _ in range(2)] == [PINGREQ, PUBLISH]
    assert transport.counters["tx_frames"] == 10
    assert transport.counters["tx_oversize"] == 1
    assert calls == ([8] if reader == "recvmmsg" else [])


BAD_DATAGRAMS = [
    b"",  # empty
    b"\x00\x16",  # length byte 0x00
    b"\x05\x16",  # says 5, has 2
    b"\x02\x16\x00",  # says 2, has 3
    b"\x01\x00",  # runt long form
    b"\x01\x00\x09\x0c\x00",  # long form says 9, has 5
    b"\x01\x00\x03\x16",  # long form total below 4
    bytes([0xFF]) * 2000,  # oversize
]


async def test_bad_datagrams_counted_rate_limited_and_survived(
    closing: list[UdpTransport], caplog: pytest.LogCaptureFixture
) -> None:
    """100 bad datagrams: counted, one WARNING with sender and hex; a good one still arrives."""
    inbox = Inbox()
    transport = UdpTransport("127.0.0.1", 0, max_frame=1024)
    closing.append(transport)
    await transport.start(inbox)
    assert transport.local_address is not None
    target = ("127.0.0.1", transport.local_address.port)
    with client_socket() as node:
        for i in range(100):
            node.sendto(BAD_DATAGRAMS[i % len(BAD_DATAGRAMS)], target)
        node.sendto(PINGREQ, target)  # loopback keeps one socket's datagrams in order
        address, frame = await inbox.get()
    assert frame == PINGREQ
    counters = transport.counters
    assert counters["rx_oversize"] == 100 // len(BAD_DATAGRAMS)
    assert counters["rx_malformed"] + counters["rx_oversize"] == 100
    assert counters["rx_frames"] == 1
    warnings = [
        r for r in caplog.records if r.name == "transports.udp" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1
    assert str(address) in warnings[0].getMessage()
    assert "empty" in warnings[0].getMessage()


async def test_each_bad_sender_gets_its_own_warning(
    closing: list[UdpTransport], caplog: pytest.LogCaptureFixture
) -> None:
    """The rate limit is per sender: a second node's garbage is reported too, with hex."""
    inbox = Inbox()
    transport = UdpTransport("127.0.0.1", 0)
    closing.append(transport)
    await transport.start(inbox)
    assert transport.local_address is not None
    target = ("127.0.0.1", transport.local_address.port)
    with client_socket() as first, client_socket() as second:
        first.sendto(b"\x05\x16\xab", target)
        second.sendto(b"\x00\x16\xcd\xef", target)
        second.sendto(PINGREQ, target)
        await inbox.get()
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "transports.udp" and r.levelno == logging.WARNING
    ]
    assert len(lines) == 2
    assert "05 16 ab" in lines[0]
    assert "00 16 cd ef" in lines[1]


def test_warning_limiter_summarises_suppressed_lines(caplog: pytest.LogCaptureFixture) -> None:
    """After the interval the next line says how many were suppressed."""
    now = [100.0]
    logger = logging.getLogger("tests.limiter")
    limiter = WarningLimiter(logger, 10.0, clock=lambda: now[0])
    assert limiter.warning("peer", "bad %s", "x")
    for _ in range(5):
        assert not limiter.warning("peer", "bad %s", "x")
    now[0] += 10.0
    assert limiter.warning("peer", "bad %s", "y")
    messages = [r.getMessage() for r in caplog.records if r.name == "tests.limiter"]
    assert messages == ["bad x", "bad y (5 similar suppressed in 10 s)"]


async def test_deliver_failure_does_not_stop_the_transport(
    closing: list[UdpTransport], caplog: pytest.LogCaptureFixture
) -> None:
    """A raising deliver() is counted and logged; the next frame still arrives."""
    inbox = Inbox()
    calls = 0

    def deliver(address: Address, frame: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("core bug")
        inbox(address, frame)

    transport = UdpTransport("127.0.0.1", 0)
    closing.append(transport)
    await transport.start(deliver)
    assert transport.local_address is not None
    with client_socket() as node:
        node.sendto(PINGREQ, ("127.0.0.1", transport.local_address.port))
        node.sendto(SEARCHGW, ("127.0.0.1", transport.local_address.port))
        assert (await inbox.get())[1] == SEARCHGW
    assert transport.counters["rx_deliver_errors"] == 1
    assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)


async def test_send_problems_are_counted_not_raised(closing: list[UdpTransport]) -> None:
    """Oversize frames, bad addresses, kernel refusals and sends after close() only count."""
    inbox = Inbox()
    transport = UdpTransport("127.0.0.1", 0, max_frame=64)
    closing.append(transport)
    await transport.start(inbox)
    assert transport.local_address is not None
    transport.send(UdpAddress("127.0.0.1", 9), bytes([100]) + bytes(99))
    assert transport.counters["tx_oversize"] == 1
    for bad in (UdpAddress("127.0.0.1", 70000), UdpAddress("bad\x00host", 9), "127.0.0.1:9"):
        transport.send(bad, PINGREQ)
    assert transport.counters["tx_errors"] == 3
    # EACCES (broadcast without SO_BROADCAST) comes back through error_received().
    transport.send(UdpAddress("255.255.255.255", 9), PINGREQ)
    await asyncio.sleep(0)
    assert transport.counters["tx_errors"] == 4
    with client_socket() as node:  # the socket survived all of it
        node.sendto(PINGREQ, ("127.0.0.1", transport.local_address.port))
        address, _ = await inbox.get()
        transport.send(address, PINGREQ)
        assert (await receive(node))[0] == PINGREQ
    await transport.close()
    transport.send(UdpAddress("127.0.0.1", 9), PINGREQ)
    transport.send_many([(UdpAddress("127.0.0.1", 9), PINGREQ)])
    assert transport.counters["tx_errors"] == 6


async def test_icmp_error_on_the_socket_is_counted_not_fatal(
    closing: list[UdpTransport], sockets: list[socket.socket]
) -> None:
    """An ICMP port unreachable the socket reports (IP_RECVERR) counts; reading goes on."""
    inbox = Inbox()
    transport = UdpTransport("127.0.0.1", 0)
    closing.append(transport)
    await transport.start(inbox)
    assert transport.local_address is not None and transport._unicast is not None
    assert transport._unicast.transport is not None
    sock = transport._unicast.transport.get_extra_info("socket")
    # Without IP_RECVERR Linux reports ICMP errors only to connected UDP sockets.
    sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    dead_port = free_udp_port()
    transport.send(UdpAddress("127.0.0.1", dead_port), PINGREQ)
    assert transport.counters["tx_frames"] == 1  # the kernel took it; the ICMP comes back later
    node = client_socket()
    sockets.append(node)
    node.sendto(PUBLISH, ("127.0.0.1", transport.local_address.port))
    assert (await inbox.get())[1] == PUBLISH
    for _ in range(400):  # the batch reader may take the datagram first, the error after
        if transport.counters["tx_errors"]:
            break
        await asyncio.sleep(0.005)
    assert transport.counters["tx_errors"] == 1
    sock.recvmsg(64, 1024, MSG_ERRQUEUE)  # the error's copy there keeps the socket readable
    sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 0)
    node.sendto(PINGREQ, ("127.0.0.1", transport.local_address.port))
    assert (await inbox.get())[1] == PINGREQ
    assert transport.counters["rx_frames"] == 2


async def test_address_cache_is_bounded(
    closing: list[UdpTransport],
    sockets: list[socket.socket],
    monkeypatch: pytest.MonkeyPatch,
    reader: str,
) -> None:
    """The peer-address cache is cleared when it reaches its limit (100k; 3 here)."""
    monkeypatch.setattr(udp, "_ADDRESS_CACHE_LIMIT", 3)
    inbox = Inbox()
    transport = UdpTransport("127.0.0.1", 0)
    closing.append(transport)
    await transport.start(inbox)
    assert transport.local_address is not None
    for _ in range(7):
        node = client_socket()
        sockets.append(node)
        node.sendto(PINGREQ, ("127.0.0.1", transport.local_address.port))
        await inbox.get()
        assert len(transport._addresses) <= 3
        assert len(transport._raw_addresses) <= 3
    # The recvmmsg reader keys peers by raw sockaddr too; the recvfrom loop has no use for it.
    assert bool(transport._raw_addresses) == (reader == "recvmmsg")


async def test_rcvbuf_readback(
    closing: list[UdpTransport], caplog: pytest.LogCaptureFixture
) -> None:
    """SO_RCVBUF is read back; asking beyond net.core.rmem_max logs one WARNING saying so."""
    small = UdpTransport("127.0.0.1", 0, rcvbuf=256 * 1024)
    closing.append(small)
    await small.start(Inbox())
    doubled = 2 if sys.platform == "linux" else 1
    assert small.receive_buffer == 256 * 1024 * doubled
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]

    try:
        rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())  # noqa: ASYNC240
    except OSError:
        rmem_max = 8 * 1024 * 1024
    greedy = UdpTransport("127.0.0.1", 0, rcvbuf=rmem_max * 4)
    closing.append(greedy)
    await greedy.start(Inbox())
    assert greedy.receive_buffer < rmem_max * 4 * doubled
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "net.core.rmem_max" in warnings[0]


# -- multicast --------------------------------------------------------------------------------


async def test_multicast_on_loopback_own_socket(
    closing: list[UdpTransport], sockets: list[socket.socket]
) -> None:
    """Group on its own port: broadcast() reaches a member; a SEARCHGW to the group arrives."""
    port = free_udp_port()
    inbox = Inbox()
    transport = UdpTransport(
        "127.0.0.1",
        0,
        multicast_group=GROUP,
        multicast_port=port,
        multicast_interface="127.0.0.1",
        multicast_loop=True,
    )
    closing.append(transport)
    await transport.start(inbox)
    assert transport.local_address is not None
    listener = group_listener(port)
    sender = group_sender()
    sockets += [listener, sender]

    transport.broadcast(b"\x05\x00\x01\x03\x84")  # ADVERTISE
    frame, source = await receive(listener)
    assert frame == b"\x05\x00\x01\x03\x84"
    # It leaves from the unicast socket, so nodes answer to the gateway's unicast port.
    assert source == ("127.0.0.1", transport.local_address.port)

    # With multicast_loop on, the transport hears its own broadcast too, from its own address.
    assert await inbox.get() == (transport.local_address, b"\x05\x00\x01\x03\x84")

    sender.sendto(SEARCHGW, (GROUP, port))
    address, frame = await inbox.get()
    assert (address, frame) == (UdpAddress("127.0.0.1", sender.getsockname()[1]), SEARCHGW)
    assert transport.counters["tx_broadcasts"] == 1


async def test_multicast_on_loopback_shared_socket(closing: list[UdpTransport]) -> None:
    """Group on the unicast port (0.0.0.0): group frames and our looped-back broadcast arrive."""
    inbox = Inbox()
    transport = UdpTransport(
        "0.0.0.0", 0, multicast_group=GROUP, multicast_interface="lo", multicast_loop=True
    )
    closing.append(transport)
    await transport.start(inbox)
    assert transport.local_address is not None
    port = transport.local_address.port
    with group_sender() as sender:
        sender.sendto(SEARCHGW, (GROUP, port))
        address, frame = await inbox.get()
        assert frame == SEARCHGW
        assert address == UdpAddress("127.0.0.1", sender.getsockname()[1])
    transport.broadcast(b"\x03\x02\x01")  # GWINFO, heard back because multicast_loop is on
    address, frame = await inbox.get()
    assert frame == b"\x03\x02\x01"
    # Sent from 0.0.0.0 via lo, whose 127.0.0.1 has host scope: Linux picks another source IP.
    assert isinstance(address, UdpAddress) and address.port == port


async def test_broadcast_radius_caps_ttl(
    closing: list[UdpTransport], sockets: list[socket.socket]
) -> None:
    """The broadcast radius lowers the TTL below the configured one, never above it."""
    port = free_udp_port()
    transport = UdpTransport(
        "127.0.0.1",
        0,
        multicast_group=GROUP,
        multicast_port=port,
        multicast_interface="127.0.0.1",
        multicast_loop=True,
        multicast_ttl=4,
    )
    closing.append(transport)
    await transport.start(Inbox())
    listener = group_listener(port)
    sockets.append(listener)
    listener.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
    ttls = []
    for radius in (0, 1, 9):
        transport.broadcast(SEARCHGW, radius)
        await readable(listener)
        _, ancdata, _, _ = listener.recvmsg(64, socket.CMSG_SPACE(4))
        ttls.append(struct.unpack("i", ancdata[0][2])[0])
    assert ttls == [4, 1, 4]


async def test_broadcast_without_group_is_a_counted_noop(
    closing: list[UdpTransport], caplog: pytest.LogCaptureFixture
) -> None:
    """No group configured: broadcast() sends nothing, counts it and says so at DEBUG."""
    transport = UdpTransport("127.0.0.1", 0)
    closing.append(transport)
    await transport.start(Inbox())
    transport.broadcast(SEARCHGW)
    assert transport.counters["tx_broadcasts_skipped"] == 1
    assert any("broadcast dropped" in r.getMessage() for r in caplog.records)


def test_uvloop_echo_and_multicast(reader: str) -> None:
    """The same transport under uvloop (what the gateway runs on): IPv4, IPv6, multicast."""
    import uvloop

    async def scenario() -> None:
        await echo_roundtrip("127.0.0.1", socket.AF_INET, reader)
        if have_ipv6_loopback():
            await echo_roundtrip("::1", socket.AF_INET6, reader)
        inbox = Inbox()
        transport = UdpTransport(
            "0.0.0.0",
            0,
            multicast_group=GROUP,
            multicast_interface="127.0.0.1",
            multicast_loop=True,
        )
        await transport.start(inbox)
        try:
            transport.broadcast(SEARCHGW, 1)
            assert (await inbox.get())[1] == SEARCHGW
            transport.send(UdpAddress("255.255.255.255", 9), PINGREQ)  # EACCES
            transport.send(UdpAddress("127.0.0.1", 70000), PINGREQ)
            await asyncio.sleep(0.01)
            assert transport.counters["tx_errors"] == 2
            transport.broadcast(SEARCHGW)
            assert (await inbox.get())[1] == SEARCHGW  # still open
        finally:
            await transport.close()

    uvloop.run(scenario())


# -- registry ---------------------------------------------------------------------------------


async def test_registry_builds_udp_from_config_table() -> None:
    """create_transport() takes a type name with keywords, or a config table with bind=HOST:PORT."""
    assert "udp" in transports.transport_names()
    plain = transports.create_transport("udp", bind_host="127.0.0.1", bind_port=0)
    assert isinstance(plain, UdpTransport)
    table = transports.create_transport("lan", {"type": "udp", "bind": "[::1]:0", "max-frame": 60})
    assert isinstance(table, UdpTransport)
    assert (table.name, table.bind_host, table.bind_port, table.max_frame) == ("lan", "::1", 0, 60)
    with pytest.raises(ValueError, match="unknown transport 'carrier-pigeon'"):
        transports.create_transport("carrier-pigeon")

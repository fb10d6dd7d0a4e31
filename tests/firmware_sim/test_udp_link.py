"""UdpNodeLink on real sockets: IPv6 unicast, multicast discovery, a sleeping radio."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from firmware_sim.node import SimNode
from firmware_sim.udp_link import UdpNodeLink
from gateway.errors import TransportError


def _ipv6_loopback() -> socket.socket | None:
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.bind(("::1", 0))
    except OSError:
        return None
    sock.setblocking(False)
    return sock


async def test_ipv6_unicast_round_trip() -> None:
    """A frame sent to an IPv6 gateway arrives; its answer reaches the receive callback."""
    gw = _ipv6_loopback()
    if gw is None:
        pytest.fail("no IPv6 loopback on this host")
    loop = asyncio.get_running_loop()
    heard: list[bytes] = []
    link = UdpNodeLink(("::1", gw.getsockname()[1]))
    try:
        await link.open(heard.append)
        await link.send(b"\x02\x16")
        data, addr = await asyncio.wait_for(loop.sock_recvfrom(gw, 64), 2.0)
        assert data == b"\x02\x16"
        await loop.sock_sendto(gw, b"\x02\x17", addr)
        for _ in range(100):
            if heard:
                break
            await asyncio.sleep(0.01)
        assert heard == [b"\x02\x17"]
        assert "open" in repr(link)
    finally:
        await link.close()
        gw.close()


async def test_sleeping_radio_hears_nothing() -> None:
    """Between sleep_radio and wake_radio received datagrams are dropped and counted."""
    gw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gw.bind(("127.0.0.1", 0))
    heard: list[bytes] = []
    link = UdpNodeLink(gw.getsockname())
    try:
        await link.open(heard.append)
        local = link.local_address
        assert local is not None
        await link.sleep_radio()
        gw.sendto(b"\x02\x17", ("127.0.0.1", local[1]))
        await asyncio.sleep(0.05)
        await link.wake_radio()
        gw.sendto(b"\x02\x16", ("127.0.0.1", local[1]))
        for _ in range(100):
            if heard:
                break
            await asyncio.sleep(0.01)
        assert heard == [b"\x02\x16"]
        assert link.dropped_asleep == 1
    finally:
        await link.close()
        gw.close()


async def test_closed_link_refuses_to_send() -> None:
    """Sending before open (or after close) is a TransportError."""
    link = UdpNodeLink(("127.0.0.1", 9))
    with pytest.raises(TransportError):
        await link.send(b"\x02\x16")
    with pytest.raises(ValueError):
        UdpNodeLink(("127.0.0.1", 9), multicast_group="239.1.1.1")


async def test_search_gateway_over_multicast() -> None:
    """SEARCHGW goes to the group; a GWINFO multicast back by the 'gateway' is heard."""
    group = "239.255.77.78"
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    gw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        gw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        gw.bind(("", port))
        mreq = struct.pack("4s4s", socket.inet_aton(group), bytes(4))
        gw.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    except OSError as exc:
        gw.close()
        pytest.fail(f"no IPv4 multicast here: {exc}")
    gw.setblocking(False)
    loop = asyncio.get_running_loop()

    async def play_gateway() -> None:
        while True:
            data, _ = await loop.sock_recvfrom(gw, 64)
            if data == b"\x03\x01\x00":
                await loop.sock_sendto(gw, b"\x03\x02\x09", (group, port))

    player = asyncio.create_task(play_gateway())
    link = UdpNodeLink(("127.0.0.1", 9), multicast_group=group, multicast_port=port)
    try:
        async with SimNode("node1", link) as node:
            try:
                gw_id = await node.search_gateway(timeout=2.0)
            except TimeoutError:
                pytest.fail("multicast is not routed on this host")
            assert gw_id == 9
    finally:
        player.cancel()
        gw.close()

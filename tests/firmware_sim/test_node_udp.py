"""SimNode over UdpNodeLink against a tiny raw-socket responder playing the gateway on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from firmware_sim.battery import Battery, BatteryProfile
from firmware_sim.client import ClientState, Received
from firmware_sim.fleet import Fleet, main, parse_host_port
from firmware_sim.node import (
    ConnectRefused,
    GatewayLostError,
    RequestRejected,
    SimNode,
)
from firmware_sim.udp_link import UdpNodeLink
from gateway.protocol.constants import QoS, ReturnCode


class Responder:
    """Plays just enough gateway with hand-made bytes (no codec), recording every frame."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.address: tuple[str, int] = self.sock.getsockname()
        self.frames: list[bytes] = []
        self.connack = 0x00
        self.puback = 0x00
        self.drop_publishes = 0  # how many PUBLISHes to ignore (to provoke retransmission)
        self.silent = False
        self.buffered: list[bytes] = []  # sent to a waking node before PINGRESP

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data, addr = await loop.sock_recvfrom(self.sock, 4096)
            self.frames.append(data)
            for reply in self.answer(data):
                await loop.sock_sendto(self.sock, reply, addr)

    def answer(self, data: bytes) -> list[bytes]:
        msg_type = data[1]
        if self.silent:
            return []
        if msg_type == 0x01:  # SEARCHGW -> GWINFO 5
            return [bytes([3, 0x02, 5])]
        if msg_type == 0x04:  # CONNECT -> CONNACK
            return [bytes([3, 0x05, self.connack])]
        if msg_type == 0x0A:  # REGISTER -> REGACK topic id 1
            return [bytes([7, 0x0B, 0, 1]) + data[4:6] + b"\x00"]
        if msg_type == 0x0C:  # PUBLISH
            if self.drop_publishes:
                self.drop_publishes -= 1
                return []
            qos = (data[2] >> 5) & 0x03
            if qos == 1:
                return [bytes([7, 0x0D]) + data[3:7] + bytes([self.puback])]
            if qos == 2:
                return [bytes([4, 0x0F]) + data[5:7]]
            return []
        if msg_type == 0x10:  # PUBREL -> PUBCOMP
            return [bytes([4, 0x0E]) + data[2:4]]
        if msg_type == 0x12:  # SUBSCRIBE (by name) -> SUBACK granted QoS 1, topic id 0
            return [bytes([8, 0x13, 0x20, 0, 0]) + data[3:5] + b"\x00"]
        if msg_type == 0x18:  # DISCONNECT -> DISCONNECT
            return [bytes([2, 0x18])]
        if msg_type == 0x16:  # PINGREQ (with ClientId: flush the buffer first)
            flushed = self.buffered if len(data) > 2 else []
            self.buffered = []
            return [*flushed, bytes([2, 0x17])]
        return []

    def types(self) -> list[int]:
        return [frame[1] for frame in self.frames]


@pytest.fixture
async def responder() -> AsyncIterator[Responder]:
    resp = Responder()
    task = asyncio.create_task(resp.serve())
    yield resp
    task.cancel()
    resp.sock.close()


def node_for(resp: Responder, client_id: str = "node1", **kw: object) -> SimNode:
    return SimNode(client_id, UdpNodeLink(resp.address), **kw)  # type: ignore[arg-type]


async def test_connect_register_publish_qos1(responder: Responder) -> None:
    """CONNECT -> CONNACK, REGISTER -> REGACK, PUBLISH QoS 1 -> PUBACK, DISCONNECT on exit."""
    async with node_for(responder) as node:
        await node.connect(keepalive=30)
        assert node.state is ClientState.ACTIVE
        assert await node.register("sensors/node1/temp") == 1
        await node.publish("sensors/node1/temp", b"21.5", qos=1)
        assert (node.counters.published, node.counters.acked) == (1, 1)
        assert "ACTIVE" in repr(node)
    assert responder.frames[0] == bytes.fromhex("0B 04 04 01 00 1E") + b"node1"
    assert responder.frames[2] == bytes.fromhex("0B 0C 20 00 01 00 02") + b"21.5"
    assert responder.types() == [0x04, 0x0A, 0x0C, 0x18]
    assert node.state is ClientState.DISCONNECTED


async def test_publish_by_name_registers_once_and_qos2(responder: Responder) -> None:
    """Publishing by name registers on demand, once; QoS 2 completes with PUBCOMP."""
    async with node_for(responder) as node:
        await node.connect()
        await node.publish("a/b", "x", qos=2)
        await node.publish("a/b", "y", qos=0)
    assert responder.types() == [0x04, 0x0A, 0x0C, 0x10, 0x0C, 0x18]


async def test_retransmission_over_udp(responder: Responder) -> None:
    """A dropped PUBLISH is retransmitted with DUP after T_RETRY and then acknowledged."""
    responder.drop_publishes = 1
    async with node_for(responder, t_retry=0.1) as node:
        await node.connect()
        await node.publish(1, b"v", qos=1)
        assert node.counters.retransmitted == 1
    publishes = [f for f in responder.frames if f[1] == 0x0C]
    assert [f[2] & 0x80 for f in publishes] == [0x00, 0x80]


async def test_gateway_gone_raises(responder: Responder) -> None:
    """No answers at all: after N_RETRY the request fails with GatewayLostError."""
    async with node_for(responder, t_retry=0.05, n_retry=2) as node:
        await node.connect()
        responder.silent = True
        with pytest.raises(GatewayLostError):
            await node.publish(1, b"v", qos=1)
        assert node.state is ClientState.LOST
        assert node.counters.failed == 1


async def test_rejections_carry_the_return_code(responder: Responder) -> None:
    """CONNACK and PUBACK refusals raise with their return code."""
    responder.connack = 0x01
    async with node_for(responder) as node:
        with pytest.raises(ConnectRefused) as refused:
            await node.connect()
        assert refused.value.return_code is ReturnCode.REJECTED_CONGESTION
        responder.connack = 0x00
        await node.connect()
        responder.puback = 0x02
        with pytest.raises(RequestRejected) as rejected:
            await node.publish(1, b"v", qos=1)
        assert rejected.value.return_code is ReturnCode.REJECTED_INVALID_TOPIC_ID


async def test_sleep_wake_collects_buffered(responder: Responder) -> None:
    """sleep() then wake(): REGISTER + PUBLISH arrive before PINGRESP and are returned."""
    async with node_for(responder) as node:
        await node.connect()
        await node.subscribe("cmd/#", qos=1)
        await node.sleep(60)
        assert node.state is ClientState.ASLEEP
        responder.buffered = [
            bytes.fromhex("0B 0A 00 05 00 09") + b"cmd/x",
            bytes.fromhex("09 0C 20 00 05 00 0A") + b"on",
        ]
        woken = await node.wake()
        assert woken == [Received("cmd/x", b"on", QoS.AT_LEAST_ONCE, False, 5)]
        assert node.state is ClientState.ASLEEP
        inbox = node.messages()
        assert await anext(inbox) == woken[0]
    assert bytes.fromhex("04 18 00 3C") in responder.frames
    assert bytes.fromhex("07 16") + b"node1" in responder.frames
    assert bytes.fromhex("07 0B 00 05 00 09 00") in responder.frames  # REGACK
    assert bytes.fromhex("07 0D 00 05 00 0A 00") in responder.frames  # PUBACK


async def test_search_gateway(responder: Responder) -> None:
    """Without a multicast group, SEARCHGW goes to the gateway address; GWINFO answers."""
    async with node_for(responder) as node:
        assert await node.search_gateway(timeout=5.0) == 5
    assert responder.frames[0] == bytes.fromhex("03 01 00")


async def test_periodic_with_sleep_reconnects(responder: Responder) -> None:
    """run_periodic sleeping between publishes reconnects with CleanSession=0 each time."""
    async with node_for(responder, battery=Battery()) as node:
        await node.connect()
        report = await node.run_periodic("s/t", 0.01, qos=1, count=3, sleep_between=1)
        assert (report.published, report.acked, report.failed) == (3, 3, 0)
        assert node.battery is not None and node.battery.level < 100.0
    connects = [f for f in responder.frames if f[1] == 0x04]
    assert [f[2] for f in connects] == [0x04, 0x00, 0x00]
    assert sum(1 for f in responder.frames if f[1] == 0x0A) == 1


async def test_empty_battery_stops_the_node(responder: Responder) -> None:
    """A node whose battery runs out stops publishing and refuses further work."""
    tiny = BatteryProfile(capacity_mah=1e-6, awake_ma=0.0, tx_ma=30.0, bitrate_bps=250.0)
    async with node_for(responder, battery=Battery(tiny)) as node:
        report = await node.run_periodic("s/t", 0.01, qos=0, count=100)
        assert report.stopped == "battery empty"
        assert report.published < 100
        assert not node.alive


async def test_fleet_summary(responder: Responder) -> None:
    """Two nodes for a short run: every QoS 1 publish is acknowledged but the last in flight."""
    fleet = Fleet(responder.address, 2, interval=0.05, qos=1, duration=0.5)
    summary = await fleet.run()
    assert summary.nodes == 2 and summary.errors == 0 and summary.failed == 0
    # The run stops at its duration: each node may have one publish still in flight then.
    assert summary.published >= 2
    assert summary.published - summary.nodes <= summary.acked <= summary.published
    assert "published" in str(summary)
    assert {f[6:] for f in responder.frames if f[1] == 0x04} == {b"sim-0", b"sim-1"}


def test_cli_help_and_address_parsing(capsys: pytest.CaptureFixture[str]) -> None:
    """--help explains the options; HOST:PORT parses IPv4 and bracketed IPv6."""
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--interval" in capsys.readouterr().out
    assert parse_host_port("[::1]:1884") == ("::1", 1884)
    assert parse_host_port("gw.local:1884") == ("gw.local", 1884)

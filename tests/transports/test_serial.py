"""Serial transport on real ptys: whole frames, resync, SLIP, back-pressure, vanishing ports."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

import transports
from tests.transports.pty_helpers import PtyNode
from transports.base import Address, LinkEvent
from transports.framing import StreamDeframer, slip_crc_encode
from transports.serial import SerialAddress, SerialTransport

PINGREQ = b"\x02\x16"
CONNECT = b"\x0b\x04\x04\x01\x00\x3cnode1"
REGACK = bytes.fromhex("07 0B 00 01 00 02 00")
PUBLISH = bytes.fromhex("09 0C 00 00 01 00 00 C0 DB")


def numbered_publish(i: int, size: int = 100) -> bytes:
    """A PUBLISH frame of ``size`` bytes carrying ``i`` in its MsgId."""
    return bytes([size, 0x0C, 0x00, 0x00, 0x01, i >> 8, i & 0xFF]) + bytes(size - 7)


class Recorder:
    """Collects delivered frames and link events, awaitable."""

    def __init__(self) -> None:
        self.frames: list[tuple[Address, bytes]] = []
        self.events: list[LinkEvent] = []
        self._changed = asyncio.Event()

    def deliver(self, address: Address, frame: bytes) -> None:
        self.frames.append((address, frame))
        self._changed.set()

    def on_event(self, address: Address, event: LinkEvent) -> None:
        self.events.append(event)
        self._changed.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait (3 s at most) until ``condition()`` holds; checked on each delivery or event."""
        async with asyncio.timeout(3.0):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    async def frames_count(self, count: int) -> list[bytes]:
        """Wait for ``count`` frames; return them."""
        await self.until(lambda: len(self.frames) >= count)
        return [frame for _, frame in self.frames]


async def poll(condition: Callable[[], bool]) -> None:
    """Wait (3 s at most) until ``condition()`` holds, checking every few milliseconds."""
    async with asyncio.timeout(3.0):
        while not condition():  # noqa: ASYNC110 - the transport has no event for these states
            await asyncio.sleep(0.005)


@pytest.fixture
def node() -> Iterator[PtyNode]:
    """A pty whose master end plays the sensor node."""
    pty = PtyNode()
    yield pty
    pty.close()


@pytest.fixture
async def opened() -> AsyncIterator[list[SerialTransport]]:
    """Transports a test starts, closed afterwards."""
    started: list[SerialTransport] = []
    yield started
    for transport in started:
        await transport.close()


async def start(
    opened: list[SerialTransport], url: str, **options: object
) -> tuple[SerialTransport, Recorder]:
    """A started SerialTransport on ``url`` with a Recorder as its sink."""
    recorder = Recorder()
    transport = SerialTransport(url, **options)  # type: ignore[arg-type]
    opened.append(transport)
    await transport.start(recorder.deliver, recorder.on_event)
    return transport, recorder


def warnings_from(caplog: pytest.LogCaptureFixture) -> list[str]:
    """WARNING lines logged by the serial transport."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "transports.serial" and r.levelno == logging.WARNING
    ]


async def test_frames_arrive_whole_both_ways(node: PtyNode, opened: list[SerialTransport]) -> None:
    """Frames written back to back or byte by byte arrive whole; send() writes exact bytes."""
    transport, recorder = await start(opened, node.path)
    assert recorder.events == [LinkEvent.LINK_UP]
    node.write(PINGREQ + CONNECT + REGACK)
    for byte in PUBLISH:
        node.write(bytes([byte]))
        await asyncio.sleep(0.001)
    assert await recorder.frames_count(4) == [PINGREQ, CONNECT, REGACK, PUBLISH]
    assert recorder.frames[0][0] == SerialAddress(node.path) == transport.address
    assert transport.owns(SerialAddress(node.path))

    node.start_reading()
    transport.send(transport.address, REGACK)
    transport.broadcast(b"\x03\x02\x01", radius=1)
    assert await node.wait_for(len(REGACK) + 3) == REGACK + b"\x03\x02\x01"
    assert transport.counters["tx_frames"] == 2
    assert transport.counters["rx_frames"] == 4


async def test_garbage_and_lost_byte_resynchronise(
    node: PtyNode, opened: list[SerialTransport], caplog: pytest.LogCaptureFixture
) -> None:
    """Line noise is skipped; a frame that lost a byte is flushed after the idle gap."""
    transport, recorder = await start(opened, node.path, inter_frame_timeout=0.03)
    # Bytes that cannot start a frame here (a plausible header would wait for the idle gap).
    node.write(b"\x00\xff\x03\x11\x00" + PINGREQ + REGACK)
    assert await recorder.frames_count(2) == [PINGREQ, REGACK]
    assert transport.counters["rx_dropped_bytes"] == 5
    assert "00 ff 03 11 00" in warnings_from(caplog)[0]

    node.write(CONNECT[:5] + CONNECT[6:])  # one byte lost: the header promises one more
    await poll(lambda: transport.counters["rx_dropped_bytes"] == 5 + len(CONNECT) - 1)
    node.write(REGACK + PINGREQ)
    assert (await recorder.frames_count(4))[2:] == [REGACK, PINGREQ]


async def test_slip_corrupted_byte_costs_one_frame(
    node: PtyNode, opened: list[SerialTransport]
) -> None:
    """SLIP mode: a corrupted byte fails the CRC of its frame only; send() is SLIP-encoded."""
    transport, recorder = await start(opened, node.path, framing="slip")
    damaged = bytearray(slip_crc_encode(CONNECT))
    damaged[6] ^= 0x01
    node.write(slip_crc_encode(PUBLISH) + bytes(damaged) + slip_crc_encode(REGACK))
    assert await recorder.frames_count(2) == [PUBLISH, REGACK]
    assert transport.counters["rx_crc_errors"] == 1

    node.start_reading()
    transport.send(transport.address, PUBLISH)
    wire = slip_crc_encode(PUBLISH)
    assert await node.wait_for(len(wire)) == wire


async def test_back_pressure_bounds_memory_and_recovers(
    node: PtyNode, opened: list[SerialTransport], caplog: pytest.LogCaptureFixture
) -> None:
    """A node that stops reading: the queue stays bounded, drops are counted, then all flows."""
    transport, _ = await start(opened, node.path, queue_limit=8192, write_buffer_high=2048)
    bound = transport.queue_limit + transport.write_buffer_high + transport.max_frame
    sent: list[bytes] = []
    for round_ in range(10):  # the pty itself takes ~19 KiB before it pushes back
        for i in range(100):
            frame = numbered_publish(round_ * 100 + i)
            transport.send(transport.address, frame)
            sent.append(frame)
            assert transport.queued_bytes <= bound
        await asyncio.sleep(0.01)
    counters = transport.counters
    assert counters["tx_dropped"] > 0
    assert len(warnings_from(caplog)) == 1  # rate-limited: one line for hundreds of drops

    node.start_reading()
    await poll(lambda: transport.queued_bytes == 0)
    late = numbered_publish(9999)
    transport.send(transport.address, late)
    assert counters["tx_frames"] + counters["tx_dropped"] == len(sent) + 1
    received = StreamDeframer().feed(await node.wait_for(counters["tx_frames"] * 100))
    assert len(received) == counters["tx_frames"]
    assert received[-1] == late
    it = iter(sent)  # what arrived is what was sent, in order, minus the dropped ones
    assert all(any(frame == s for s in it) for frame in received[:-1])


async def test_close_does_not_hang_on_a_stalled_line(
    node: PtyNode, opened: list[SerialTransport], caplog: pytest.LogCaptureFixture
) -> None:
    """close() gives a stalled line close_timeout, then discards the rest and returns."""
    transport, _ = await start(opened, node.path, close_timeout=0.1)
    for i in range(400):
        transport.send(transport.address, numbered_publish(i))
    await asyncio.sleep(0.02)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await transport.close()
    assert loop.time() - began < 1.0
    assert not transport.is_open
    assert any("stalled" in line for line in warnings_from(caplog))


async def test_port_vanishes_and_comes_back(
    tmp_path: Path, opened: list[SerialTransport], caplog: pytest.LogCaptureFixture
) -> None:
    """Unplugged: LINK_DOWN and back-off; the same path re-appears: LINK_UP and traffic flows."""
    link = tmp_path / "ttyNODE"
    first = PtyNode()
    os.symlink(first.path, link)
    second: PtyNode | None = None
    try:
        transport, recorder = await start(opened, str(link), reopen_backoff=(0.02, 0.1))
        first.write(PINGREQ)
        await recorder.frames_count(1)

        first.close()
        link.unlink()
        await recorder.until(lambda: LinkEvent.LINK_DOWN in recorder.events)
        assert not transport.is_open
        transport.send(transport.address, PINGREQ)
        assert transport.counters["tx_link_down"] == 1
        await asyncio.sleep(0.15)  # a few failed attempts against the missing path

        second = PtyNode()
        os.symlink(second.path, link)
        await recorder.until(lambda: recorder.events.count(LinkEvent.LINK_UP) == 2)
        assert recorder.events == [LinkEvent.LINK_UP, LinkEvent.LINK_DOWN, LinkEvent.LINK_UP]
        second.write(REGACK)
        assert (await recorder.frames_count(2))[1] == REGACK
        second.start_reading()
        transport.send(transport.address, PUBLISH)
        assert await second.wait_for(len(PUBLISH)) == PUBLISH
        assert transport.counters["link_losses"] == transport.counters["reopens"] == 1
        assert any("lost" in line for line in warnings_from(caplog))
        await transport.close()
    finally:
        first.close()
        if second is not None:
            second.close()


async def test_missing_port_is_retried_until_it_appears(
    tmp_path: Path, opened: list[SerialTransport], node: PtyNode, caplog: pytest.LogCaptureFixture
) -> None:
    """A port absent at start() is a WARNING, not an error; it is opened once it appears."""
    link = tmp_path / "ttyLATE"
    transport, recorder = await start(opened, str(link), reopen_backoff=(0.02, 0.05))
    assert not transport.is_open
    assert "cannot open" in warnings_from(caplog)[0]
    os.symlink(node.path, link)
    await recorder.until(lambda: recorder.events == [LinkEvent.LINK_UP])
    node.write(PINGREQ)
    assert await recorder.frames_count(1) == [PINGREQ]


async def test_socket_url_reconnects(opened: list[SerialTransport]) -> None:
    """A socket:// URL (ser2net, a TCP serial server) works and is redialled when it drops."""
    connections: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await connections.put((reader, writer))

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        transport, recorder = await start(
            opened, f"socket://127.0.0.1:{port}", reopen_backoff=(0.02, 0.1)
        )
        reader, writer = await asyncio.wait_for(connections.get(), 3)
        writer.write(CONNECT)
        assert await recorder.frames_count(1) == [CONNECT]
        transport.send(transport.address, REGACK)
        assert await asyncio.wait_for(reader.readexactly(len(REGACK)), 3) == REGACK

        writer.close()
        await recorder.until(lambda: recorder.events.count(LinkEvent.LINK_UP) == 2)
        assert LinkEvent.LINK_DOWN in recorder.events
        reader, writer = await asyncio.wait_for(connections.get(), 3)
        writer.write(PINGREQ)
        assert (await recorder.frames_count(2))[1] == PINGREQ
        writer.close()
        await transport.close()


@pytest.mark.parametrize(
    ("url", "match"), [("loop://", "file descriptor"), ("nope://x", "invalid URL")]
)
async def test_unusable_url_fails_at_start(url: str, match: str) -> None:
    """A URL pyserial-asyncio cannot drive raises ValueError from start(), not a retry loop."""
    transport = SerialTransport(url)
    with pytest.raises(ValueError, match=match):
        await transport.start(Recorder().deliver)
    assert not transport.is_open


async def test_send_checks(node: PtyNode, opened: list[SerialTransport]) -> None:
    """Oversize frames are counted and dropped; a foreign address is a caller bug."""
    transport, _ = await start(opened, node.path, max_frame=60)
    transport.send(transport.address, numbered_publish(1, 61))
    assert transport.counters["tx_oversize"] == 1
    assert transport.max_frame_size() == 60
    with pytest.raises(ValueError, match="is not the node"):
        transport.send(SerialAddress("/dev/ttyOTHER"), PINGREQ)
    assert not transport.owns(SerialAddress("/dev/ttyOTHER"))


def test_registry_builds_serial_from_config_table() -> None:
    """The registry maps a config table's ``port`` to the transport's pyserial URL."""
    transport = transports.create_transport(
        "radio1", {"type": "serial", "port": "/dev/ttyUSB3", "framing": "slip"}
    )
    assert isinstance(transport, SerialTransport)
    assert (transport.name, transport.url, transport.framing) == ("radio1", "/dev/ttyUSB3", "slip")
    assert "closed" in repr(transport)

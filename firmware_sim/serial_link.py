"""A simulated node's UART: MQTT-SN frames on a serial line (a pty or a real tty), plain or SLIP.

The gateway's :class:`~transports.serial.SerialTransport` opens one end of the line; the node
drives the other through :class:`SerialNodeLink`. The line format is the transport's
(:mod:`transports.framing`): ``"plain"`` writes frames back to back, cut by their own MQTT-SN
length header (what mqtt-sn-tools' serial bridge and simple Arduino sketches do); ``"slip"`` wraps
each frame in SLIP with a CRC-16/CCITT-FALSE. For tests, :class:`PtyPair` gives both ends::

    with PtyPair() as line:
        transport = SerialTransport(line.path, framing="slip")   # the gateway's end
        link = SerialNodeLink(line.master, framing="slip")      # the node's end
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import termios
import tty
from types import TracebackType
from typing import Literal, Self

from firmware_sim.link import FrameReceiver, NodeLink
from gateway.errors import TransportError
from transports.framing import SlipCrcDeframer, StreamDeframer, slip_crc_encode

__all__ = ["PtyPair", "SerialNodeLink"]

_LOGGER = logging.getLogger(__name__)

Framing = Literal["plain", "slip"]
_READ_SIZE = 4096
_ENCAPSULATED = 0xFE
_EIO_RETRY = 0.1  # seconds: a pty master reads EIO while no one holds the other end open


class PtyPair:
    """A pseudo-terminal: the gateway opens :attr:`path`, the node drives :attr:`master`.

    Both ends are raw from the start (no echo before pyserial configures the line). The slave
    stays open here as well, so the master never reads EIO between two openings by the gateway.
    """

    def __init__(self) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self._slave)
        self.closed = False

    def __repr__(self) -> str:
        return f"<PtyPair {self.path} {'closed' if self.closed else 'open'}>"

    def close(self) -> None:
        """Close both ends: to the gateway, the port has vanished."""
        if not self.closed:
            self.closed = True
            os.close(self.master)
            os.close(self._slave)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SerialNodeLink(NodeLink):
    """``NodeLink`` on a serial line: one node wired to the gateway's UART.

    Args:
        port: a tty path (opened raw, non-blocking, and closed by the link) or an open file
            descriptor such as :attr:`PtyPair.master` (left open).
        framing: ``"plain"`` or ``"slip"``, as the gateway's transport is configured.
        max_frame: the largest frame accepted from the gateway.
        baudrate: line speed set on a tty path (a pty ignores it).
        inter_frame_timeout: silence after which a partly received frame is discarded.

    ``pause_reading()`` stops reading (a node whose UART buffer is full): the line backs up and
    the gateway feels back-pressure. ``write_raw()`` puts arbitrary bytes on the line (noise).
    """

    def __init__(
        self,
        port: str | int,
        *,
        framing: Framing = "plain",
        max_frame: int = 255,
        baudrate: int = 115200,
        inter_frame_timeout: float = 0.05,
    ) -> None:
        if framing not in ("plain", "slip"):
            raise ValueError(f"framing must be 'plain' or 'slip', not {framing!r}")
        self.port = port
        self.framing = framing
        self.max_frame = max_frame
        self.baudrate = baudrate
        self.inter_frame_timeout = inter_frame_timeout
        self.sent = 0
        self.received = 0
        self.dropped_asleep = 0
        self._deframer: StreamDeframer | SlipCrcDeframer = (
            SlipCrcDeframer(max_frame) if framing == "slip" else StreamDeframer(max_frame)
        )
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._receive: FrameReceiver | None = None
        self._reading = False
        self._paused = False
        self._asleep = False
        self._out = bytearray()
        self._writing = False
        self._encapsulation: bytes | None = None  # a 0xFE header waiting for its inner message
        self._idle: asyncio.TimerHandle | None = None
        self._retry: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        if self._fd is None:
            state = "closed"
        else:
            state = "asleep" if self._asleep else "paused" if self._paused else "open"
        return (
            f"<SerialNodeLink {self.port} {self.framing} {state} sent={self.sent} "
            f"received={self.received} out_buffer={len(self._out)} {self._deframer!r}>"
        )

    @property
    def dropped_bytes(self) -> int:
        """Bytes from the gateway that were not part of any good frame."""
        return self._deframer.dropped_bytes

    async def open(self, receive: FrameReceiver) -> None:
        """Open the line (a path) or take the descriptor, and start reading."""
        if self._fd is not None:
            raise TransportError(f"{self!r} is already open")
        if isinstance(self.port, int):
            self._fd = self.port
        else:
            try:
                fd = os.open(self.port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            except OSError as exc:
                raise TransportError(f"cannot open serial line {self.port}: {exc}") from exc
            try:
                tty.setraw(fd)
                speed = getattr(termios, f"B{self.baudrate}", None)
                if speed is not None:
                    attrs = termios.tcgetattr(fd)
                    attrs[4] = attrs[5] = speed
                    termios.tcsetattr(fd, termios.TCSANOW, attrs)
            except termios.error as exc:
                os.close(fd)
                raise TransportError(f"{self.port} is not a serial line: {exc}") from exc
            self._fd = fd
        os.set_blocking(self._fd, False)
        self._loop = asyncio.get_running_loop()
        self._receive = receive
        self._asleep = self._paused = False
        self._start_reading()
        _LOGGER.debug("opened %r", self)

    async def send(self, frame: bytes) -> None:
        """Write one frame to the gateway."""
        self._write(slip_crc_encode(frame) if self.framing == "slip" else bytes(frame))
        self.sent += 1

    async def broadcast(self, frame: bytes, radius: int = 0) -> None:
        """A point-to-point line reaches only the gateway: the same as ``send``."""
        await self.send(frame)

    def write_raw(self, data: bytes) -> None:
        """Put ``data`` on the line as it is (line noise, hand-made frames)."""
        self._write(bytes(data))

    def pause_reading(self) -> None:
        """Stop reading, as a node whose receive buffer is full: the line backs up."""
        self._paused = True
        self._stop_reading()

    def resume_reading(self) -> None:
        """Read again; what the line held arrives now."""
        self._paused = False
        if self._fd is not None:
            self._start_reading()

    async def sleep_radio(self) -> None:
        """The node sleeps: frames arriving meanwhile are lost (and counted)."""
        self._asleep = True

    async def wake_radio(self) -> None:
        """Hear frames again."""
        self._asleep = False

    async def close(self) -> None:
        """Stop reading and writing; close the line if the link opened it."""
        self._stop_reading()
        for handle in (self._idle, self._retry):
            if handle is not None:
                handle.cancel()
        self._idle = self._retry = None
        if self._writing and self._loop is not None and self._fd is not None:
            self._loop.remove_writer(self._fd)
        self._writing = False
        self._out.clear()
        if self._fd is not None and not isinstance(self.port, int):
            os.close(self._fd)
        self._fd = None
        self._receive = None

    # -- writing -----------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self._fd is None or self._loop is None:
            raise TransportError(f"{self!r} is not open")
        if not self._out:
            try:
                written = os.write(self._fd, data)
            except BlockingIOError:
                written = 0
            except OSError as exc:
                raise TransportError(f"cannot write to {self.port}: {exc}") from exc
            data = data[written:]
        if data:
            self._out += data
            if not self._writing:
                self._loop.add_writer(self._fd, self._flush)
                self._writing = True

    def _flush(self) -> None:
        assert self._fd is not None and self._loop is not None
        try:
            written = os.write(self._fd, self._out)
        except BlockingIOError:
            return
        except OSError as exc:
            _LOGGER.warning("%r: write failed, %d bytes lost: %s", self, len(self._out), exc)
            written = len(self._out)
        del self._out[:written]
        if not self._out:
            self._loop.remove_writer(self._fd)
            self._writing = False

    # -- reading -----------------------------------------------------------------------------

    def _start_reading(self) -> None:
        if not self._reading and self._fd is not None and self._loop is not None:
            self._loop.add_reader(self._fd, self._on_readable)
            self._reading = True

    def _stop_reading(self) -> None:
        loop, fd = self._loop, self._fd
        if self._reading and loop is not None and fd is not None and not loop.is_closed():
            loop.remove_reader(fd)
        self._reading = False

    def _on_readable(self) -> None:
        assert self._fd is not None and self._loop is not None
        try:
            data = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            # No one holds the other end open (the gateway is reopening): poll again later
            # instead of spinning on a descriptor that is always readable.
            self._stop_reading()
            self._retry = self._loop.call_later(_EIO_RETRY, self._retry_reading)
            return
        frames = self._deframer.feed(data)
        for frame in frames:
            self._on_frame(frame)
        if self._deframer.pending and self._idle is None:
            self._idle = self._loop.call_later(self.inter_frame_timeout, self._on_idle)

    def _retry_reading(self) -> None:
        self._retry = None
        if not self._paused:
            self._start_reading()

    def _on_idle(self) -> None:
        self._idle = None
        dropped = self._deframer.reset()
        if dropped:
            _LOGGER.debug("%r: dropped %d bytes of an incomplete frame", self, dropped)

    def _on_frame(self, frame: bytes) -> None:
        if self.framing == "plain":
            # A forwarder's 0xFE frame: its Length covers only the header, the inner message
            # follows with its own Length (reference §3), so a plain deframer cuts it in two.
            if self._encapsulation is not None:
                frame, self._encapsulation = self._encapsulation + frame, None
            elif len(frame) >= 3 and frame[1] == _ENCAPSULATED and frame[0] == len(frame):
                self._encapsulation = frame
                return
        if self._asleep:
            self.dropped_asleep += 1
            return
        self.received += 1
        if self._receive is not None:
            self._receive(frame)

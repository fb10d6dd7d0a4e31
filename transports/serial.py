"""MQTT-SN over a serial line (one node per line): framing, back-pressure, and reopening the port.

The port is named by a pyserial URL (``/dev/ttyUSB0``, a pty path, ``socket://host:port``) and
driven by pyserial-asyncio. Frames are cut by :mod:`transports.framing`, plain (length header
only) or SLIP + CRC-16. When the line stalls (the node stops reading, hardware flow control),
frames wait in a bounded queue and the newest are dropped, counted, once it is full. When the
port vanishes (USB unplugged), the transport reports ``LINK_DOWN`` and reopens it with jittered
exponential back-off until ``close()``, then reports ``LINK_UP``.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import random
from dataclasses import dataclass
from typing import Literal

import serial
import serial_asyncio

from transports.base import Address, FrameSink, LinkEvent, LinkEventSink, Transport
from transports.framing import SlipCrcDeframer, StreamDeframer, slip_crc_encode
from transports.warning_limiter import WarningLimiter

__all__ = ["SerialAddress", "SerialTransport"]

_LOGGER = logging.getLogger(__name__)

Framing = Literal["plain", "slip"]
_EXCERPT = 16


@dataclass(frozen=True, slots=True)
class SerialAddress:
    """The node at the far end of one serial line; ``port`` is the line's pyserial URL."""

    port: str

    def __str__(self) -> str:
        return f"serial:{self.port}"


class _LineProtocol(asyncio.Protocol):
    """Glue between one opening of the port and its SerialTransport."""

    def __init__(self, owner: SerialTransport) -> None:
        self._owner = owner
        self.lost = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self._owner._on_data(data)

    def pause_writing(self) -> None:
        self._owner._paused = True

    def resume_writing(self) -> None:
        self._owner._on_resume()

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._on_lost(self, exc)
        self.lost.set()

    def __repr__(self) -> str:
        return f"<_LineProtocol {self._owner.url} lost={self.lost.is_set()}>"


class SerialTransport(Transport):
    """MQTT-SN frames over one serial line to one node.

    Args:
        url: pyserial URL of the port (``/dev/ttyUSB0``, ``/dev/serial/by-id/...``, a pty path,
            ``socket://host:port``). ``loop://`` has no file descriptor and cannot work with
            pyserial-asyncio 0.6 on POSIX.
        baudrate: line speed.
        framing: ``"plain"`` (frames back to back) or ``"slip"`` (SLIP + CRC-16/CCITT-FALSE).
        max_frame: largest frame accepted or sent.
        inter_frame_timeout: after this much silence a partly received frame is discarded, so a
            lost length byte cannot swallow the frames that follow.
        reopen_backoff: (first, longest) delay between attempts to reopen a vanished port.
        queue_limit: bytes of frames held while the line is back-pressured; beyond, the newest
            frames are dropped and counted.
        write_buffer_high: bytes handed to pyserial-asyncio before the line counts as stalled.
        close_timeout: how long close() waits for queued frames to leave a stalled line.
        warn_interval: at most one line-noise / drop WARNING per kind in this many seconds.
    """

    def __init__(
        self,
        url: str,
        *,
        baudrate: int = 115200,
        framing: Framing = "plain",
        max_frame: int = 255,
        inter_frame_timeout: float = 0.05,
        reopen_backoff: tuple[float, float] = (0.5, 30.0),
        queue_limit: int = 16 * 1024,
        write_buffer_high: int = 4096,
        close_timeout: float = 1.0,
        warn_interval: float = 10.0,
        name: str = "serial",
    ) -> None:
        if framing not in ("plain", "slip"):
            raise ValueError(f"framing must be 'plain' or 'slip', not {framing!r}")
        if not 2 <= max_frame <= 65535:
            raise ValueError(f"max_frame must be within 2..65535, not {max_frame}")
        if not 0 < reopen_backoff[0] <= reopen_backoff[1]:
            raise ValueError(f"reopen_backoff must be (first, longest) > 0, not {reopen_backoff}")
        self.name = name
        self.url = url
        self.baudrate = baudrate
        self.framing = framing
        self.max_frame = max_frame
        self.inter_frame_timeout = inter_frame_timeout
        self.reopen_backoff = reopen_backoff
        self.queue_limit = queue_limit
        self.write_buffer_high = write_buffer_high
        self.close_timeout = close_timeout
        self.address = SerialAddress(url)
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "rx_frames",
                "rx_dropped_bytes",
                "rx_crc_errors",
                "rx_malformed",
                "rx_deliver_errors",
                "tx_frames",
                "tx_oversize",
                "tx_dropped",
                "tx_link_down",
                "link_losses",
                "reopens",
            ),
            0,
        )
        self._deframer = self._new_deframer()
        self._warnings = WarningLimiter(_LOGGER, warn_interval)
        self._deliver: FrameSink | None = None
        self._on_event: LinkEventSink | None = None
        self._line: asyncio.Transport | None = None
        self._protocol: _LineProtocol | None = None
        self._paused = False
        self._backlog: collections.deque[bytes] = collections.deque()
        self._backlog_bytes = 0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._last_rx = 0.0
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        self._drained: asyncio.Event | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, deliver: FrameSink, on_event: LinkEventSink | None = None) -> None:
        """Open the port (or keep trying in the background) and begin delivering frames.

        A URL pyserial cannot parse raises ValueError at once; a port that does not exist
        (yet) is logged and retried with back-off, as when it vanishes later.
        """
        if self._supervisor is not None:
            raise RuntimeError(f"{self!r} is already started")
        self._deliver = deliver
        self._on_event = on_event
        self._closing = False
        try:
            await self._open()
        except (serial.SerialException, OSError) as exc:
            _LOGGER.warning(
                "%s: cannot open %s (%s); retrying in the background", self.name, self.url, exc
            )
        self._supervisor = asyncio.get_running_loop().create_task(
            self._supervise(), name=f"transport[{self.name}].reopen"
        )

    async def close(self) -> None:
        """Flush queued frames (for up to ``close_timeout``), release the port, stop reopening."""
        self._closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            try:
                await self._supervisor
            except asyncio.CancelledError:
                pass
            self._supervisor = None
        line, protocol = self._line, self._protocol
        if line is not None and protocol is not None:
            await self._drain(line)
            port = line.get_extra_info("serial")
            try:
                # pyserial-asyncio calls tcdrain() when closing, which blocks the loop for as
                # long as the line is stalled; discard what the kernel still holds instead.
                port.reset_output_buffer()
            except (serial.SerialException, OSError, AttributeError):
                pass
            line.abort()
            try:
                await asyncio.wait_for(protocol.lost.wait(), timeout=1.0)
            except TimeoutError:
                _LOGGER.error("%s: %s did not close within a second", self.name, self.url)
        self._cancel_idle_timer()
        self._deliver = None

    @property
    def is_open(self) -> bool:
        """True while the port is open."""
        return self._line is not None

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting for the line: our back-pressure queue plus pyserial-asyncio's buffer."""
        line = self._line
        return self._backlog_bytes + (line.get_write_buffer_size() if line is not None else 0)

    # -- sending -----------------------------------------------------------------------------

    def send(self, address: Address, frame: bytes) -> None:
        """Queue one frame for the node on this line."""
        if address != self.address:
            raise ValueError(f"{self.name}: {address!r} is not the node on {self.url}")
        self._write_frame(frame)

    def broadcast(self, frame: bytes, radius: int = 0) -> None:
        """Queue one frame on the line: a point-to-point line reaches its one node."""
        self._write_frame(frame)

    def max_frame_size(self, address: Address | None = None) -> int:
        """The configured ``max_frame``."""
        return self.max_frame

    def owns(self, address: Address) -> bool:
        """True for this line's SerialAddress."""
        return address == self.address

    def _write_frame(self, frame: bytes) -> None:
        if len(frame) > self.max_frame:
            self.counters["tx_oversize"] += 1
            self._warnings.warning(
                "tx-oversize",
                "%s: not sending a %d-byte frame: larger than max_frame %d",
                self.name,
                len(frame),
                self.max_frame,
            )
            return
        line = self._line
        if line is None or line.is_closing():
            # MQTT-SN retransmits what matters (§6.13); a stale frame after reopening helps no one.
            self.counters["tx_link_down"] += 1
            _LOGGER.debug("%s: line is down, frame dropped", self.name)
            return
        data = slip_crc_encode(frame) if self.framing == "slip" else frame
        if self._paused or self._backlog:
            if self._backlog_bytes + len(data) > self.queue_limit:
                self.counters["tx_dropped"] += 1
                self._warnings.warning(
                    "tx-dropped",
                    "%s: line %s is stalled (%d bytes queued); dropping frames: %s",
                    self.name,
                    self.url,
                    self.queued_bytes,
                    frame[:_EXCERPT].hex(" "),
                )
                return
            self._backlog.append(data)
            self._backlog_bytes += len(data)
            return
        line.write(data)
        self.counters["tx_frames"] += 1

    def _on_resume(self) -> None:
        self._paused = False
        line = self._line
        backlog = self._backlog
        # line.write() may call pause_writing() again synchronously; stop there.
        while backlog and not self._paused and line is not None:
            data = backlog.popleft()
            self._backlog_bytes -= len(data)
            line.write(data)
            self.counters["tx_frames"] += 1
        if not backlog and not self._paused and self._drained is not None:
            self._drained.set()

    async def _drain(self, line: asyncio.Transport) -> None:
        if not self._backlog and not line.get_write_buffer_size():
            return
        self._drained = asyncio.Event()
        # With both limits at 0 pyserial-asyncio calls resume_writing() only once its buffer
        # is empty; _on_resume() then refills it from the backlog until both are empty.
        line.set_write_buffer_limits(high=0, low=0)
        try:
            await asyncio.wait_for(self._drained.wait(), self.close_timeout)
        except TimeoutError:
            _LOGGER.warning(
                "%s: %s is stalled; discarding %d queued bytes on close",
                self.name,
                self.url,
                self.queued_bytes,
            )

    # -- receiving ---------------------------------------------------------------------------

    def _on_data(self, data: bytes) -> None:
        deframer = self._deframer
        before = deframer.dropped_bytes
        frames = deframer.feed(data)
        if deframer.dropped_bytes != before:
            self._noise(deframer.dropped_bytes - before, "not part of any frame")
        deliver = self._deliver
        for frame in frames:
            self.counters["rx_frames"] += 1
            if deliver is not None:
                try:
                    deliver(self.address, frame)
                except Exception:
                    self.counters["rx_deliver_errors"] += 1
                    _LOGGER.exception(
                        "%s: deliver() failed for %s", self.name, frame[:_EXCERPT].hex(" ")
                    )
        if deframer.pending:
            loop = asyncio.get_running_loop()
            self._last_rx = loop.time()
            if self._idle_timer is None:
                self._idle_timer = loop.call_later(self.inter_frame_timeout, self._on_idle)

    def _on_idle(self) -> None:
        # One timer per gap, not per chunk: re-arm for the rest of the gap if bytes came since.
        loop = asyncio.get_running_loop()
        remaining = self._last_rx + self.inter_frame_timeout - loop.time()
        if remaining > 0 and self._deframer.pending:
            self._idle_timer = loop.call_later(remaining, self._on_idle)
            return
        self._idle_timer = None
        dropped = self._deframer.reset()
        if dropped:
            self._noise(dropped, f"incomplete after {self.inter_frame_timeout * 1000:.0f} ms idle")

    def _noise(self, dropped: int, why: str) -> None:
        deframer = self._deframer
        self.counters["rx_dropped_bytes"] += dropped
        if isinstance(deframer, SlipCrcDeframer):  # one deframer for the transport's lifetime
            self.counters["rx_crc_errors"] = deframer.crc_errors
            self.counters["rx_malformed"] = deframer.malformed + deframer.oversize
        self._warnings.warning(
            "rx-noise",
            "%s: discarded %d bytes from %s (%s): %s",
            self.name,
            dropped,
            self.url,
            why,
            deframer.take_garbage().hex(" "),
        )

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    # -- opening and reopening ---------------------------------------------------------------

    def _new_deframer(self) -> StreamDeframer | SlipCrcDeframer:
        if self.framing == "slip":
            return SlipCrcDeframer(self.max_frame)
        return StreamDeframer(self.max_frame)

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        # Opening may block (a socket:// connect, a slow USB adapter): do it off the loop.
        opening = loop.run_in_executor(
            None, functools.partial(serial.serial_for_url, self.url, baudrate=self.baudrate)
        )
        try:
            port = await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_port)  # close() came while the thread was opening
            raise
        if self._closing:
            port.close()
            raise serial.SerialException("transport closed while opening")
        try:
            port.fileno()
        except (OSError, ValueError, AttributeError) as exc:
            port.close()
            raise ValueError(
                f"{self.url}: pyserial-asyncio needs a port with a file descriptor"
            ) from exc
        protocol = _LineProtocol(self)
        line, _ = await serial_asyncio.connection_for_serial(loop, lambda: protocol, port)
        line.set_write_buffer_limits(high=self.write_buffer_high)
        self._line, self._protocol = line, protocol
        self._paused = False
        _LOGGER.info(
            "%s: opened %s (%d baud, %s framing)", self.name, self.url, self.baudrate, self.framing
        )
        self._report(LinkEvent.LINK_UP)

    async def _supervise(self) -> None:
        """Wait for the port to vanish, then reopen it with jittered exponential back-off."""
        first, longest = self.reopen_backoff
        delay = first
        attempts = 0
        while not self._closing:
            protocol = self._protocol
            if protocol is not None and self._line is not None:
                await protocol.lost.wait()
                delay, attempts = first, 0
                continue
            # Jitter (half to all of the delay): gateways on one USB hub do not retry in step.
            await asyncio.sleep(random.uniform(delay / 2, delay))
            attempts += 1
            try:
                await self._open()
            except (serial.SerialException, OSError) as exc:
                _LOGGER.debug(
                    "%s: reopening %s failed (attempt %d): %s", self.name, self.url, attempts, exc
                )
            except Exception:  # whatever else the port does, keep trying
                _LOGGER.exception("%s: unexpected error reopening %s", self.name, self.url)
            else:
                self.counters["reopens"] += 1
                _LOGGER.info("%s: %s is back after %d attempts", self.name, self.url, attempts)
                continue
            delay = min(delay * 2, longest)

    def _on_lost(self, protocol: _LineProtocol, exc: Exception | None) -> None:
        if protocol is not self._protocol:
            return
        self._line = self._protocol = None
        self._paused = False
        self._backlog.clear()
        self._backlog_bytes = 0
        self._cancel_idle_timer()
        self.counters["rx_dropped_bytes"] += self._deframer.reset()
        if self._closing:
            _LOGGER.info("%s: closed %s", self.name, self.url)
            return
        self.counters["link_losses"] += 1
        _LOGGER.warning("%s: lost %s (%s); reopening with back-off", self.name, self.url, exc)
        self._report(LinkEvent.LINK_DOWN)

    def _report(self, event: LinkEvent) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(self.address, event)
        except Exception:
            _LOGGER.exception("%s: on_event(%s) failed", self.name, event.value)

    def __repr__(self) -> str:
        if self._line is not None:
            state = "open"
        elif self._closing or self._supervisor is None:
            state = "closed"
        else:
            state = "down, reopening"
        c = self.counters
        return (
            f"<SerialTransport {self.name!r} {self.url} {self.framing} {state}"
            f" paused={self._paused} queued={self.queued_bytes} rx={c['rx_frames']}"
            f" tx={c['tx_frames']} dropped={c['tx_dropped']} noise={c['rx_dropped_bytes']}>"
        )


def _close_port(opening: asyncio.Future[serial.SerialBase]) -> None:
    """Close a port whose opening finished after nobody wanted it any more."""
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()

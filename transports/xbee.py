"""Digi XBee Zigbee coordinator on a serial port, as a Transport: 0x90 frames in, 0x10 frames out.

The radio must run API firmware in API mode 1 or 2 (``ATAP``). We default to **API mode 2**
(escaped), as zigpy-xbee does: an unescaped 0x7E can only start a frame, so the driver resyncs
on the next frame after line noise, and XON/XOFF bytes never appear raw on the wire.

Layering (after zigpy-xbee): :mod:`transports.xbee_frames` does the pure framing; this module owns
the serial port (pyserial-asyncio, any pyserial URL: ``/dev/ttyUSB0``, a pty, ``socket://``), the
frame-id futures and the reopen loop. Received frames are delivered synchronously from
``data_received`` in arrival order. Every transmit awaits its 0x8B Transmit Status; a failure or
timeout is counted by status and reported as :attr:`LinkEvent.SEND_FAILED`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
from collections import Counter, deque
from dataclasses import dataclass
from typing import Final

import serial
import serial_asyncio

from gateway.errors import TransportError
from transports.base import Address, FrameSink, LinkEvent, LinkEventSink, Transport
from transports.xbee_frames import (
    BROADCAST_IEEE64,
    ApiFrame,
    AtCommand,
    AtResponse,
    AtStatus,
    DeliveryStatus,
    FrameDecoder,
    FrameError,
    ModemStatus,
    ReceivePacket,
    TransmitRequest,
    TransmitStatus,
    encode_frame,
    parse_frame_data,
)

__all__ = ["XBEE_BROADCAST", "RadioInfo", "XBeeAddress", "XBeeTransport"]

_LOGGER = logging.getLogger(__name__)

AT_COMMAND_TIMEOUT: Final = 3.0  # seconds; a local AT answer takes milliseconds (zigpy-xbee: 3)
DEFAULT_MAX_PAYLOAD: Final = 84  # Zigbee NP without APS encryption; used until ATNP is read
MAX_BACKLOG: Final = 1024  # frames waiting for one of the 255 frame ids
_FRAME_IDS: Final = 255  # frame id is one byte and 0 means "no Transmit Status wanted"


@dataclass(frozen=True, slots=True)
class XBeeAddress:
    """A node's IEEE 64-bit (extended) address, the one printed on the module (SH + SL)."""

    ieee64: int

    def __post_init__(self) -> None:
        if not 0 <= self.ieee64 <= 0xFFFF_FFFF_FFFF_FFFF:
            raise ValueError(f"ieee64={self.ieee64!r} is not a 64-bit address")

    def __str__(self) -> str:
        return f"{self.ieee64:016X}"

    def __repr__(self) -> str:
        return f"XBeeAddress(0x{self.ieee64:016X})"


XBEE_BROADCAST: Final = XBeeAddress(BROADCAST_IEEE64)


@dataclass(frozen=True, slots=True)
class RadioInfo:
    """What the AT queries at open told us about the local radio."""

    api_mode: int  # AP
    ieee64: int  # SH << 32 | SL
    max_payload: int  # NP: the largest RF payload of one Transmit Request
    association: int  # AI: 0x00 = coordinator started / joined
    firmware: int  # VR
    hardware: int  # HV


@dataclass(frozen=True, slots=True)
class _Outgoing:
    address: XBeeAddress
    rf_data: bytes
    radius: int
    future: asyncio.Future[DeliveryStatus | None]  # None: no status (timeout, port lost)


@dataclass(frozen=True, slots=True)
class _PendingTx:
    outgoing: _Outgoing
    timer: asyncio.TimerHandle


@dataclass(frozen=True, slots=True)
class _PendingAt:
    future: asyncio.Future[AtResponse]


class _State(enum.Enum):
    NEW = "new"
    OPENING = "opening"
    OPEN = "open"
    REOPENING = "reopening"
    CLOSED = "closed"


class _XBeeProtocol(asyncio.Protocol):
    """One serial connection; forwards bytes and loss to its owner, which checks it is current."""

    def __init__(self, owner: XBeeTransport) -> None:
        loop = asyncio.get_running_loop()
        self._owner = owner
        self.serial: asyncio.Transport | None = None
        self.connected: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.serial = transport
        self.connected.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._owner._data_received(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self._owner._connection_lost(self, exc)

    def write(self, data: bytes) -> None:
        if self.serial is not None:
            self.serial.write(data)

    def close(self) -> None:
        if self.serial is not None:
            self.serial.close()


class XBeeTransport(Transport):
    """MQTT-SN over a Zigbee network, through the local XBee coordinator on a serial port.

    Args:
        url: pyserial URL of the radio (``/dev/ttyUSB0``, ``/dev/serial/by-id/...``, a pty,
            ``socket://host:port``).
        baudrate: UART speed; must match the radio's ``ATBD`` (factory default 9600).
        api_mode: 1 (unescaped) or 2 (escaped, the default); must match ``ATAP``.
        tx_timeout: seconds to wait for a Transmit Status before counting the frame as failed.
        reopen_backoff: (first, longest) delay in seconds between reopen attempts after the port
            vanished; the delay doubles per attempt, with jitter.
        name: the transport's name in logs and metrics.
    """

    # Fix (integration test): the runtime answers SEARCHGW with a broadcast GWINFO only on a
    # transport that says it can broadcast [§6.1, reference §5.2]; without this flag GWINFO
    # went unicast to the searcher although a Zigbee broadcast reaches every node.
    can_broadcast = True  # ZigBee broadcast reaches every node

    def __init__(
        self,
        url: str,
        *,
        baudrate: int = 9600,
        api_mode: int = 2,
        tx_timeout: float = 5.0,
        reopen_backoff: tuple[float, float] = (0.5, 30.0),
        name: str = "xbee",
    ) -> None:
        if api_mode not in (1, 2):
            raise ValueError(f"api_mode must be 1 or 2 (ATAP), not {api_mode!r}")
        if tx_timeout <= 0:
            raise ValueError(f"tx_timeout must be positive, not {tx_timeout!r}")
        if not 0 < reopen_backoff[0] <= reopen_backoff[1]:
            raise ValueError(f"reopen_backoff must be 0 < first <= longest, not {reopen_backoff}")
        self.url = url
        self.baudrate = baudrate
        self.api_mode = api_mode
        self.tx_timeout = tx_timeout
        self.reopen_backoff = reopen_backoff
        self.name = name
        self.radio: RadioInfo | None = None
        self._stats: Counter[str] = Counter()
        self._decoder = FrameDecoder(api_mode)
        self._state = _State.NEW
        self._protocol: _XBeeProtocol | None = None
        self._deliver: FrameSink | None = None
        self._on_event: LinkEventSink | None = None
        self._pending: dict[int, _PendingTx | _PendingAt] = {}
        self._backlog: deque[_Outgoing] = deque()
        self._next_frame_id = 1
        self._reopen_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        radio = f"{self.radio.ieee64:016X} NP={self.radio.max_payload}" if self.radio else "?"
        return (
            f"<XBeeTransport {self.name!r} {self.url} AP={self.api_mode} {self._state.value} "
            f"radio={radio} in_flight={len(self._pending)} backlog={len(self._backlog)}>"
        )

    @property
    def stats(self) -> Counter[str]:
        """A snapshot of the counters: tx_*, rx_*, reconnects, and the framing decoder's."""
        snapshot = Counter(self._stats)
        snapshot.update({f"rx_{key}": value for key, value in self._decoder.stats.items()})
        return snapshot

    # -- Transport API ---------------------------------------------------------------------

    async def start(self, deliver: FrameSink, on_event: LinkEventSink | None = None) -> None:
        """Open the port, check the radio with AT queries, and start delivering frames."""
        if self._state is not _State.NEW:
            raise RuntimeError(f"{self!r} was already started")
        self._deliver, self._on_event = deliver, on_event
        self._state = _State.OPENING
        try:
            await self._open()
        except BaseException:
            self._state = _State.CLOSED
            raise
        self._state = _State.OPEN

    def send(self, address: Address, frame: bytes) -> None:
        """Queue one frame for one node as a 0x10 Transmit Request (dest16 0xFFFE, radius 0)."""
        if not isinstance(address, XBeeAddress):
            raise TypeError(f"{self.name}: not an XBee address: {address!r}")
        self._submit(address, frame, 0)

    def broadcast(self, frame: bytes, radius: int = 0) -> None:
        """Queue one frame for every node, sent to 0x000000000000FFFF with ``radius`` hops."""
        self._submit(XBEE_BROADCAST, frame, radius)

    def transmit(
        self, address: XBeeAddress, frame: bytes, radius: int = 0
    ) -> asyncio.Future[DeliveryStatus | None]:
        """Queue one frame now; the future gives its delivery status (None: none came in time)."""
        return self._submit(address, frame, radius)

    def max_frame_size(self, address: Address | None = None) -> int:
        """The radio's NP: the largest RF payload it carries in one frame."""
        return self.radio.max_payload if self.radio else DEFAULT_MAX_PAYLOAD

    def owns(self, address: Address) -> bool:
        """True for XBee addresses."""
        return isinstance(address, XBeeAddress)

    async def close(self) -> None:
        """Stop reopening, forget frames in flight (no events), close the port."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        if self._reopen_task is not None:
            self._reopen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reopen_task
        protocol, self._protocol = self._protocol, None
        self._fail_all_pending(report=False)
        if protocol is not None:
            protocol.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(AT_COMMAND_TIMEOUT):
                    await protocol.closed

    async def at_command(self, command: str, parameter: bytes = b"") -> bytes:
        """Send a local AT command (0x08) and return the value of its 0x88 response."""
        protocol = self._protocol
        frame_id = self._allocate_frame_id()
        if protocol is None or frame_id is None:
            raise TransportError(f"XBee {self.name}: cannot send AT{command}: port not open/busy")
        pending = _PendingAt(asyncio.get_running_loop().create_future())
        self._pending[frame_id] = pending
        protocol.write(encode_frame(AtCommand(frame_id, command, parameter), self.api_mode))
        try:
            async with asyncio.timeout(AT_COMMAND_TIMEOUT):
                response = await pending.future
        except TimeoutError as exc:
            raise TransportError(
                f"XBee {self.name}: no answer to AT{command} on {self.url} within "
                f"{AT_COMMAND_TIMEOUT} s: is the radio in API mode {self.api_mode} "
                f"(ATAP{self.api_mode}) at {self.baudrate} baud?"
            ) from exc
        finally:
            if self._pending.get(frame_id) is pending:
                del self._pending[frame_id]
                self._drain_backlog()
        if response.status is not AtStatus.OK:
            raise TransportError(f"XBee {self.name}: AT{command} failed: {response.status.name}")
        return response.data

    # -- opening and reopening ---------------------------------------------------------------

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        self._decoder.reset()
        protocol = _XBeeProtocol(self)
        try:
            await serial_asyncio.create_serial_connection(
                loop, lambda: protocol, self.url, baudrate=self.baudrate
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            cause = exc.__context__ if isinstance(exc.__context__, OSError) else exc
            raise TransportError(f"XBee {self.name}: cannot open {self.url}: {cause}") from exc
        self._protocol = protocol
        await protocol.connected  # pyserial-asyncio calls connection_made with call_soon
        try:
            self.radio = await self._query_radio()
        except BaseException:
            self._protocol = None
            self._fail_all_pending(report=True)
            protocol.close()
            raise

    async def _query_radio(self) -> RadioInfo:
        """AP first (a wrong mode makes the rest meaningless), then identity and limits."""
        api_mode = int.from_bytes(await self.at_command("AP"), "big")
        if api_mode != self.api_mode:
            raise TransportError(
                f"XBee {self.name} on {self.url} runs API mode AP={api_mode}, but "
                f"api_mode={self.api_mode} is configured: set api_mode={api_mode}, or write "
                f"ATAP{self.api_mode} + ATWR to the radio"
            )
        values = [int.from_bytes(await self.at_command(cmd), "big") for cmd in _QUERIES]
        sh, sl, np_, ai, vr, hv = values
        info = RadioInfo(api_mode, sh << 32 | sl, np_ or DEFAULT_MAX_PAYLOAD, ai, vr, hv)
        _LOGGER.info(
            "XBee %s on %s: radio %016X firmware %04X hardware %04X AP=%d NP=%d AI=0x%02X",
            self.name,
            self.url,
            info.ieee64,
            vr,
            hv,
            api_mode,
            info.max_payload,
            ai,
        )
        if ai != 0:
            _LOGGER.warning(
                "XBee %s: radio reports AI=0x%02X: not on a network yet; sends will fail until "
                "it is (check ATCE1 for a coordinator, ATID, ATSC)",
                self.name,
                ai,
            )
        return info

    def _connection_lost(self, protocol: _XBeeProtocol, exc: Exception | None) -> None:
        if protocol is not self._protocol:
            return  # a connection we already gave up on
        self._protocol = None
        self._fail_all_pending(report=self._state is not _State.CLOSED)
        if self._state is _State.OPEN:
            _LOGGER.warning(
                "XBee %s: serial port %s lost (%s); reopening", self.name, self.url, exc or "closed"
            )
            self._state = _State.REOPENING
            self._reopen_task = asyncio.create_task(
                self._reopen(), name=f"xbee[{self.name}].reopen"
            )

    async def _reopen(self) -> None:
        """Reopen with jittered exponential back-off until it works or close() cancels us."""
        first, longest = self.reopen_backoff
        attempt = 0
        while self._state is _State.REOPENING:
            delay = min(longest, first * 2 ** min(attempt, 30)) * random.uniform(0.5, 1.0)
            attempt += 1
            await asyncio.sleep(delay)
            try:
                await self._open()
            except TransportError as exc:
                _LOGGER.info("XBee %s: reopen attempt %d failed: %s", self.name, attempt, exc)
                continue
            self._state = _State.OPEN
            self._stats["reconnects"] += 1
            _LOGGER.info("XBee %s: %s reopened after %d attempt(s)", self.name, self.url, attempt)

    # -- transmitting ------------------------------------------------------------------------

    def _submit(
        self, address: XBeeAddress, rf_data: bytes, radius: int
    ) -> asyncio.Future[DeliveryStatus | None]:
        loop = asyncio.get_running_loop()
        outgoing = _Outgoing(address, bytes(rf_data), radius, loop.create_future())
        limit = self.max_frame_size(address)
        if len(rf_data) > limit:
            # XBee API, Transmit Request: RF data beyond NP is refused (0x74); never cut a frame.
            self._stats["tx_oversize"] += 1
            _LOGGER.warning(
                "XBee %s: refusing a %d-byte frame for %s: the radio carries at most NP=%d bytes "
                "(frames are never cut)",
                self.name,
                len(rf_data),
                address,
                limit,
            )
            outgoing.future.set_result(DeliveryStatus.PAYLOAD_TOO_LARGE)
        elif self._state is not _State.OPEN or self._protocol is None:
            self._stats["tx_port_down"] += 1
            loop.call_soon(self._finish, outgoing, None)  # never call back into our caller
        elif self._backlog or not self._write_transmit(outgoing):
            if len(self._backlog) >= MAX_BACKLOG:
                self._stats["tx_backlog_full"] += 1
                _LOGGER.warning("XBee %s: backlog full, dropping frame for %s", self.name, address)
                loop.call_soon(self._finish, outgoing, None)
            else:
                self._backlog.append(outgoing)
        return outgoing.future

    def _write_transmit(self, outgoing: _Outgoing) -> bool:
        """Give ``outgoing`` a frame id and write it; False when all 255 ids are in flight."""
        frame_id = self._allocate_frame_id()
        if frame_id is None or self._protocol is None:
            return False
        timer = asyncio.get_running_loop().call_later(
            self.tx_timeout, self._on_tx_timeout, frame_id
        )
        self._pending[frame_id] = _PendingTx(outgoing, timer)
        request = TransmitRequest(
            frame_id, outgoing.address.ieee64, outgoing.rf_data, radius=outgoing.radius
        )
        self._protocol.write(encode_frame(request, self.api_mode))
        self._stats["tx_frames"] += 1
        _LOGGER.debug(
            "XBee %s: frame %d -> %s (%d bytes)",
            self.name,
            frame_id,
            outgoing.address,
            len(outgoing.rf_data),
        )
        return True

    def _drain_backlog(self) -> None:
        while self._backlog and self._write_transmit(self._backlog[0]):
            self._backlog.popleft()

    def _allocate_frame_id(self) -> int | None:
        """The next free frame id, wrapping 1..255 (0 would suppress the status), or None."""
        if len(self._pending) >= _FRAME_IDS:
            return None
        frame_id = self._next_frame_id
        while frame_id in self._pending:
            frame_id = frame_id % _FRAME_IDS + 1
        self._next_frame_id = frame_id % _FRAME_IDS + 1
        return frame_id

    def _on_tx_timeout(self, frame_id: int) -> None:
        pending = self._pending.pop(frame_id, None)
        if not isinstance(pending, _PendingTx):
            return
        self._stats["tx_timeout"] += 1
        _LOGGER.warning(
            "XBee %s: no Transmit Status for frame %d to %s within %.1f s",
            self.name,
            frame_id,
            pending.outgoing.address,
            self.tx_timeout,
        )
        self._finish(pending.outgoing, None)
        self._drain_backlog()

    def _finish(self, outgoing: _Outgoing, status: DeliveryStatus | None) -> None:
        if not outgoing.future.done():
            outgoing.future.set_result(status)
        if status is DeliveryStatus.SUCCESS:
            self._stats["tx_ok"] += 1
            return
        if status is not None:
            self._stats[f"tx_status_{status.name.lower()}"] += 1
        if outgoing.address != XBEE_BROADCAST and self._on_event is not None:
            try:
                self._on_event(outgoing.address, LinkEvent.SEND_FAILED)
            except Exception:
                _LOGGER.exception("XBee %s: on_event callback failed", self.name)

    def _fail_all_pending(self, *, report: bool) -> None:
        """The port is gone: AT waiters get an error, transmits end without a status."""
        pending, self._pending = self._pending, {}
        backlog = list(self._backlog)
        self._backlog.clear()
        for entry in pending.values():
            match entry:
                case _PendingAt(future=future) if not future.done():
                    future.set_exception(TransportError(f"XBee {self.name}: port lost"))
                case _PendingTx(outgoing=outgoing, timer=timer):
                    timer.cancel()
                    backlog.insert(0, outgoing)
        for outgoing in backlog:
            self._stats["tx_port_lost"] += 1
            if report:
                self._finish(outgoing, None)
            elif not outgoing.future.done():
                outgoing.future.set_result(None)

    # -- receiving ---------------------------------------------------------------------------

    def _data_received(self, protocol: _XBeeProtocol, data: bytes) -> None:
        if protocol is not self._protocol:
            return
        noise_before = self._noise()
        for frame_data in self._decoder.feed(data):
            try:
                frame = parse_frame_data(frame_data)
            except FrameError as exc:
                self._count_and_warn("rx_malformed", "malformed frame: %s", exc)
                continue
            self._on_frame(frame)
        if self._noise() > noise_before:
            self._count_and_warn("rx_noise_events", "line noise: %r", self._decoder)

    def _noise(self) -> int:
        stats = self._decoder.stats
        return stats["bad_checksum"] + stats["truncated"] + stats["bad_length"]

    def _count_and_warn(self, key: str, message: str, arg: object) -> None:
        self._stats[key] += 1
        count = self._stats[key]
        if count & (count - 1) == 0:  # rate limit: log the 1st, 2nd, 4th, 8th, ... occurrence
            _LOGGER.warning("XBee %s: " + message + " (%d so far)", self.name, arg, count)

    def _on_frame(self, frame: ApiFrame) -> None:
        match frame:
            case ReceivePacket(src64=src64, rf_data=rf_data):
                self._stats["rx_delivered"] += 1
                address = XBeeAddress(src64)
                assert self._deliver is not None
                try:
                    self._deliver(address, rf_data)
                except Exception:
                    _LOGGER.exception(
                        "XBee %s: deliver failed for a frame from %s", self.name, address
                    )
            case TransmitStatus():
                self._on_transmit_status(frame)
            case AtResponse(frame_id=frame_id):
                pending = self._pending.get(frame_id)
                if isinstance(pending, _PendingAt) and not pending.future.done():
                    pending.future.set_result(frame)
                else:
                    self._count_and_warn("rx_unsolicited", "unsolicited %r", frame)
            case ModemStatus(status=status):
                _LOGGER.info("XBee %s: modem status %s (0x%02X)", self.name, status.name, status)
            case _:
                _LOGGER.debug("XBee %s: ignoring %r", self.name, frame)

    def _on_transmit_status(self, frame: TransmitStatus) -> None:
        pending = self._pending.get(frame.frame_id)
        if not isinstance(pending, _PendingTx):
            self._count_and_warn("rx_unsolicited", "unsolicited %r", frame)
            return
        del self._pending[frame.frame_id]
        pending.timer.cancel()
        status = frame.delivery_status
        if status is not DeliveryStatus.SUCCESS:
            _LOGGER.info(
                "XBee %s: frame %d to %s not delivered: %s (0x%02X) after %d retries",
                self.name,
                frame.frame_id,
                pending.outgoing.address,
                status.name,
                status,
                frame.retry_count,
            )
        self._finish(pending.outgoing, status)
        self._drain_backlog()


_QUERIES: Final = ("SH", "SL", "NP", "AI", "VR", "HV")

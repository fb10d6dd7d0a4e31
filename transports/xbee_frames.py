"""XBee API frames, pure: delimit/escape/checksum byte streams, build and parse the frames we use.

Everything here follows the Digi "XBee Zigbee API frame" chapter (XBee 3 Zigbee RF Module user
guide, "API frame format" and "API frames"). An API frame on the UART is::

    0x7E | length (2 bytes, big endian) | frame data (type + fields) | checksum

length counts the frame data only; checksum = 0xFF - (sum of the frame data & 0xFF). In API mode 2
("API with escaping", AP=2) every byte after the start delimiter that is 0x7E, 0x7D, 0x11 or 0x13 is
sent as 0x7D followed by the byte XOR 0x20 - the length and checksum are computed on the unescaped
data. No I/O, no asyncio: bytes in, frozen dataclasses out (the transport and the simulated radio
both build on this module).
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar, Self

__all__ = [
    "BROADCAST_IEEE64",
    "UNKNOWN_NWK16",
    "ApiFrame",
    "AtCommand",
    "AtCommandQueue",
    "AtResponse",
    "AtStatus",
    "DeliveryStatus",
    "FrameDecoder",
    "FrameError",
    "FrameType",
    "ModemStatus",
    "ModemStatusCode",
    "ReceiveOptions",
    "ReceivePacket",
    "TransmitRequest",
    "TransmitStatus",
    "UnknownFrame",
    "encode_frame",
    "escape",
    "parse_frame_data",
    "unescape",
]

START_DELIMITER = 0x7E
ESCAPE = 0x7D
XON = 0x11
XOFF = 0x13
ESCAPE_XOR = 0x20
_NEEDS_ESCAPE = frozenset((START_DELIMITER, ESCAPE, XON, XOFF))

BROADCAST_IEEE64 = (
    0x000000000000FFFF  # "64-bit destination address: 0x000000000000FFFF = broadcast"
)
UNKNOWN_NWK16 = 0xFFFE  # "16-bit destination address: 0xFFFE if unknown or broadcast"
MAX_FRAME_DATA = 1024  # no XBee frame comes close (NP <= 255); larger lengths are line noise


class FrameError(ValueError):
    """Frame data that no XBee would send: too short for its type, or an impossible field."""


class FrameType(enum.IntEnum):
    """The API frame type byte (first byte of the frame data)."""

    AT_COMMAND = 0x08
    AT_COMMAND_QUEUE = 0x09
    TRANSMIT_REQUEST = 0x10
    AT_RESPONSE = 0x88
    MODEM_STATUS = 0x8A
    TRANSMIT_STATUS = 0x8B
    RECEIVE_PACKET = 0x90


class _OpenIntEnum(enum.IntEnum):
    """An IntEnum that keeps unknown byte values as ``UNKNOWN_0xNN`` instead of failing.

    Newer firmware adds status codes; a driver must count and log them, not crash on them.
    """

    @classmethod
    def _missing_(cls, value: object) -> Self | None:
        if not isinstance(value, int) or not 0 <= value <= 0xFF:
            return None
        member = int.__new__(cls, value)
        member._name_ = f"UNKNOWN_0x{value:02X}"
        member._value_ = value
        return cls._value2member_map_.setdefault(value, member)  # type: ignore[return-value]


class AtStatus(_OpenIntEnum):
    """AT Command Response (0x88) command status."""

    OK = 0x00
    ERROR = 0x01
    INVALID_COMMAND = 0x02
    INVALID_PARAMETER = 0x03
    TX_FAILURE = 0x04


class DeliveryStatus(_OpenIntEnum):
    """Transmit Status (0x8B) delivery status; everything but SUCCESS means "not delivered"."""

    SUCCESS = 0x00
    MAC_ACK_FAILURE = 0x01
    CCA_FAILURE = 0x02
    INVALID_DESTINATION_ENDPOINT = 0x15
    NETWORK_ACK_FAILURE = 0x21
    NOT_JOINED = 0x22
    SELF_ADDRESSED = 0x23
    ADDRESS_NOT_FOUND = 0x24
    ROUTE_NOT_FOUND = 0x25
    BROADCAST_RELAY_NOT_HEARD = 0x26
    INVALID_BINDING_INDEX = 0x2B
    RESOURCE_ERROR = 0x2C
    BROADCAST_WITH_APS = 0x2D
    UNICAST_WITH_APS_EE0 = 0x2E
    RESOURCE_ERROR_BUFFERS = 0x32
    PAYLOAD_TOO_LARGE = 0x74
    INDIRECT_MESSAGE_UNREQUESTED = 0x75


class ModemStatusCode(_OpenIntEnum):
    """Modem Status (0x8A) codes a Zigbee module emits on its own."""

    HARDWARE_RESET = 0x00
    WATCHDOG_RESET = 0x01
    JOINED_NETWORK = 0x02
    DISASSOCIATED = 0x03
    COORDINATOR_STARTED = 0x06
    SECURITY_KEY_UPDATED = 0x07
    VOLTAGE_LIMIT_EXCEEDED = 0x0D
    CONFIG_CHANGED_DURING_JOIN = 0x11


class ReceiveOptions(enum.IntFlag):
    """Receive Packet (0x90) receive options bit field."""

    ACKNOWLEDGED = 0x01
    BROADCAST = 0x02
    APS_ENCRYPTED = 0x20
    FROM_END_DEVICE = 0x40


def _check_range(name: str, value: int, bits: int) -> None:
    if not 0 <= value < (1 << bits):
        raise ValueError(f"{name}={value!r} does not fit in {bits} bits")


def _check_command(command: str) -> None:
    if len(command) != 2 or not command.isascii():
        raise ValueError(f"AT command must be two ASCII characters, not {command!r}")


@dataclass(frozen=True, slots=True)
class AtCommand:
    """0x08 AT Command: read (empty parameter) or set a local radio parameter; applied at once."""

    frame_type: ClassVar[FrameType] = FrameType.AT_COMMAND
    frame_id: int
    command: str
    parameter: bytes = b""

    def __post_init__(self) -> None:
        _check_range("frame_id", self.frame_id, 8)
        _check_command(self.command)

    def to_frame_data(self) -> bytes:
        """Frame type, frame id, the two command characters, the parameter."""
        return bytes((self.frame_type, self.frame_id)) + self.command.encode() + self.parameter

    @classmethod
    def from_frame_data(cls, data: bytes) -> Self:
        """Parse frame data that starts with the 0x08 type byte."""
        _need(data, 4, cls)
        return cls(data[1], data[2:4].decode("latin-1"), bytes(data[4:]))


@dataclass(frozen=True, slots=True)
class AtCommandQueue(AtCommand):
    """0x09 AT Command - Queue Parameter Value: like 0x08, but a set waits for AC (or a 0x08)."""

    frame_type: ClassVar[FrameType] = FrameType.AT_COMMAND_QUEUE


@dataclass(frozen=True, slots=True)
class AtResponse:
    """0x88 AT Command Response: the status and (for a read) the value of one AT command."""

    frame_type: ClassVar[FrameType] = FrameType.AT_RESPONSE
    frame_id: int
    command: str
    status: AtStatus = AtStatus.OK
    data: bytes = b""

    def __post_init__(self) -> None:
        _check_range("frame_id", self.frame_id, 8)
        _check_command(self.command)

    def to_frame_data(self) -> bytes:
        """Frame type, frame id, command, status, value."""
        head = bytes((self.frame_type, self.frame_id)) + self.command.encode()
        return head + bytes((self.status,)) + self.data

    @classmethod
    def from_frame_data(cls, data: bytes) -> Self:
        """Parse frame data that starts with the 0x88 type byte."""
        _need(data, 5, cls)
        return cls(data[1], data[2:4].decode("latin-1"), AtStatus(data[4]), bytes(data[5:]))


@dataclass(frozen=True, slots=True)
class TransmitRequest:
    """0x10 Transmit Request: send ``rf_data`` to a 64-bit address (0xFFFF = broadcast)."""

    frame_type: ClassVar[FrameType] = FrameType.TRANSMIT_REQUEST
    frame_id: int
    dest64: int
    rf_data: bytes
    dest16: int = UNKNOWN_NWK16
    radius: int = 0  # broadcast radius; 0 = maximum hops
    options: int = 0  # 0x01 disable retries, 0x20 APS encryption, 0x40 extended timeout

    def __post_init__(self) -> None:
        _check_range("frame_id", self.frame_id, 8)
        _check_range("dest64", self.dest64, 64)
        _check_range("dest16", self.dest16, 16)
        _check_range("radius", self.radius, 8)
        _check_range("options", self.options, 8)

    def to_frame_data(self) -> bytes:
        """Type, id, 64-bit dest, 16-bit dest, radius, options, RF data."""
        return (
            bytes((self.frame_type, self.frame_id))
            + self.dest64.to_bytes(8, "big")
            + self.dest16.to_bytes(2, "big")
            + bytes((self.radius, self.options))
            + self.rf_data
        )

    @classmethod
    def from_frame_data(cls, data: bytes) -> Self:
        """Parse frame data that starts with the 0x10 type byte."""
        _need(data, 14, cls)
        dest64 = int.from_bytes(data[2:10], "big")
        dest16 = int.from_bytes(data[10:12], "big")
        return cls(data[1], dest64, bytes(data[14:]), dest16, data[12], data[13])


@dataclass(frozen=True, slots=True)
class TransmitStatus:
    """0x8B Transmit Status: how the Transmit Request with ``frame_id`` ended."""

    frame_type: ClassVar[FrameType] = FrameType.TRANSMIT_STATUS
    frame_id: int
    delivery_status: DeliveryStatus
    dest16: int = UNKNOWN_NWK16 - 1  # 0xFFFD "destination address unknown" when not delivered
    retry_count: int = 0
    discovery_status: int = 0  # 0x00 none, 0x01 address, 0x02 route, 0x03 both, 0x40 extended

    def __post_init__(self) -> None:
        _check_range("frame_id", self.frame_id, 8)
        _check_range("dest16", self.dest16, 16)
        _check_range("retry_count", self.retry_count, 8)
        _check_range("discovery_status", self.discovery_status, 8)

    def to_frame_data(self) -> bytes:
        """Type, id, 16-bit dest, retries, delivery status, discovery status."""
        return (
            bytes((self.frame_type, self.frame_id))
            + self.dest16.to_bytes(2, "big")
            + bytes((self.retry_count, self.delivery_status, self.discovery_status))
        )

    @classmethod
    def from_frame_data(cls, data: bytes) -> Self:
        """Parse frame data that starts with the 0x8B type byte."""
        _need(data, 7, cls)
        dest16 = int.from_bytes(data[2:4], "big")
        return cls(data[1], DeliveryStatus(data[5]), dest16, data[4], data[6])


@dataclass(frozen=True, slots=True)
class ReceivePacket:
    """0x90 Receive Packet: ``rf_data`` heard from ``src64`` (options 0x02 = it was a broadcast)."""

    frame_type: ClassVar[FrameType] = FrameType.RECEIVE_PACKET
    src64: int
    rf_data: bytes
    src16: int = UNKNOWN_NWK16
    options: int = ReceiveOptions.ACKNOWLEDGED

    def __post_init__(self) -> None:
        _check_range("src64", self.src64, 64)
        _check_range("src16", self.src16, 16)
        _check_range("options", self.options, 8)

    def to_frame_data(self) -> bytes:
        """Type, 64-bit source, 16-bit source, options, RF data (no frame id: unsolicited)."""
        return (
            bytes((self.frame_type,))
            + self.src64.to_bytes(8, "big")
            + self.src16.to_bytes(2, "big")
            + bytes((self.options,))
            + self.rf_data
        )

    @classmethod
    def from_frame_data(cls, data: bytes) -> Self:
        """Parse frame data that starts with the 0x90 type byte."""
        _need(data, 12, cls)
        src64 = int.from_bytes(data[1:9], "big")
        src16 = int.from_bytes(data[9:11], "big")
        return cls(src64, bytes(data[12:]), src16, data[11])


@dataclass(frozen=True, slots=True)
class ModemStatus:
    """0x8A Modem Status: an unsolicited radio event (reset, coordinator started, ...)."""

    frame_type: ClassVar[FrameType] = FrameType.MODEM_STATUS
    status: ModemStatusCode

    def to_frame_data(self) -> bytes:
        """Type and status byte."""
        return bytes((self.frame_type, self.status))

    @classmethod
    def from_frame_data(cls, data: bytes) -> Self:
        """Parse frame data that starts with the 0x8A type byte."""
        _need(data, 2, cls)
        return cls(ModemStatusCode(data[1]))


@dataclass(frozen=True, slots=True)
class UnknownFrame:
    """Any other frame type, kept whole so the caller can log it."""

    frame_type: int
    data: bytes = b""

    def to_frame_data(self) -> bytes:
        """Type byte and the rest as received."""
        return bytes((self.frame_type,)) + self.data


ApiFrame = (
    AtCommand
    | AtCommandQueue
    | AtResponse
    | TransmitRequest
    | TransmitStatus
    | ReceivePacket
    | ModemStatus
    | UnknownFrame
)


def _need(data: bytes, minimum: int, cls: type) -> None:
    if len(data) < minimum:
        raise FrameError(
            f"{cls.__name__} frame data needs at least {minimum} bytes, got {len(data)}: "
            f"{bytes(data[:16]).hex(' ')}"
        )


def parse_frame_data(data: bytes) -> ApiFrame:
    """Turn one frame's data (type byte first, no delimiter/length/checksum) into a frame object."""
    if not data:
        raise FrameError("empty frame data")
    try:
        match data[0]:
            case FrameType.RECEIVE_PACKET:
                return ReceivePacket.from_frame_data(data)
            case FrameType.TRANSMIT_STATUS:
                return TransmitStatus.from_frame_data(data)
            case FrameType.AT_RESPONSE:
                return AtResponse.from_frame_data(data)
            case FrameType.MODEM_STATUS:
                return ModemStatus.from_frame_data(data)
            case FrameType.TRANSMIT_REQUEST:
                return TransmitRequest.from_frame_data(data)
            case FrameType.AT_COMMAND:
                return AtCommand.from_frame_data(data)
            case FrameType.AT_COMMAND_QUEUE:
                return AtCommandQueue.from_frame_data(data)
            case other:
                return UnknownFrame(other, bytes(data[1:]))
    except FrameError:
        raise
    except ValueError as exc:
        # Fuzz fix (tests/fuzz/test_framing_fuzz.py): an AT frame whose command bytes are not
        # ASCII (line noise with a valid checksum) raised a plain ValueError from the
        # constructor, past the transport's ``except FrameError``: a traceback from the loop
        # and the rest of that read's frames lost. Callers rely on FrameError only.
        raise FrameError(f"frame type 0x{data[0]:02X} with an impossible field: {exc}") from None


def escape(data: bytes) -> bytes:
    """API mode 2: replace 0x7E/0x7D/0x11/0x13 by 0x7D, byte ^ 0x20."""
    out = bytearray()
    for byte in data:
        if byte in _NEEDS_ESCAPE:
            out += bytes((ESCAPE, byte ^ ESCAPE_XOR))
        else:
            out.append(byte)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    """Undo :func:`escape`; a trailing lone 0x7D raises FrameError (the rest has not arrived)."""
    out = bytearray()
    it = iter(data)
    for byte in it:
        if byte == ESCAPE:
            nxt = next(it, None)
            if nxt is None:
                raise FrameError("escape byte 0x7D at end of data")
            out.append(nxt ^ ESCAPE_XOR)
        else:
            out.append(byte)
    return bytes(out)


def checksum(frame_data: bytes) -> int:
    """0xFF minus the low byte of the sum of the frame data."""
    return 0xFF - (sum(frame_data) & 0xFF)


def encode_frame(frame: ApiFrame | bytes, api_mode: int) -> bytes:
    """The bytes to write on the UART for ``frame`` (an object or raw frame data) in AP 1 or 2."""
    if api_mode not in (1, 2):
        raise ValueError(f"api_mode must be 1 or 2, not {api_mode!r}")
    data = frame if isinstance(frame, bytes | bytearray) else frame.to_frame_data()
    if not 0 < len(data) <= 0xFFFF:
        raise ValueError(f"frame data must be 1..65535 bytes, not {len(data)}")
    body = len(data).to_bytes(2, "big") + bytes(data) + bytes((checksum(data),))
    return bytes((START_DELIMITER,)) + (escape(body) if api_mode == 2 else body)


class FrameDecoder:
    """Split a UART byte stream into frame data, resynchronising on noise and bad checksums.

    ``feed(chunk)`` returns the frame data (type byte first) of every complete, valid frame. Bytes
    before a start delimiter are counted as ``garbage``; a frame with a bad checksum is counted and
    skipped by searching again from the byte after its delimiter. In API mode 2 an unescaped 0x7E
    can only be a delimiter, so a frame cut short by a new 0x7E is dropped as ``truncated``.
    """

    def __init__(self, api_mode: int) -> None:
        if api_mode not in (1, 2):
            raise ValueError(f"api_mode must be 1 or 2, not {api_mode!r}")
        self.api_mode = api_mode
        self.stats: Counter[str] = Counter()
        self._buffer = bytearray()

    def __repr__(self) -> str:
        parts = [f"AP={self.api_mode}", f"buffered={len(self._buffer)}"]
        parts += [f"{key}={value}" for key, value in sorted(self.stats.items())]
        return f"<FrameDecoder {' '.join(parts)}>"

    def reset(self) -> None:
        """Forget a half-received frame (after the port was reopened)."""
        self._buffer.clear()

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add received bytes; return the data of every frame they complete."""
        self._buffer += chunk
        frames: list[bytes] = []
        while (data := self._next_frame()) is not None:
            frames.append(data)
        return frames

    def _next_frame(self) -> bytes | None:
        buf = self._buffer
        while True:
            start = buf.find(START_DELIMITER)
            garbage = len(buf) if start < 0 else start
            if garbage:
                self.stats["garbage"] += garbage  # bytes before any start delimiter
                del buf[:garbage]
            if start < 0:
                return None
            result = self._take_escaped() if self.api_mode == 2 else self._take_plain()
            if result is None:
                return None  # wait for more bytes
            if result:
                return result
            # b"" means "that candidate was dropped": search again

    def _take_plain(self) -> bytes | None:
        """AP=1: the length field says where the frame ends; 0x7E may occur inside it."""
        buf = self._buffer
        if len(buf) < 3:
            return None
        length = int.from_bytes(buf[1:3], "big")
        if length == 0 or length > MAX_FRAME_DATA:
            return self._drop("bad_length", 1)
        if len(buf) < length + 4:
            return None
        data = bytes(buf[3 : 3 + length])
        if checksum(data) != buf[3 + length]:
            return self._drop("bad_checksum", 1)  # resync: search from the byte after this 0x7E
        del buf[: length + 4]
        self.stats["frames"] += 1
        return data

    def _take_escaped(self) -> bytes | None:
        """AP=2: everything up to the next raw 0x7E belongs to this frame (or is noise)."""
        buf = self._buffer
        end = buf.find(START_DELIMITER, 1)
        segment = bytes(buf[1:] if end < 0 else buf[1:end])
        if segment.endswith(b"\x7d") and (len(segment) - len(segment.rstrip(b"\x7d"))) % 2:
            segment_body = unescape(segment[:-1])  # the escaped byte is still on its way
        else:
            segment_body = unescape(segment)
        size = 1 + len(segment)  # raw bytes this candidate occupies, delimiter included
        if len(segment_body) < 2:
            return None if end < 0 else self._drop("truncated", size)
        need = 3 + int.from_bytes(segment_body[:2], "big")  # length, data, checksum
        if need == 3 or need > MAX_FRAME_DATA + 3:
            return self._drop("bad_length", size)
        if len(segment_body) < need:
            return None if end < 0 else self._drop("truncated", size)
        del buf[:size]
        if len(segment_body) > need:
            self.stats["garbage"] += len(segment_body) - need
        data = segment_body[2 : need - 1]
        if checksum(data) != segment_body[need - 1]:
            self.stats["bad_checksum"] += 1
            return b""
        self.stats["frames"] += 1
        return data

    def _drop(self, reason: str, size: int) -> bytes:
        """Count one rejected candidate and remove its first ``size`` bytes; b"" = search on."""
        self.stats[reason] += 1
        del self._buffer[:size]
        return b""

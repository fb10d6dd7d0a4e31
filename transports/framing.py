"""Pure byte-stream framing for serial lines: cut a byte stream into whole MQTT-SN frames and back.

No I/O and no clock here; :mod:`transports.serial` feeds the bytes it reads and calls ``reset()``
after an idle gap. Two line formats are offered.

**plain** (:class:`StreamDeframer`): frames back to back with nothing around them, delimited
only by their own MQTT-SN length header (reference §1: a first byte ``L`` >= 2 is the total
length; ``01 HH LL`` is the long form with a 16-bit total). This is what mqtt-sn-tools' serial
bridge and simple Arduino sketches send. A plain line has no way to say where a frame starts, so
the deframer checks every candidate (length in range, known MsgType, a body length that type
can have) and, when it fails, drops one byte and looks again. A damaged length byte can still
make it swallow bytes of the following frames; the idle-gap ``reset()`` bounds that damage.

**slip** (:class:`SlipCrcDeframer`, :func:`slip_crc_encode`): for noisy lines. On the wire::

    END  escape(frame || CRC_hi || CRC_lo)  END

- SLIP as in RFC 1055: END = 0xC0; inside a packet 0xC0 is sent as ESC ESC_END (0xDB 0xDC)
  and 0xDB as ESC ESC_ESC (0xDB 0xDD). Any other byte after ESC is an error (packet dropped).
  We send END before and after each packet; a receiver ignores empty packets, so a sender
  may send the trailing END only (the leading one flushes line noise and confines a lost byte
  to one packet).
- ``frame`` is the whole MQTT-SN message, its length header included.
- The CRC is **CRC-16/CCITT-FALSE**: width 16, polynomial 0x1021, initial value 0xFFFF, input
  and output not reflected, final XOR 0x0000; check value 0x29B1 over ASCII ``123456789``.
  It is computed over the unescaped ``frame`` and appended high byte first, before escaping.
  The CRC over ``frame || CRC`` is then 0x0000, so a receiver may check that instead. In C::

      uint16_t crc = 0xFFFF;
      for (size_t i = 0; i < len; i++) {
          crc ^= (uint16_t)buf[i] << 8;
          for (int b = 0; b < 8; b++) crc = (crc & 0x8000) ? (crc << 1) ^ 0x1021 : crc << 1;
      }

- Test vectors (hex): PINGREQ ``02 16`` has CRC 0x099A, wire ``C0 02 16 09 9A C0``.
  PUBLISH ``09 0C 00 00 01 00 00 C0 DB`` has CRC 0x0D0A, wire
  ``C0 09 0C 00 00 01 00 00 DB DC DB DD 0D 0A C0``.

A SLIP packet whose CRC fails, whose escape is invalid, which is shorter than 4 bytes, longer
than ``max_frame`` + 2, or whose MQTT-SN length header disagrees with its size is dropped and
counted.
"""

from __future__ import annotations

import binascii
import re

__all__ = [
    "BODY_LIMITS",
    "KNOWN_MSG_TYPES",
    "SlipCrcDeframer",
    "StreamDeframer",
    "crc16_ccitt_false",
    "declared_length",
    "slip_crc_encode",
]

# MQTT-SN 1.2 Table 3 (reference §1): 0x03, 0x11, 0x19, 0x1E-0xFD and 0xFF are reserved.
KNOWN_MSG_TYPES: frozenset[int] = frozenset(
    [*range(0x00, 0x03), *range(0x04, 0x11), *range(0x12, 0x19), *range(0x1A, 0x1E), 0xFE]
)

# (shortest, longest) body after MsgType per type, from the layouts in reference §3; None = open.
# Lenient on purpose: only what no implementation can send is excluded (P11 empty WILLTOPIC,
# DISCONNECT with or without Duration, CONNECT with an empty ClientId).
BODY_LIMITS: dict[int, tuple[int, int | None]] = {
    0x00: (3, 3),  # ADVERTISE: GwId, Duration
    0x01: (1, 1),  # SEARCHGW: Radius
    0x02: (1, None),  # GWINFO: GwId, GwAdd
    0x04: (4, None),  # CONNECT: Flags, ProtocolId, Duration, ClientId
    0x05: (1, 1),  # CONNACK: ReturnCode
    0x06: (0, 0),  # WILLTOPICREQ
    0x07: (0, None),  # WILLTOPIC: [Flags, WillTopic]
    0x08: (0, 0),  # WILLMSGREQ
    0x09: (0, None),  # WILLMSG
    0x0A: (4, None),  # REGISTER: TopicId, MsgId, TopicName
    0x0B: (5, 5),  # REGACK: TopicId, MsgId, ReturnCode
    0x0C: (5, None),  # PUBLISH: Flags, TopicId, MsgId, Data
    0x0D: (5, 5),  # PUBACK: TopicId, MsgId, ReturnCode
    0x0E: (2, 2),  # PUBCOMP: MsgId
    0x0F: (2, 2),  # PUBREC: MsgId
    0x10: (2, 2),  # PUBREL: MsgId
    0x12: (3, None),  # SUBSCRIBE: Flags, MsgId, TopicName | TopicId
    0x13: (6, 6),  # SUBACK: Flags, TopicId, MsgId, ReturnCode
    0x14: (3, None),  # UNSUBSCRIBE: Flags, MsgId, TopicName | TopicId
    0x15: (2, 2),  # UNSUBACK: MsgId
    0x16: (0, None),  # PINGREQ: [ClientId]
    0x17: (0, 0),  # PINGRESP
    0x18: (0, 2),  # DISCONNECT: [Duration]
    0x1A: (0, None),  # WILLTOPICUPD: [Flags, WillTopic]
    0x1B: (1, 1),  # WILLTOPICRESP: ReturnCode
    0x1C: (0, None),  # WILLMSGUPD: WillMsg
    0x1D: (1, 1),  # WILLMSGRESP: ReturnCode
    0xFE: (1, None),  # Encapsulated: Ctrl, WirelessNodeId; the inner message follows [§5.5]
}

END = 0xC0
ESC = 0xDB
_END = b"\xc0"
_ESC_END = b"\xdb\xdc"
_ESC_ESC = b"\xdb\xdd"
_BAD_ESCAPE = re.compile(rb"\xdb(?![\xdc\xdd])")
_EXCERPT = 16


def crc16_ccitt_false(data: bytes) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (poly 0x1021, init 0xFFFF, no reflection, no final XOR)."""
    return binascii.crc_hqx(data, 0xFFFF)


def declared_length(data: bytes) -> int | None:
    """The total length the MQTT-SN header at the start of ``data`` declares, or None if invalid.

    None also when the header is incomplete (``01`` or ``01 HH`` only). Reference §1: 0x00 is
    invalid, 0x01 announces the 3-byte long form, anything else is the total length itself.
    """
    if not data:
        return None
    first = data[0]
    if first > 1:
        return first
    if first == 1 and len(data) >= 3:
        total = (data[1] << 8) | data[2]
        return total if total >= 4 else None
    return None


def frame_total(data: bytes) -> int | None:
    """Total bytes of the frame at the start of ``data``, including a forwarder's inner message.

    A forwarder frame (0xFE) declares only its own header; the encapsulated message follows
    with its own Length [§5.5]. None while the headers are incomplete or invalid.
    """
    outer = declared_length(data)
    if outer is None:
        return None
    type_at = 3 if data[0] == 1 else 1
    if len(data) <= type_at or data[type_at] != _ENCAPSULATED:
        return outer
    inner = declared_length(data[outer : outer + 3])
    return None if inner is None or inner < 2 else outer + inner


_ENCAPSULATED = 0xFE


def _plausible(msg_type: int, body_length: int) -> bool:
    limits = BODY_LIMITS.get(msg_type)
    if limits is None:
        return False
    low, high = limits
    return body_length >= low and (high is None or body_length <= high)


def slip_crc_encode(frame: bytes) -> bytes:
    """One frame as it goes on a SLIP line: END, escaped frame and CRC-16/CCITT-FALSE, END."""
    payload = frame + crc16_ccitt_false(frame).to_bytes(2, "big")
    # Escape ESC first: escaping END afterwards introduces ESC bytes that must stay as they are.
    return _END + payload.replace(b"\xdb", _ESC_ESC).replace(_END, _ESC_END) + _END


class StreamDeframer:
    """Cuts a plain byte stream into MQTT-SN frames by their length header; resyncs on garbage.

    ``feed(chunk)`` returns the frames completed by ``chunk``. Bytes that cannot start a frame
    are dropped one at a time (``dropped_bytes``); at most one candidate frame (<= ``max_frame``
    bytes) is ever buffered. Call ``reset()`` after an idle gap on the line.
    """

    __slots__ = ("_buffer", "_garbage", "check_layout", "dropped_bytes", "frames", "max_frame")

    def __init__(self, max_frame: int = 255, *, check_layout: bool = True) -> None:
        if max_frame < 2:
            raise ValueError(f"max_frame must be at least 2, not {max_frame}")
        self.max_frame = max_frame
        self.check_layout = check_layout
        self.frames = 0
        self.dropped_bytes = 0
        self._buffer = bytearray()
        self._garbage = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the whole frames they complete, in order."""
        buf = self._buffer
        buf += data
        frames: list[bytes] = []
        start = 0
        size = len(buf)
        max_frame = self.max_frame
        while start < size:
            available = size - start
            first = buf[start]
            if first == 1:
                if available < 3:
                    break  # long form: the 16-bit length has not arrived yet
                length = (buf[start + 1] << 8) | buf[start + 2]
                header = 3
                valid = 4 <= length <= max_frame
            else:
                length = first
                header = 1
                valid = 2 <= length <= max_frame
            if valid:
                if available <= header:
                    break  # the MsgType byte has not arrived yet
                msg_type = buf[start + header]
                if self.check_layout:
                    valid = _plausible(msg_type, length - header - 1)
                else:
                    valid = msg_type in KNOWN_MSG_TYPES
            if not valid:
                self._drop(buf[start])
                start += 1
                continue
            if buf[start + header] == _ENCAPSULATED:
                # Forwarder frame: its Length covers the outer header only [§5.5].
                inner_at = start + length
                if size <= inner_at or (buf[inner_at] == 1 and size < inner_at + 3):
                    break  # the inner message's header has not arrived yet
                total = frame_total(bytes(buf[start : inner_at + 3]))
                if total is None or total > max_frame:
                    self._drop(buf[start])
                    start += 1
                    continue
                length = total
            if available < length:
                break  # a plausible header: wait for the rest of the frame
            frames.append(bytes(buf[start : start + length]))
            start += length
        del buf[:start]
        self.frames += len(frames)
        return frames

    def reset(self) -> int:
        """Discard a partly received frame (call after an idle gap); return the bytes dropped."""
        dropped = len(self._buffer)
        for byte in self._buffer[:_EXCERPT]:
            self._drop(byte, count=False)
        self.dropped_bytes += dropped
        self._buffer.clear()
        return dropped

    def take_garbage(self) -> bytes:
        """The first bytes dropped since the last call (at most 16), for a log excerpt."""
        garbage = bytes(self._garbage)
        self._garbage.clear()
        return garbage

    def _drop(self, byte: int, *, count: bool = True) -> None:
        if count:
            self.dropped_bytes += 1
        if len(self._garbage) < _EXCERPT:
            self._garbage.append(byte)

    def __repr__(self) -> str:
        return (
            f"<StreamDeframer max_frame={self.max_frame} pending={self.pending}"
            f" frames={self.frames} dropped_bytes={self.dropped_bytes}>"
        )


class SlipCrcDeframer:
    """Cuts a SLIP byte stream into MQTT-SN frames, checking each packet's CRC-16/CCITT-FALSE.

    ``feed(chunk)`` returns the frames completed by ``chunk``. Bad packets are dropped and
    counted: ``crc_errors`` (CRC mismatch), ``malformed`` (bad escape, runt, length header
    disagreeing), ``oversize`` (longer than ``max_frame``). Memory stays below about twice the
    largest packet: an END-less run longer than that is discarded up to the next END.
    """

    __slots__ = (
        "_buffer",
        "_discarding",
        "_garbage",
        "crc_errors",
        "dropped_bytes",
        "frames",
        "malformed",
        "max_frame",
        "oversize",
    )

    def __init__(self, max_frame: int = 255) -> None:
        if max_frame < 2:
            raise ValueError(f"max_frame must be at least 2, not {max_frame}")
        self.max_frame = max_frame
        self.frames = 0
        self.crc_errors = 0
        self.malformed = 0
        self.oversize = 0
        self.dropped_bytes = 0
        self._buffer = bytearray()
        self._garbage = b""
        self._discarding = False

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the END of a packet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the whole frames they complete, in order."""
        buf = self._buffer
        buf += data
        frames: list[bytes] = []
        start = 0
        while (end := buf.find(END, start)) >= 0:
            if self._discarding:
                self._discarding = False
                self.dropped_bytes += end - start
            elif end > start:
                self._packet(bytes(buf[start:end]), frames)
            start = end + 1
        del buf[:start]
        # Fully escaped, a packet of max_frame + 2 bytes takes at most twice that on the wire.
        if len(buf) > 2 * (self.max_frame + 2):
            if not self._discarding:
                self.oversize += 1
                self._garbage = bytes(buf[:_EXCERPT])
            self._discarding = True
            self.dropped_bytes += len(buf)
            buf.clear()
        self.frames += len(frames)
        return frames

    def reset(self) -> int:
        """Discard a partly received packet (call after an idle gap); return the bytes dropped."""
        dropped = len(self._buffer)
        if dropped:
            self._garbage = bytes(self._buffer[:_EXCERPT])
        self.dropped_bytes += dropped
        self._buffer.clear()
        return dropped

    def take_garbage(self) -> bytes:
        """The first bytes of the last dropped packet (at most 16), for a log excerpt."""
        garbage, self._garbage = self._garbage, b""
        return garbage

    def _packet(self, raw: bytes, frames: list[bytes]) -> None:
        if _BAD_ESCAPE.search(raw) is not None:
            self._reject(raw)
            return
        # Unescape ESC_END first: in a valid packet every ESC starts a pair, so the order is safe.
        payload = raw.replace(_ESC_END, _END).replace(_ESC_ESC, b"\xdb")
        if len(payload) > self.max_frame + 2:
            self.oversize += 1
            self._reject(raw, count=False)
            return
        if len(payload) < 4:
            self._reject(raw)
            return
        if crc16_ccitt_false(payload) != 0:
            self.crc_errors += 1
            self._reject(raw, count=False)
            return
        frame = payload[:-2]
        if frame_total(frame) != len(frame):
            self._reject(raw)
            return
        frames.append(frame)

    def _reject(self, raw: bytes, *, count: bool = True) -> None:
        if count:
            self.malformed += 1
        self.dropped_bytes += len(raw)
        self._garbage = raw[:_EXCERPT]

    def __repr__(self) -> str:
        return (
            f"<SlipCrcDeframer max_frame={self.max_frame} pending={self.pending}"
            f" frames={self.frames} crc_errors={self.crc_errors} malformed={self.malformed}"
            f" oversize={self.oversize}>"
        )

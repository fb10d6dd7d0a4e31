"""What both directions of the MQTT-SN 1.2 codec share: tables, structs, checks, ``frame_length``.

Part of ``gateway.protocol.codec`` (the public face), next to ``decoders`` and ``encoders``. The
tables and structs are built once at import so that the hot path only indexes them. Section
numbers like [§5.4.12] point to the MQTT-SN 1.2 specification, P-numbers to the pitfalls in
``docs/mqtt-sn-1.2-reference.md`` §7.
"""

from __future__ import annotations

from struct import Struct
from typing import Final

from gateway.errors import RemoteProtocolError
from gateway.protocol.constants import FLAG_DUP, FLAG_RETAIN, MsgType, QoS, ReturnCode, TopicIdType

__all__ = ["MAX_FRAME_SIZE", "frame_length"]

MAX_FRAME_SIZE: Final = 0xFFFF  # the long-form Length is 16 bits [§5.2.1]

_ENCAPSULATED: Final = 0xFE

# ---------------------------------------------------------------------------------------------
# Precomputed tables: no enum construction by call on the hot path.

# Indexed by the MsgType byte; reserved values (0x03, 0x11, 0x19, 0x1E-0xFD, 0xFF) map to None.
_NAMES: Final[tuple[str | None, ...]] = tuple(
    map({t.value: t.name for t in MsgType}.get, range(256))
)
_ENCAPSULATED_NAME: Final = "ENCAPSULATED"

# Reserved return codes decode through ReturnCode._missing_ once, here (P16).
_RC: Final[tuple[ReturnCode, ...]] = tuple(ReturnCode(v) for v in range(256))

# Indexed by the two QoS bits (flags >> 5 & 3): 0b11 is QoS -1 [§5.3.4].
_QOS_OF_BITS: Final = (QoS.AT_MOST_ONCE, QoS.AT_LEAST_ONCE, QoS.EXACTLY_ONCE, QoS.MINUS_ONE)
_QOS_BITS: Final[dict[int, int]] = {q: q.wire_bits for q in QoS}
_TIT_OF_BITS: Final = (TopicIdType.NORMAL, TopicIdType.PREDEFINED, TopicIdType.SHORT_NAME, None)

_NORMAL: Final = TopicIdType.NORMAL
_SHORT_NAME: Final = TopicIdType.SHORT_NAME
_QOS_M1: Final = QoS.MINUS_ONE

_PublishFlags = tuple[QoS, TopicIdType, bool, bool]


def _publish_flags(flags: int) -> _PublishFlags | None:
    """(qos, topic_id_type, dup, retain) of a PUBLISH Flags byte, or None when it is illegal."""
    qos = _QOS_OF_BITS[(flags >> 5) & 3]
    tit = _TIT_OF_BITS[flags & 3]
    # [§5.3.4] TopicIdType 0b11 is reserved; [§6.8] QoS -1 only with pre-defined ids or short names.
    if tit is None or (qos is _QOS_M1 and tit is _NORMAL):
        return None
    # Will and CleanSession (0x08, 0x04) mean nothing in PUBLISH: ignored on receipt [§5.3.4].
    return qos, tit, bool(flags & FLAG_DUP), bool(flags & FLAG_RETAIN)


_PUBLISH_FLAGS: Final = tuple(_publish_flags(f) for f in range(256))


def _peek_flags(flags: int) -> tuple[QoS, TopicIdType, bool] | None:
    """(qos, topic_id_type, retain) of the Flags ``peek_publish`` takes, or None."""
    parsed = _PUBLISH_FLAGS[flags]
    if parsed is None or parsed[0] is _QOS_M1 or parsed[1] is _SHORT_NAME:
        return None  # QoS -1 needs no session; a short name needs its characters checked
    return parsed[0], parsed[1], parsed[3]


_PEEK_FLAGS: Final = tuple(_peek_flags(f) for f in range(256))

# ---------------------------------------------------------------------------------------------
# Precompiled structs (network byte order).

_U16: Final = Struct(">H")
_ADVERTISE: Final = Struct(">BH")  # GwId, Duration
_CONNECT: Final = Struct(">BBH")  # Flags, ProtocolId, Duration
_HH: Final = Struct(">HH")  # REGISTER TopicId, MsgId
_HHB: Final = Struct(">HHB")  # REGACK / PUBACK TopicId, MsgId, ReturnCode
_BHH: Final = Struct(">BHH")  # PUBLISH Flags, TopicId, MsgId; SUBSCRIBE Flags, MsgId, TopicId
_BH: Final = Struct(">BH")  # SUBSCRIBE / UNSUBSCRIBE Flags, MsgId
_BHHB: Final = Struct(">BHHB")  # SUBACK Flags, TopicId, MsgId, ReturnCode
_LONG_HEADER: Final = Struct(">BHB")  # 0x01, Length, MsgType
_SHORT_PUBLISH: Final = Struct(">BBBHH")  # Length, 0x0C, Flags, TopicId, MsgId
_LONG_PUBLISH: Final = Struct(">BHBBHH")  # 0x01, Length, 0x0C, Flags, TopicId, MsgId
_SHORT_HHB: Final = Struct(">BBHHB")  # Length, MsgType, TopicId, MsgId, ReturnCode
_SHORT_U16: Final = Struct(">BBH")  # Length, MsgType, MsgId or Duration

# ---------------------------------------------------------------------------------------------
# Error helpers: every RemoteProtocolError names the message type, the field and what was expected.


def _fail(name: str, problem: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"{name}: {problem}")


def _size(name: str, what: str, expected: str, got: int) -> RemoteProtocolError:
    return RemoteProtocolError(f"{name}: {what} must be {expected}, got {got} byte(s)")


def _text(data: bytes, start: int, name: str, field: str) -> str:
    """The UTF-8 string from ``start`` to the end of the message [§5.3.1: no length prefix]."""
    try:
        text = data[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(
            name, f"{field} must be valid UTF-8 ({exc.reason} at byte {start + exc.start})"
        ) from None
    # MQTT 3.1.1 §1.5.3 forbids U+0000 in strings; a broker would drop the shared upstream link.
    if "\x00" in text:
        raise _fail(name, f"{field} must not contain U+0000")
    return text


def _check_short_name(topic_id: int, name: str) -> None:
    """Reject a short topic name whose two bytes are not a UTF-8 string without U+0000 [§6.7]."""
    hi = topic_id >> 8
    lo = topic_id & 0xFF
    if 0 < hi < 0x80 and 0 < lo < 0x80:  # two ASCII characters: the usual case
        return
    try:
        text = bytes((hi, lo)).decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(
            name, f"short topic name must be 2 bytes of UTF-8, got {topic_id:#06x}"
        ) from None
    if "\x00" in text:
        raise _fail(name, f"short topic name must not contain U+0000, got {topic_id:#06x}")


def _flags_qos012(flags: int, name: str) -> QoS:
    qos = _QOS_OF_BITS[(flags >> 5) & 3]
    if qos is _QOS_M1:
        # [§5.3.4] QoS -1 exists only in a PUBLISH sent by a client.
        raise _fail(
            name, f"Flags QoS must be 0, 1 or 2 (QoS -1 only in PUBLISH), got flags {flags:#04x}"
        )
    return qos


def _flags_topic_id_type(flags: int, name: str) -> TopicIdType:
    tit = _TIT_OF_BITS[flags & 3]
    if tit is None:
        raise _fail(name, f"Flags TopicIdType 0b11 is reserved, got flags {flags:#04x}")
    return tit


# ---------------------------------------------------------------------------------------------
# Frame boundaries: for stream transports and for the frame inside ENCAPSULATED, both directions.


def frame_length(buf: bytes) -> int | None:
    """Total length the frame at the start of ``buf`` claims, or None until its header is in.

    For stream transports (framed serial). A forwarder frame (0xFE) claims its outer Length plus
    the Length of the message it carries [§5.5]. Raises RemoteProtocolError for a Length byte of
    0x00 or a long-form Length too small to hold its own header, where no resynchronisation is
    possible without dropping bytes.
    """
    offset = 0
    size = len(buf)
    # Iterative, not recursive: nested 0xFE frames must not exhaust the stack.
    while True:
        if size <= offset:
            return None
        first = buf[offset]
        if first == 0x01:
            if size < offset + 4:
                return None
            length = (buf[offset + 1] << 8) | buf[offset + 2]
            type_pos = offset + 3
            if length < 4:
                raise RemoteProtocolError(
                    f"header: long-form Length must be at least 4, got {length}"
                )
        elif first == 0x00:
            raise RemoteProtocolError("header: Length must not be 0x00")
        else:
            if size < offset + 2:
                return None
            length = first
            type_pos = offset + 1
        if buf[type_pos] != _ENCAPSULATED:
            return offset + length
        if length < type_pos - offset + 2:
            raise RemoteProtocolError(
                f"{_ENCAPSULATED_NAME}: Length {length} leaves no room for Ctrl"
            )
        offset += length

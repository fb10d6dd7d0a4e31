"""Bytes to MQTT-SN 1.2 messages and back: ``decode``, ``encode`` and stream ``frame_length``.

``decode`` raises only ``RemoteProtocolError`` (the peer sent something illegal); ``encode`` raises
only ``LocalProtocolError`` (we asked for something that cannot go on the wire). Section numbers
like [§5.4.12] point to the MQTT-SN 1.2 specification, P-numbers to the pitfalls in
``docs/mqtt-sn-1.2-reference.md`` §7.

This is the gateway's hot path: decoding dispatches on the MsgType byte through a 256-entry tuple,
fixed fields come from precompiled ``Struct`` objects, flag bytes are looked up in precomputed
tables, and PUBLISH is built without its (validating, frozen) dataclass constructor.
"""

from __future__ import annotations

from collections.abc import Callable
from struct import Struct
from typing import Any, Final

from gateway.errors import LocalProtocolError, RemoteProtocolError
from gateway.protocol.constants import (
    FLAG_CLEAN_SESSION,
    FLAG_DUP,
    FLAG_RETAIN,
    FLAG_WILL,
    PROTOCOL_ID,
    MsgType,
    QoS,
    ReturnCode,
    TopicIdType,
)
from gateway.protocol.messages import (
    Advertise,
    Connack,
    Connect,
    Disconnect,
    Encapsulated,
    GwInfo,
    Message,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Regack,
    Register,
    SearchGw,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    WillMsg,
    WillMsgReq,
    WillMsgResp,
    WillMsgUpd,
    WillTopic,
    WillTopicReq,
    WillTopicResp,
    WillTopicUpd,
    unchecked_builder,
)

__all__ = ["MAX_FRAME_SIZE", "decode", "encode", "frame_length"]

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
# Fast construction of decoded messages (see ``unchecked_builder``): the decoder has already
# validated every value (16-bit ints come from struct, enums from the tables above, PUBLISH
# flags from _PUBLISH_FLAGS), so the messages on the hot path skip their validating constructor.

_make_publish: Final = unchecked_builder(
    Publish, ("topic_id", "data", "qos", "msg_id", "topic_id_type", "dup", "retain")
)
_make_puback: Final = unchecked_builder(Puback, ("topic_id", "msg_id", "return_code"))
_make_regack: Final = unchecked_builder(Regack, ("topic_id", "msg_id", "return_code"))
_make_pubrec: Final = unchecked_builder(Pubrec, ("msg_id",))
_make_pubrel: Final = unchecked_builder(Pubrel, ("msg_id",))
_make_pubcomp: Final = unchecked_builder(Pubcomp, ("msg_id",))
_make_unsuback: Final = unchecked_builder(Unsuback, ("msg_id",))

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
# Decoders: one per MsgType, called as fn(data, pos) where pos is the first byte after MsgType and
# the body runs to the end of ``data`` (the header check guarantees Length == len(data)).

_Decoder = Callable[[bytes, int], Message]


def _d_advertise(data: bytes, pos: int) -> Message:
    if len(data) - pos != 3:
        raise _size("ADVERTISE", "body (GwId, Duration)", "3 bytes", len(data) - pos)
    gw_id, duration = _ADVERTISE.unpack_from(data, pos)
    return Advertise(gw_id, duration)


def _d_searchgw(data: bytes, pos: int) -> Message:
    if len(data) - pos != 1:
        raise _size("SEARCHGW", "body (Radius)", "1 byte", len(data) - pos)
    return SearchGw(data[pos])


def _d_gwinfo(data: bytes, pos: int) -> Message:
    if len(data) - pos < 1:
        raise _size("GWINFO", "body (GwId, optional GwAdd)", "at least 1 byte", 0)
    return GwInfo(data[pos], data[pos + 1 :])


def _d_connect(data: bytes, pos: int) -> Message:
    if len(data) - pos < 4:
        what = "body (Flags, ProtocolId, Duration, ClientId)"
        raise _size("CONNECT", what, "at least 5 bytes", len(data) - pos)
    flags, protocol_id, duration = _CONNECT.unpack_from(data, pos)
    # [§5.4.4] ProtocolId 0x01 is MQTT-SN 1.2; every other value is reserved (P17).
    if protocol_id != PROTOCOL_ID:
        raise _fail("CONNECT", f"ProtocolId must be 0x01, got {protocol_id:#04x}")
    if len(data) - pos == 4:
        raise _fail("CONNECT", "ClientId must not be empty (1-23 characters) [§5.3.1]")
    client_id = _text(data, pos + 4, "CONNECT", "ClientId")
    # Only Will and CleanSession mean something in CONNECT; other bits are ignored [§5.3.4].
    return Connect(client_id, duration, bool(flags & FLAG_WILL), bool(flags & FLAG_CLEAN_SESSION))


def _return_code_only(name: str, cls: type[Connack | WillTopicResp | WillMsgResp]) -> _Decoder:
    def decode_rc(data: bytes, pos: int) -> Message:
        if len(data) - pos != 1:
            raise _size(name, "body (ReturnCode)", "1 byte", len(data) - pos)
        return cls(_RC[data[pos]])

    return decode_rc


def _header_only(name: str, cls: type[WillTopicReq | WillMsgReq | Pingresp]) -> _Decoder:
    instance = cls()  # stateless and immutable: share one

    def decode_empty(data: bytes, pos: int) -> Message:
        if len(data) != pos:
            raise _size(name, "body", "empty (header only)", len(data) - pos)
        return instance

    return decode_empty


def _will_topic(name: str, cls: type[WillTopic | WillTopicUpd]) -> _Decoder:
    empty = cls()

    def decode_will_topic(data: bytes, pos: int) -> Message:
        # [§5.4.7] an empty WILLTOPIC / WILLTOPICUPD is just the header (`02 07`); Paho clients
        # send a lone Flags byte (`03 07 00`), accepted as the same empty message (P11).
        if len(data) - pos <= 1:
            return empty
        flags = data[pos]
        qos = _flags_qos012(flags, name)
        topic = _text(data, pos + 1, name, "WillTopic")
        return cls(topic, qos, bool(flags & FLAG_RETAIN))

    return decode_will_topic


def _opaque(cls: type[WillMsg | WillMsgUpd]) -> _Decoder:
    def decode_opaque(data: bytes, pos: int) -> Message:
        return cls(data[pos:])

    return decode_opaque


def _d_register(data: bytes, pos: int) -> Message:
    if len(data) - pos < 4:
        raise _size(
            "REGISTER", "body (TopicId, MsgId, TopicName)", "at least 5 bytes", len(data) - pos
        )
    topic_id, msg_id = _HH.unpack_from(data, pos)
    if len(data) - pos == 4:
        raise _fail("REGISTER", "TopicName must not be empty")
    return Register(topic_id, msg_id, _text(data, pos + 4, "REGISTER", "TopicName"))


def _d_regack(data: bytes, pos: int) -> Message:
    if len(data) - pos != 5:
        raise _size("REGACK", "body (TopicId, MsgId, ReturnCode)", "5 bytes", len(data) - pos)
    topic_id, msg_id, rc = _HHB.unpack_from(data, pos)
    return _make_regack(topic_id, msg_id, _RC[rc])


def _d_publish(data: bytes, pos: int) -> Message:
    if len(data) - pos < 5:
        raise _size(
            "PUBLISH", "body (Flags, TopicId, MsgId, Data)", "at least 5 bytes", len(data) - pos
        )
    flags, topic_id, msg_id = _BHH.unpack_from(data, pos)
    parsed = _PUBLISH_FLAGS[flags]
    if parsed is None:
        if flags & 3 == 3:
            raise _fail("PUBLISH", f"Flags TopicIdType 0b11 is reserved, got flags {flags:#04x}")
        raise _fail(
            "PUBLISH",
            f"Flags QoS -1 needs TopicIdType PREDEFINED or SHORT_NAME, not NORMAL "
            f"[§6.8], got flags {flags:#04x}",
        )
    qos, tit, dup, retain = parsed
    if tit is _SHORT_NAME:
        _check_short_name(topic_id, "PUBLISH")
    # P5: a non-zero MsgId with QoS 0 / -1 is kept as received, not rejected.
    return _make_publish(topic_id, data[pos + 5 :], qos, msg_id, tit, dup, retain)


def _d_puback(data: bytes, pos: int) -> Message:
    if len(data) - pos != 5:
        raise _size("PUBACK", "body (TopicId, MsgId, ReturnCode)", "5 bytes", len(data) - pos)
    topic_id, msg_id, rc = _HHB.unpack_from(data, pos)
    return _make_puback(topic_id, msg_id, _RC[rc])


def _msg_id_only(name: str, build: Callable[[int], Message]) -> _Decoder:
    def decode_msg_id(data: bytes, pos: int) -> Message:
        if len(data) - pos != 2:
            raise _size(name, "body (MsgId)", "2 bytes", len(data) - pos)
        return build(_U16.unpack_from(data, pos)[0])

    return decode_msg_id


def _topic_ref(data: bytes, pos: int, name: str, tit: TopicIdType) -> tuple[str, int]:
    """(topic_name, topic_id) of a SUBSCRIBE / UNSUBSCRIBE from ``pos`` on [§5.4.15, §5.4.17]."""
    if tit is _NORMAL:
        if len(data) == pos:
            raise _fail(name, "TopicName must not be empty (TopicIdType NORMAL)")
        return _text(data, pos, name, "TopicName"), 0
    if len(data) - pos != 2:
        raise _size(name, f"TopicId ({tit.name})", "2 bytes", len(data) - pos)
    topic_id: int = _U16.unpack_from(data, pos)[0]
    if tit is _SHORT_NAME:
        _check_short_name(topic_id, name)
    return "", topic_id


def _d_subscribe(data: bytes, pos: int) -> Message:
    if len(data) - pos < 3:
        raise _size(
            "SUBSCRIBE",
            "body (Flags, MsgId, TopicName or TopicId)",
            "at least 4 bytes",
            len(data) - pos,
        )
    flags, msg_id = _BH.unpack_from(data, pos)
    qos = _flags_qos012(flags, "SUBSCRIBE")
    tit = _flags_topic_id_type(flags, "SUBSCRIBE")
    topic_name, topic_id = _topic_ref(data, pos + 3, "SUBSCRIBE", tit)
    # DUP marks a retransmission here too (reference §2); Retain, Will, CleanSession are ignored.
    return Subscribe(msg_id, tit, topic_name, topic_id, qos, bool(flags & FLAG_DUP))


def _d_suback(data: bytes, pos: int) -> Message:
    if len(data) - pos != 6:
        raise _size(
            "SUBACK", "body (Flags, TopicId, MsgId, ReturnCode)", "6 bytes", len(data) - pos
        )
    flags, topic_id, msg_id, rc = _BHHB.unpack_from(data, pos)
    return Suback(topic_id, msg_id, _RC[rc], _flags_qos012(flags, "SUBACK"))


def _d_unsubscribe(data: bytes, pos: int) -> Message:
    if len(data) - pos < 3:
        raise _size(
            "UNSUBSCRIBE",
            "body (Flags, MsgId, TopicName or TopicId)",
            "at least 4 bytes",
            len(data) - pos,
        )
    flags, msg_id = _BH.unpack_from(data, pos)
    # Only TopicIdType means something in UNSUBSCRIBE; the QoS bits are ignored [§5.4.17].
    tit = _flags_topic_id_type(flags, "UNSUBSCRIBE")
    topic_name, topic_id = _topic_ref(data, pos + 3, "UNSUBSCRIBE", tit)
    return Unsubscribe(msg_id, tit, topic_name, topic_id)


_PLAIN_PINGREQ: Final = Pingreq()
_PLAIN_DISCONNECT: Final = Disconnect()


def _d_pingreq(data: bytes, pos: int) -> Message:
    # [§5.4.19] the ClientId is present only when a sleeping client wakes up.
    if len(data) == pos:
        return _PLAIN_PINGREQ
    return Pingreq(_text(data, pos, "PINGREQ", "ClientId"))


def _d_disconnect(data: bytes, pos: int) -> Message:
    # [§5.4.21] Duration is present only from a client going to sleep: total 2 or 4, never 3.
    size = len(data) - pos
    if size == 0:
        return _PLAIN_DISCONNECT
    if size != 2:
        raise _size("DISCONNECT", "Duration", "2 bytes or absent", size)
    return Disconnect(_U16.unpack_from(data, pos)[0])


_DECODER_OF: Final[dict[int, _Decoder]] = {
    MsgType.ADVERTISE: _d_advertise,
    MsgType.SEARCHGW: _d_searchgw,
    MsgType.GWINFO: _d_gwinfo,
    MsgType.CONNECT: _d_connect,
    MsgType.CONNACK: _return_code_only("CONNACK", Connack),
    MsgType.WILLTOPICREQ: _header_only("WILLTOPICREQ", WillTopicReq),
    MsgType.WILLTOPIC: _will_topic("WILLTOPIC", WillTopic),
    MsgType.WILLMSGREQ: _header_only("WILLMSGREQ", WillMsgReq),
    MsgType.WILLMSG: _opaque(WillMsg),
    MsgType.REGISTER: _d_register,
    MsgType.REGACK: _d_regack,
    MsgType.PUBLISH: _d_publish,
    MsgType.PUBACK: _d_puback,
    MsgType.PUBCOMP: _msg_id_only("PUBCOMP", _make_pubcomp),
    MsgType.PUBREC: _msg_id_only("PUBREC", _make_pubrec),
    MsgType.PUBREL: _msg_id_only("PUBREL", _make_pubrel),
    MsgType.SUBSCRIBE: _d_subscribe,
    MsgType.SUBACK: _d_suback,
    MsgType.UNSUBSCRIBE: _d_unsubscribe,
    MsgType.UNSUBACK: _msg_id_only("UNSUBACK", _make_unsuback),
    MsgType.PINGREQ: _d_pingreq,
    MsgType.PINGRESP: _header_only("PINGRESP", Pingresp),
    MsgType.DISCONNECT: _d_disconnect,
    MsgType.WILLTOPICUPD: _will_topic("WILLTOPICUPD", WillTopicUpd),
    MsgType.WILLTOPICRESP: _return_code_only("WILLTOPICRESP", WillTopicResp),
    MsgType.WILLMSGUPD: _opaque(WillMsgUpd),
    MsgType.WILLMSGRESP: _return_code_only("WILLMSGRESP", WillMsgResp),
}
# Indexed by the MsgType byte: a tuple index is the cheapest dispatch. ENCAPSULATED (0xFE) has its
# own path because its Length does not cover the whole datagram.
_DECODERS: Final[tuple[_Decoder | None, ...]] = tuple(map(_DECODER_OF.get, range(256)))


def _d_encapsulated(data: bytes, pos: int, length: int) -> Message:
    """Forwarder frame [§5.5]: Length counts only up to the end of the Wireless Node Id."""
    name = _ENCAPSULATED_NAME
    if length < pos + 1:
        raise _fail(name, f"Length {length} leaves no room for Ctrl")
    if length > len(data):
        raise _fail(name, f"Length field says {length} bytes, the datagram has {len(data)}")
    if length == len(data):
        raise _fail(
            name,
            "inner message missing: an MQTT-SN message must follow the Wireless Node Id "
            "(Length counts only up to the end of the node id)",
        )
    node_id = data[pos + 1 : length]
    if len(node_id) > 0xFF - 3:
        raise _fail(name, f"Wireless Node Id must be at most 252 bytes, got {len(node_id)}")
    inner = data[length:]
    try:
        claimed = frame_length(inner)
    except RemoteProtocolError as exc:
        raise _fail(name, f"inner message: {exc}") from None
    if claimed != len(inner):
        raise _fail(
            name,
            f"inner message Length must match the {len(inner)} bytes after the Wireless Node Id, "
            f"got {'a truncated header' if claimed is None else claimed}",
        )
    # Ctrl bits 7-2 are reserved: ignored on receipt; bits 1-0 are the broadcast radius.
    return Encapsulated(node_id, inner, data[pos] & 0x03)


def decode(data: bytes) -> Message:
    """Decode one complete MQTT-SN message (one datagram); raises only RemoteProtocolError."""
    # One function, not a wrapper around a helper: a call level less on the hot path, and the
    # try costs nothing in 3.11 until something raises.
    try:
        if data.__class__ is not bytes:
            data = bytes(data)  # bytearray / memoryview: fields must be immutable bytes
        size = len(data)
        if size < 2:
            raise RemoteProtocolError(
                f"header: Length and MsgType must be at least 2 bytes, got {size} byte(s)"
            )
        length = data[0]
        if length == 0x01:
            # [§5.2.1] long form `01 HH LL`: read whatever value it carries, even < 256 (P6).
            if size < 4:
                raise RemoteProtocolError(
                    f"header: long-form Length (0x01 HH LL) and MsgType need 4 bytes, got {size}"
                )
            length = (data[1] << 8) | data[2]
            pos = 4
        elif length == 0x00:
            raise RemoteProtocolError("header: Length must not be 0x00")
        else:
            pos = 2
        msg_type = data[pos - 1]
        decoder = _DECODERS[msg_type]
        if decoder is None:
            if msg_type == _ENCAPSULATED:
                return _d_encapsulated(data, pos, length)
            # P26: reserved types (bisquitt's 0x03 AUTH, ...) are dropped by the caller.
            raise RemoteProtocolError(f"MsgType: {msg_type:#04x} is reserved or unknown")
        if length != size:
            # Drop a datagram whose Length disagrees with what arrived (reference §1).
            raise _fail(
                _NAMES[msg_type] or "?",
                f"Length field says {length} bytes, the datagram has {size}",
            )
        return decoder(data, pos)
    except RemoteProtocolError:
        raise
    except LocalProtocolError as exc:
        # A dataclass constructor refused a value the checks above let through.
        raise RemoteProtocolError(f"{exc}") from exc
    except Exception as exc:  # guard: decode must never raise anything else
        raise RemoteProtocolError(f"undecodable message: {exc!r}") from exc


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


# ---------------------------------------------------------------------------------------------
# Encoders: one per message class, each returning the complete frame.


def _frame(msg_type: int, body: bytes) -> bytes:
    """Prefix ``body`` with the short header iff the total fits 255 bytes, else the long one."""
    total = len(body) + 2
    if total <= 0xFF:
        return bytes((total, msg_type)) + body
    total += 2
    if total > MAX_FRAME_SIZE:
        raise LocalProtocolError(
            f"{_NAMES[msg_type]}: message of {total} bytes exceeds the 65535-byte maximum [§5.2.1]"
        )
    return _LONG_HEADER.pack(0x01, total, msg_type) + body


def _utf8(text: str, name: str, field: str) -> bytes:
    if "\x00" in text:
        raise LocalProtocolError(f"{name}: {field} must not contain U+0000")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"{name}: {field} is not encodable as UTF-8: {exc}") from None


def _short_name_ok(topic_id: int, name: str) -> None:
    try:
        _check_short_name(topic_id, name)
    except RemoteProtocolError as exc:
        raise LocalProtocolError(str(exc)) from None


def _e_advertise(m: Advertise) -> bytes:
    return b"\x05\x00" + _ADVERTISE.pack(m.gw_id, m.duration)


def _e_searchgw(m: SearchGw) -> bytes:
    return bytes((3, MsgType.SEARCHGW, m.radius))


def _e_gwinfo(m: GwInfo) -> bytes:
    return _frame(MsgType.GWINFO, bytes((m.gw_id,)) + m.gw_add)


def _e_connect(m: Connect) -> bytes:
    flags = (FLAG_WILL if m.will else 0) | (FLAG_CLEAN_SESSION if m.clean_session else 0)
    client_id = _utf8(m.client_id, "CONNECT", "ClientId")
    return _frame(MsgType.CONNECT, _CONNECT.pack(flags, PROTOCOL_ID, m.duration) + client_id)


def _e_connack(m: Connack) -> bytes:
    return bytes((3, MsgType.CONNACK, m.return_code))


def _e_willtopicreq(m: WillTopicReq) -> bytes:
    return b"\x02\x06"


def _e_will_topic(m: WillTopic | WillTopicUpd) -> bytes:
    msg_type = m.TYPE
    if not m.will_topic:
        # [§5.4.7] the empty form is the bare header; its flags would mean nothing.
        return bytes((2, msg_type))
    flags = _QOS_BITS[m.qos] | (FLAG_RETAIN if m.retain else 0)
    return _frame(msg_type, bytes((flags,)) + _utf8(m.will_topic, msg_type.name, "WillTopic"))


def _e_willmsgreq(m: WillMsgReq) -> bytes:
    return b"\x02\x08"


def _e_will_msg(m: WillMsg | WillMsgUpd) -> bytes:
    return _frame(m.TYPE, bytes(m.will_msg))


def _e_register(m: Register) -> bytes:
    if not m.topic_name:
        raise LocalProtocolError("REGISTER: TopicName must not be empty")
    name = _utf8(m.topic_name, "REGISTER", "TopicName")
    return _frame(MsgType.REGISTER, _HH.pack(m.topic_id, m.msg_id) + name)


def _e_regack(m: Regack) -> bytes:
    return _SHORT_HHB.pack(7, MsgType.REGACK, m.topic_id, m.msg_id, m.return_code)


def _e_publish(m: Publish) -> bytes:
    qos = m.qos
    tit = m.topic_id_type
    msg_id = m.msg_id
    # P5: be strict when sending: QoS 0 and -1 carry MsgId 0x0000 [§5.4.12].
    if msg_id and qos <= 0:
        raise LocalProtocolError(f"PUBLISH: MsgId must be 0 for QoS {int(qos)}, got {msg_id}")
    if tit is _SHORT_NAME:
        _short_name_ok(m.topic_id, "PUBLISH")
    flags = _QOS_BITS[qos] | tit | (FLAG_DUP if m.dup else 0) | (FLAG_RETAIN if m.retain else 0)
    data = m.data
    total = len(data) + 7
    if total <= 0xFF:
        return _SHORT_PUBLISH.pack(total, 0x0C, flags, m.topic_id, msg_id) + data
    total += 2
    if total > MAX_FRAME_SIZE:
        raise LocalProtocolError(
            f"PUBLISH: message of {total} bytes exceeds the 65535-byte maximum [§5.2.1]"
        )
    return _LONG_PUBLISH.pack(0x01, total, 0x0C, flags, m.topic_id, msg_id) + data


def _e_puback(m: Puback) -> bytes:
    return _SHORT_HHB.pack(7, MsgType.PUBACK, m.topic_id, m.msg_id, m.return_code)


def _e_msg_id(m: Pubrec | Pubrel | Pubcomp | Unsuback) -> bytes:
    return _SHORT_U16.pack(4, m.TYPE, m.msg_id)


def _topic_body(m: Subscribe | Unsubscribe, name: str) -> bytes:
    tit = m.topic_id_type
    if tit is _NORMAL:
        return _utf8(m.topic_name, name, "TopicName")
    if tit is _SHORT_NAME:
        _short_name_ok(m.topic_id, name)
    return _U16.pack(m.topic_id)


def _e_subscribe(m: Subscribe) -> bytes:
    flags = (FLAG_DUP if m.dup else 0) | _QOS_BITS[m.qos] | m.topic_id_type
    body = _BH.pack(flags, m.msg_id) + _topic_body(m, "SUBSCRIBE")
    return _frame(MsgType.SUBSCRIBE, body)


def _e_suback(m: Suback) -> bytes:
    return b"\x08\x13" + _BHHB.pack(_QOS_BITS[m.qos], m.topic_id, m.msg_id, m.return_code)


def _e_unsubscribe(m: Unsubscribe) -> bytes:
    body = _BH.pack(m.topic_id_type, m.msg_id) + _topic_body(m, "UNSUBSCRIBE")
    return _frame(MsgType.UNSUBSCRIBE, body)


def _e_pingreq(m: Pingreq) -> bytes:
    if m.client_id is None:
        return b"\x02\x16"
    return _frame(MsgType.PINGREQ, _utf8(m.client_id, "PINGREQ", "ClientId"))


def _e_pingresp(m: Pingresp) -> bytes:
    return b"\x02\x17"


def _e_disconnect(m: Disconnect) -> bytes:
    if m.duration is None:
        return b"\x02\x18"
    return _SHORT_U16.pack(4, MsgType.DISCONNECT, m.duration)


def _e_return_code(m: WillTopicResp | WillMsgResp) -> bytes:
    return bytes((3, m.TYPE, m.return_code))


def _e_encapsulated(m: Encapsulated) -> bytes:
    # [§5.5] the outer Length (always the short form) stops at the end of the Wireless Node Id.
    inner = bytes(m.message)
    try:
        claimed = frame_length(inner)
    except RemoteProtocolError as exc:
        raise LocalProtocolError(f"ENCAPSULATED: message is not an MQTT-SN frame: {exc}") from None
    if claimed != len(inner):
        raise LocalProtocolError(
            f"ENCAPSULATED: message must be one complete MQTT-SN frame of {len(inner)} bytes, "
            f"its header claims {claimed}"
        )
    node_id = bytes(m.wireless_node_id)
    return bytes((3 + len(node_id), _ENCAPSULATED, m.radius)) + node_id + inner


# Values take Any: each encoder accepts exactly the class it is keyed by.
_ENCODERS: Final[dict[type[Message], Callable[[Any], bytes]]] = {
    Advertise: _e_advertise,
    SearchGw: _e_searchgw,
    GwInfo: _e_gwinfo,
    Connect: _e_connect,
    Connack: _e_connack,
    WillTopicReq: _e_willtopicreq,
    WillTopic: _e_will_topic,
    WillMsgReq: _e_willmsgreq,
    WillMsg: _e_will_msg,
    Register: _e_register,
    Regack: _e_regack,
    Publish: _e_publish,
    Puback: _e_puback,
    Pubcomp: _e_msg_id,
    Pubrec: _e_msg_id,
    Pubrel: _e_msg_id,
    Subscribe: _e_subscribe,
    Suback: _e_suback,
    Unsubscribe: _e_unsubscribe,
    Unsuback: _e_msg_id,
    Pingreq: _e_pingreq,
    Pingresp: _e_pingresp,
    Disconnect: _e_disconnect,
    WillTopicUpd: _e_will_topic,
    WillTopicResp: _e_return_code,
    WillMsgUpd: _e_will_msg,
    WillMsgResp: _e_return_code,
    Encapsulated: _e_encapsulated,
}


def encode(msg: Message) -> bytes:
    """Encode one message to its complete frame; raises only LocalProtocolError."""
    try:
        encoder = _ENCODERS[msg.__class__]
    except KeyError:
        raise LocalProtocolError(
            f"cannot encode a {type(msg).__name__}: not an MQTT-SN message"
        ) from None
    try:
        return encoder(msg)
    except LocalProtocolError:
        raise
    except Exception as exc:  # a field of the wrong type or out of range
        # No repr of msg here: a payload may be 64 KiB.
        raise LocalProtocolError(f"{msg.TYPE.name}: cannot encode: {exc!r}") from exc

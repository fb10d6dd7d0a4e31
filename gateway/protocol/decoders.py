"""Bytes to MQTT-SN 1.2 messages: ``decode``, ``peek_publish`` and one decoder per MsgType.

The decoding half of ``gateway.protocol.codec`` (the public face); it raises only
``RemoteProtocolError`` (the peer sent something illegal). [§5.4.12] is a section of the MQTT-SN
1.2 specification, P-numbers are the pitfalls in ``docs/mqtt-sn-1.2-reference.md`` §7.

This is the gateway's hot path: decoding dispatches on the MsgType byte through a 256-entry tuple,
fixed fields come from precompiled ``Struct`` objects, flag bytes are looked up in precomputed
tables (``wire``), and PUBLISH is built without its (validating, frozen) dataclass constructor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from gateway.errors import LocalProtocolError, RemoteProtocolError
from gateway.protocol import wire
from gateway.protocol.constants import (
    FLAG_CLEAN_SESSION,
    FLAG_DUP,
    FLAG_RETAIN,
    FLAG_WILL,
    PROTOCOL_ID,
    MsgType,
    QoS,
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
from gateway.protocol.wire import (
    _ENCAPSULATED,
    _ENCAPSULATED_NAME,
    _NAMES,
    _NORMAL,
    _PEEK_FLAGS,
    _PUBLISH_FLAGS,
    _RC,
    _SHORT_NAME,
    _check_short_name,
    _fail,
    _flags_qos012,
    _flags_topic_id_type,
    _size,
    _text,
    frame_length,
)

__all__ = ["decode", "peek_publish"]

# ``wire``'s structs, assigned rather than imported: CPython 3.11 compiles ``name.method(...)``
# on an imported name without LOAD_METHOD (a bound method per call), 10-20 % slower per message.
_ADVERTISE: Final = wire._ADVERTISE
_BH: Final = wire._BH
_BHH: Final = wire._BHH
_BHHB: Final = wire._BHHB
_CONNECT: Final = wire._CONNECT
_HH: Final = wire._HH
_HHB: Final = wire._HHB
_U16: Final = wire._U16

# ---------------------------------------------------------------------------------------------
# Fast construction of decoded messages (see ``unchecked_builder``): the decoder has already
# validated every value (16-bit ints come from struct, enums from the tables in ``wire``, PUBLISH
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


def peek_publish(frame: bytes) -> tuple[QoS, TopicIdType, bool, int, int, bytes] | None:
    """``(qos, topic_id_type, retain, topic_id, msg_id, data)`` of a plain PUBLISH, else None.

    The uplink hot path: a node's PUBLISH (QoS 0-2, normal or pre-defined topic id, short
    Length) read without building a ``Publish``, whose seven slot writes cost as much as the
    rest of the decode. None is no verdict: the caller decodes the frame with ``decode``, which
    handles (or names what is wrong with) everything else. DUP is not returned: the gateway
    tells a retransmission by its MsgId.
    """
    size = len(frame)
    if size < 7 or frame[1] != 0x0C or frame[0] != size or frame.__class__ is not bytes:
        return None
    flags, topic_id, msg_id = _BHH.unpack_from(frame, 2)
    fast = _PEEK_FLAGS[flags]
    if fast is None:
        return None
    return fast[0], fast[1], fast[2], topic_id, msg_id, frame[7:]


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

"""MQTT-SN 1.2 messages to bytes: ``encode`` and one encoder per message class.

The encoding half of ``gateway.protocol.codec`` (the public face). ``encode`` raises only
``LocalProtocolError`` (we asked for something that cannot go on the wire). Section numbers like
[§5.4.12] point to the MQTT-SN 1.2 specification, P-numbers to the pitfalls in
``docs/mqtt-sn-1.2-reference.md`` §7.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from gateway.errors import LocalProtocolError, RemoteProtocolError
from gateway.protocol import wire
from gateway.protocol.constants import (
    FLAG_CLEAN_SESSION,
    FLAG_DUP,
    FLAG_RETAIN,
    FLAG_WILL,
    PROTOCOL_ID,
    MsgType,
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
)
from gateway.protocol.wire import (
    _ENCAPSULATED,
    _NAMES,
    _NORMAL,
    _QOS_BITS,
    _SHORT_NAME,
    MAX_FRAME_SIZE,
    _check_short_name,
    frame_length,
)

__all__ = ["encode"]

# ``wire``'s structs, assigned rather than imported: CPython 3.11 compiles ``name.method(...)``
# on an imported name without LOAD_METHOD (a bound method per call), 10-20 % slower per message.
_ADVERTISE: Final = wire._ADVERTISE
_BH: Final = wire._BH
_BHHB: Final = wire._BHHB
_CONNECT: Final = wire._CONNECT
_HH: Final = wire._HH
_LONG_HEADER: Final = wire._LONG_HEADER
_LONG_PUBLISH: Final = wire._LONG_PUBLISH
_SHORT_HHB: Final = wire._SHORT_HHB
_SHORT_PUBLISH: Final = wire._SHORT_PUBLISH
_SHORT_U16: Final = wire._SHORT_U16
_U16: Final = wire._U16

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

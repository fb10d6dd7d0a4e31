"""One frozen, slotted dataclass per MQTT-SN 1.2 message, fields named as in the specification.

Constructors validate, so an illegal message cannot be built (``LocalProtocolError``). The codec
turns such failures on received bytes into ``RemoteProtocolError``.

Topic ids are always the 16-bit wire value: a short topic name ``"t1"`` travels as
``short_name_to_id("t1")`` with ``TopicIdType.SHORT_NAME``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import ClassVar, TypeVar

from gateway.errors import LocalProtocolError
from gateway.protocol.constants import MsgType, QoS, ReturnCode, TopicIdType

__all__ = [
    "Advertise",
    "Connack",
    "Connect",
    "Disconnect",
    "Encapsulated",
    "GwInfo",
    "Message",
    "Pingreq",
    "Pingresp",
    "Puback",
    "Pubcomp",
    "Publish",
    "Pubrec",
    "Pubrel",
    "Regack",
    "Register",
    "SearchGw",
    "Suback",
    "Subscribe",
    "Unsuback",
    "Unsubscribe",
    "WillMsg",
    "WillMsgReq",
    "WillMsgResp",
    "WillMsgUpd",
    "WillTopic",
    "WillTopicReq",
    "WillTopicResp",
    "WillTopicUpd",
    "id_to_short_name",
    "short_name_to_id",
    "unchecked_builder",
]

MAX_CLIENT_ID_LEN = 23  # [§5.3.1]


def short_name_to_id(name: str) -> int:
    """Pack a two-character short topic name into the 16-bit TopicId field [§6.7]."""
    raw = name.encode()
    if len(raw) != 2:
        raise LocalProtocolError(f"short topic name must be exactly 2 bytes, got {name!r}")
    return (raw[0] << 8) | raw[1]


def id_to_short_name(topic_id: int) -> str:
    """Unpack the TopicId field of a SHORT_NAME topic into its two characters."""
    return bytes(((topic_id >> 8) & 0xFF, topic_id & 0xFF)).decode("utf-8")


def _u8(cls: str, name: str, value: int) -> None:
    if not 0 <= value <= 0xFF:
        raise LocalProtocolError(f"{cls}.{name} must be 0..255, got {value!r}")


def _u16(cls: str, name: str, value: int) -> None:
    if not 0 <= value <= 0xFFFF:
        raise LocalProtocolError(f"{cls}.{name} must be 0..65535, got {value!r}")


def _qos012(cls: str, qos: QoS) -> None:
    if qos is QoS.MINUS_ONE:
        raise LocalProtocolError(f"{cls}.qos must be 0, 1 or 2; QoS -1 exists only in PUBLISH")


class Message:
    """Base of all messages; ``TYPE`` is the MsgType of the concrete class."""

    __slots__ = ()
    TYPE: ClassVar[MsgType]


@dataclass(frozen=True, slots=True)
class Advertise(Message):
    """ADVERTISE: a gateway announces itself; ``duration`` is seconds until the next one."""

    TYPE: ClassVar[MsgType] = MsgType.ADVERTISE
    gw_id: int
    duration: int

    def __post_init__(self) -> None:
        _u8("Advertise", "gw_id", self.gw_id)
        _u16("Advertise", "duration", self.duration)


@dataclass(frozen=True, slots=True)
class SearchGw(Message):
    """SEARCHGW: a client looks for gateways within ``radius`` hops (0 = everywhere)."""

    TYPE: ClassVar[MsgType] = MsgType.SEARCHGW
    radius: int = 0

    def __post_init__(self) -> None:
        _u8("SearchGw", "radius", self.radius)


@dataclass(frozen=True, slots=True)
class GwInfo(Message):
    """GWINFO: answer to SEARCHGW; ``gw_add`` is only present when a client answers."""

    TYPE: ClassVar[MsgType] = MsgType.GWINFO
    gw_id: int
    gw_add: bytes = b""

    def __post_init__(self) -> None:
        _u8("GwInfo", "gw_id", self.gw_id)


@dataclass(frozen=True, slots=True)
class Connect(Message):
    """CONNECT: ``duration`` is the keep-alive period in seconds."""

    TYPE: ClassVar[MsgType] = MsgType.CONNECT
    client_id: str
    duration: int
    will: bool = False
    clean_session: bool = True

    def __post_init__(self) -> None:
        _u16("Connect", "duration", self.duration)
        if not 1 <= len(self.client_id.encode()) <= 0xFFFF - 8:
            raise LocalProtocolError("Connect.client_id must not be empty")


@dataclass(frozen=True, slots=True)
class Connack(Message):
    """CONNACK: the gateway's answer to CONNECT."""

    TYPE: ClassVar[MsgType] = MsgType.CONNACK
    return_code: ReturnCode = ReturnCode.ACCEPTED


@dataclass(frozen=True, slots=True)
class WillTopicReq(Message):
    """WILLTOPICREQ: the gateway asks for the will topic."""

    TYPE: ClassVar[MsgType] = MsgType.WILLTOPICREQ


@dataclass(frozen=True, slots=True)
class WillTopic(Message):
    """WILLTOPIC: an empty ``will_topic`` deletes the stored will topic and message [§6.3]."""

    TYPE: ClassVar[MsgType] = MsgType.WILLTOPIC
    will_topic: str = ""
    qos: QoS = QoS.AT_MOST_ONCE
    retain: bool = False

    def __post_init__(self) -> None:
        _qos012("WillTopic", self.qos)


@dataclass(frozen=True, slots=True)
class WillMsgReq(Message):
    """WILLMSGREQ: the gateway asks for the will message."""

    TYPE: ClassVar[MsgType] = MsgType.WILLMSGREQ


@dataclass(frozen=True, slots=True)
class WillMsg(Message):
    """WILLMSG: the will payload (opaque bytes)."""

    TYPE: ClassVar[MsgType] = MsgType.WILLMSG
    will_msg: bytes = b""


@dataclass(frozen=True, slots=True)
class Register(Message):
    """REGISTER: ``topic_id`` is 0 from a client, the assigned id from a gateway."""

    TYPE: ClassVar[MsgType] = MsgType.REGISTER
    topic_id: int
    msg_id: int
    topic_name: str

    def __post_init__(self) -> None:
        _u16("Register", "topic_id", self.topic_id)
        _u16("Register", "msg_id", self.msg_id)


@dataclass(frozen=True, slots=True)
class Regack(Message):
    """REGACK: answer to REGISTER, echoing its MsgId."""

    TYPE: ClassVar[MsgType] = MsgType.REGACK
    topic_id: int
    msg_id: int
    return_code: ReturnCode = ReturnCode.ACCEPTED

    def __post_init__(self) -> None:
        _u16("Regack", "topic_id", self.topic_id)
        _u16("Regack", "msg_id", self.msg_id)


@dataclass(frozen=True, slots=True)
class Publish(Message):
    """PUBLISH in either direction; ``msg_id`` is 0 for QoS 0 and -1."""

    TYPE: ClassVar[MsgType] = MsgType.PUBLISH
    topic_id: int
    data: bytes
    qos: QoS = QoS.AT_MOST_ONCE
    msg_id: int = 0
    topic_id_type: TopicIdType = TopicIdType.NORMAL
    dup: bool = False
    retain: bool = False

    def __post_init__(self) -> None:
        _u16("Publish", "topic_id", self.topic_id)
        _u16("Publish", "msg_id", self.msg_id)
        # [§6.8] QoS -1 carries only pre-defined ids or short names.
        if self.qos is QoS.MINUS_ONE and self.topic_id_type is TopicIdType.NORMAL:
            raise LocalProtocolError(
                "Publish with QoS -1 needs a PREDEFINED or SHORT_NAME topic, not NORMAL"
            )


@dataclass(frozen=True, slots=True)
class Puback(Message):
    """PUBACK: QoS 1 acknowledgement, or an error report for a PUBLISH of any QoS."""

    TYPE: ClassVar[MsgType] = MsgType.PUBACK
    topic_id: int
    msg_id: int
    return_code: ReturnCode = ReturnCode.ACCEPTED

    def __post_init__(self) -> None:
        _u16("Puback", "topic_id", self.topic_id)
        _u16("Puback", "msg_id", self.msg_id)


@dataclass(frozen=True, slots=True)
class Pubrec(Message):
    """PUBREC: first answer in the QoS 2 flow."""

    TYPE: ClassVar[MsgType] = MsgType.PUBREC
    msg_id: int

    def __post_init__(self) -> None:
        _u16("Pubrec", "msg_id", self.msg_id)


@dataclass(frozen=True, slots=True)
class Pubrel(Message):
    """PUBREL: second step of the QoS 2 flow."""

    TYPE: ClassVar[MsgType] = MsgType.PUBREL
    msg_id: int

    def __post_init__(self) -> None:
        _u16("Pubrel", "msg_id", self.msg_id)


@dataclass(frozen=True, slots=True)
class Pubcomp(Message):
    """PUBCOMP: last step of the QoS 2 flow."""

    TYPE: ClassVar[MsgType] = MsgType.PUBCOMP
    msg_id: int

    def __post_init__(self) -> None:
        _u16("Pubcomp", "msg_id", self.msg_id)


@dataclass(frozen=True, slots=True)
class Subscribe(Message):
    """SUBSCRIBE: by ``topic_name`` (NORMAL, wildcards allowed) or ``topic_id`` (other types)."""

    TYPE: ClassVar[MsgType] = MsgType.SUBSCRIBE
    msg_id: int
    topic_id_type: TopicIdType = TopicIdType.NORMAL
    topic_name: str = ""
    topic_id: int = 0
    qos: QoS = QoS.AT_MOST_ONCE
    dup: bool = False

    def __post_init__(self) -> None:
        _u16("Subscribe", "msg_id", self.msg_id)
        _u16("Subscribe", "topic_id", self.topic_id)
        _qos012("Subscribe", self.qos)
        if self.topic_id_type is TopicIdType.NORMAL and not self.topic_name:
            raise LocalProtocolError("Subscribe by name (NORMAL) needs a non-empty topic_name")


@dataclass(frozen=True, slots=True)
class Suback(Message):
    """SUBACK: ``topic_id`` is 0 for wildcard filters and short names."""

    TYPE: ClassVar[MsgType] = MsgType.SUBACK
    topic_id: int
    msg_id: int
    return_code: ReturnCode = ReturnCode.ACCEPTED
    qos: QoS = QoS.AT_MOST_ONCE

    def __post_init__(self) -> None:
        _u16("Suback", "topic_id", self.topic_id)
        _u16("Suback", "msg_id", self.msg_id)
        _qos012("Suback", self.qos)


@dataclass(frozen=True, slots=True)
class Unsubscribe(Message):
    """UNSUBSCRIBE: by ``topic_name`` (NORMAL) or ``topic_id`` (other types)."""

    TYPE: ClassVar[MsgType] = MsgType.UNSUBSCRIBE
    msg_id: int
    topic_id_type: TopicIdType = TopicIdType.NORMAL
    topic_name: str = ""
    topic_id: int = 0

    def __post_init__(self) -> None:
        _u16("Unsubscribe", "msg_id", self.msg_id)
        _u16("Unsubscribe", "topic_id", self.topic_id)
        if self.topic_id_type is TopicIdType.NORMAL and not self.topic_name:
            raise LocalProtocolError("Unsubscribe by name (NORMAL) needs a non-empty topic_name")


@dataclass(frozen=True, slots=True)
class Unsuback(Message):
    """UNSUBACK: no return code, only the MsgId."""

    TYPE: ClassVar[MsgType] = MsgType.UNSUBACK
    msg_id: int

    def __post_init__(self) -> None:
        _u16("Unsuback", "msg_id", self.msg_id)


@dataclass(frozen=True, slots=True)
class Pingreq(Message):
    """PINGREQ: ``client_id`` is set only by a sleeping client waking up [§6.14]."""

    TYPE: ClassVar[MsgType] = MsgType.PINGREQ
    client_id: str | None = None

    def __post_init__(self) -> None:
        if self.client_id == "":
            raise LocalProtocolError("Pingreq.client_id must be None or non-empty")


@dataclass(frozen=True, slots=True)
class Pingresp(Message):
    """PINGRESP: to an awake client it also means "no more buffered messages"."""

    TYPE: ClassVar[MsgType] = MsgType.PINGRESP


@dataclass(frozen=True, slots=True)
class Disconnect(Message):
    """DISCONNECT: ``duration`` (seconds) only from a client that goes to sleep."""

    TYPE: ClassVar[MsgType] = MsgType.DISCONNECT
    duration: int | None = None

    def __post_init__(self) -> None:
        if self.duration is not None:
            _u16("Disconnect", "duration", self.duration)


@dataclass(frozen=True, slots=True)
class WillTopicUpd(Message):
    """WILLTOPICUPD: an empty ``will_topic`` deletes the will topic and message."""

    TYPE: ClassVar[MsgType] = MsgType.WILLTOPICUPD
    will_topic: str = ""
    qos: QoS = QoS.AT_MOST_ONCE
    retain: bool = False

    def __post_init__(self) -> None:
        _qos012("WillTopicUpd", self.qos)


@dataclass(frozen=True, slots=True)
class WillTopicResp(Message):
    """WILLTOPICRESP: answer to WILLTOPICUPD."""

    TYPE: ClassVar[MsgType] = MsgType.WILLTOPICRESP
    return_code: ReturnCode = ReturnCode.ACCEPTED


@dataclass(frozen=True, slots=True)
class WillMsgUpd(Message):
    """WILLMSGUPD: replaces the stored will message."""

    TYPE: ClassVar[MsgType] = MsgType.WILLMSGUPD
    will_msg: bytes = b""


@dataclass(frozen=True, slots=True)
class WillMsgResp(Message):
    """WILLMSGRESP: answer to WILLMSGUPD."""

    TYPE: ClassVar[MsgType] = MsgType.WILLMSGRESP
    return_code: ReturnCode = ReturnCode.ACCEPTED


@dataclass(frozen=True, slots=True)
class Encapsulated(Message):
    """Forwarder encapsulation (0xFE) [§5.5]: ``message`` is the complete inner frame's bytes."""

    TYPE: ClassVar[MsgType] = MsgType.ENCAPSULATED
    wireless_node_id: bytes
    message: bytes
    radius: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.radius <= 3:
            raise LocalProtocolError(f"Encapsulated.radius must be 0..3, got {self.radius!r}")
        if len(self.wireless_node_id) > 0xFF - 3:
            raise LocalProtocolError("Encapsulated.wireless_node_id is longer than 252 bytes")


# ---------------------------------------------------------------------------------------------
# Unchecked construction for the hot paths. A frozen dataclass __init__ + __post_init__ costs
# 1.5-2 us (object.__setattr__ per field plus range checks); setting the slots directly is 2-3x
# cheaper. Only for values already known valid: decoded by the codec, or ids the gateway
# allocated itself. The field names are spelled out: if a class ever changes, its validating
# constructor is used instead.

_M = TypeVar("_M", bound=Message)


def unchecked_builder(cls: type[_M], names: tuple[str, ...]) -> Callable[..., _M]:
    """A factory taking the fields of ``cls`` positionally that fills its slots without __init__."""
    if tuple(f.name for f in fields(cls)) != names:  # type: ignore[arg-type]
        return cls
    new = object.__new__
    setters = [cls.__dict__[name].__set__ for name in names]
    if len(setters) == 1:
        (s0,) = setters

        def build1(v0: object) -> _M:
            msg: _M = new(cls)
            s0(msg, v0)
            return msg

        return build1
    if len(setters) == 3:
        s0, s1, s2 = setters

        def build3(v0: object, v1: object, v2: object) -> _M:
            msg: _M = new(cls)
            s0(msg, v0)
            s1(msg, v1)
            s2(msg, v2)
            return msg

        return build3
    if len(setters) == 7:
        s0, s1, s2, s3, s4, s5, s6 = setters

        def build7(
            v0: object, v1: object, v2: object, v3: object, v4: object, v5: object, v6: object
        ) -> _M:
            msg: _M = new(cls)
            s0(msg, v0)
            s1(msg, v1)
            s2(msg, v2)
            s3(msg, v3)
            s4(msg, v4)
            s5(msg, v5)
            s6(msg, v6)
            return msg

        return build7
    return cls

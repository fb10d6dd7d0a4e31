"""Wire numbers of MQTT-SN 1.2 as IntEnums, named as in the specification."""

from __future__ import annotations

from enum import IntEnum
from typing import Final

__all__ = [
    "FLAG_CLEAN_SESSION",
    "FLAG_DUP",
    "FLAG_QOS_MASK",
    "FLAG_RETAIN",
    "FLAG_TOPIC_ID_TYPE_MASK",
    "FLAG_WILL",
    "PROTOCOL_ID",
    "MsgType",
    "QoS",
    "ReturnCode",
    "TopicIdType",
]

PROTOCOL_ID: Final = 0x01

# The Flags byte [§5.3.4].
FLAG_DUP: Final = 0x80
FLAG_QOS_MASK: Final = 0x60
FLAG_RETAIN: Final = 0x10
FLAG_WILL: Final = 0x08
FLAG_CLEAN_SESSION: Final = 0x04
FLAG_TOPIC_ID_TYPE_MASK: Final = 0x03


class MsgType(IntEnum):
    """MsgType field values [Table 3]; note PUBCOMP (0x0E) precedes PUBREC (0x0F)."""

    ADVERTISE = 0x00
    SEARCHGW = 0x01
    GWINFO = 0x02
    CONNECT = 0x04
    CONNACK = 0x05
    WILLTOPICREQ = 0x06
    WILLTOPIC = 0x07
    WILLMSGREQ = 0x08
    WILLMSG = 0x09
    REGISTER = 0x0A
    REGACK = 0x0B
    PUBLISH = 0x0C
    PUBACK = 0x0D
    PUBCOMP = 0x0E
    PUBREC = 0x0F
    PUBREL = 0x10
    SUBSCRIBE = 0x12
    SUBACK = 0x13
    UNSUBSCRIBE = 0x14
    UNSUBACK = 0x15
    PINGREQ = 0x16
    PINGRESP = 0x17
    DISCONNECT = 0x18
    WILLTOPICUPD = 0x1A
    WILLTOPICRESP = 0x1B
    WILLMSGUPD = 0x1C
    WILLMSGRESP = 0x1D
    ENCAPSULATED = 0xFE


class ReturnCode(IntEnum):
    """ReturnCode values [§5.3.10]; reserved values from peers decode as RESERVED_0xNN members."""

    ACCEPTED = 0x00
    REJECTED_CONGESTION = 0x01
    REJECTED_INVALID_TOPIC_ID = 0x02
    REJECTED_NOT_SUPPORTED = 0x03

    @classmethod
    def _missing_(cls, value: object) -> ReturnCode | None:
        # Pitfall P16: EMQX sends 0x80-0x84; keep the value, treat it as a rejection.
        if isinstance(value, int) and 0x04 <= value <= 0xFF:
            member = int.__new__(cls, value)
            member._name_ = f"RESERVED_{value:#04x}"
            member._value_ = value
            return member
        return None


class TopicIdType(IntEnum):
    """TopicIdType flag bits; 0b11 is reserved and rejected at decode time."""

    NORMAL = 0b00
    PREDEFINED = 0b01
    SHORT_NAME = 0b10


class QoS(IntEnum):
    """Quality of service; MINUS_ONE (wire bits 11) is publish-without-connection [§6.8]."""

    AT_MOST_ONCE = 0
    AT_LEAST_ONCE = 1
    EXACTLY_ONCE = 2
    MINUS_ONE = -1

    @property
    def wire_bits(self) -> int:
        """The two QoS bits as they sit in the Flags byte (already shifted)."""
        return 0x60 if self is QoS.MINUS_ONE else self.value << 5

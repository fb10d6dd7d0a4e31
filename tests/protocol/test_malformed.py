"""Malformed input: one case per class of fault, each a RemoteProtocolError naming type, field."""

from __future__ import annotations

import pytest

from gateway.errors import RemoteProtocolError
from gateway.protocol import decode


def h(text: str) -> bytes:
    """Bytes from spaced hex."""
    return bytes.fromhex(text)


# (id, wire bytes, words the error message must contain: the message type and the field).
MALFORMED: list[tuple[str, bytes, tuple[str, ...]]] = [
    # --- header ---
    ("empty datagram", b"", ("header", "Length")),
    ("lone Length byte", h("05"), ("header", "Length")),
    ("Length 0x00", h("00 16"), ("header", "Length", "0x00")),
    ("long form cut inside its Length", h("01 00"), ("header", "Length")),
    ("long form without MsgType", h("01 00 04"), ("header", "Length")),
    # --- Length disagrees with the datagram [reference §1] ---
    ("Length longer than datagram", h("0C 0C 20 00 01 00 02 32 31 2E 35"), ("PUBLISH", "Length")),
    ("Length shorter than datagram", h("0A 0C 20 00 01 00 02 32 31 2E 35"), ("PUBLISH", "Length")),
    ("long-form Length disagrees", h("01 00 10 16"), ("PINGREQ", "Length")),
    (
        "P6 Paho bug: 257-byte datagram claiming 255",
        h("01 00 FF 0C 00 00 05 00 00") + b"\x00" * 248,
        ("PUBLISH", "Length", "255"),
    ),
    # --- reserved / unknown MsgType [Table 3, P26] ---
    ("reserved 0x03 (bisquitt AUTH)", h("02 03"), ("MsgType", "0x03")),
    ("reserved 0x11", h("04 11 00 01"), ("MsgType", "0x11")),
    ("reserved 0x19", h("02 19"), ("MsgType", "0x19")),
    ("reserved 0x1E", h("02 1E"), ("MsgType", "0x1e")),
    ("reserved 0xFD", h("02 FD"), ("MsgType", "0xfd")),
    ("reserved 0xFF", h("02 FF"), ("MsgType", "0xff")),
    # --- truncated bodies ---
    ("ADVERTISE without Duration", h("03 00 01"), ("ADVERTISE", "Duration")),
    ("SEARCHGW without Radius", h("02 01"), ("SEARCHGW", "Radius")),
    ("GWINFO without GwId", h("02 02"), ("GWINFO", "GwId")),
    ("CONNECT cut in Duration", h("05 04 04 01 00"), ("CONNECT", "Duration")),
    ("CONNACK without ReturnCode", h("02 05"), ("CONNACK", "ReturnCode")),
    ("REGISTER cut in MsgId", h("05 0A 00 00 00"), ("REGISTER", "MsgId")),
    ("REGACK without ReturnCode", h("06 0B 00 01 00 01"), ("REGACK", "ReturnCode")),
    ("PUBLISH cut in MsgId", h("06 0C 20 00 01 00"), ("PUBLISH", "MsgId")),
    ("PUBACK cut in MsgId", h("05 0D 00 01 00"), ("PUBACK", "MsgId")),
    ("PUBCOMP cut in MsgId", h("03 0E 00"), ("PUBCOMP", "MsgId")),
    ("PUBREC without MsgId", h("02 0F"), ("PUBREC", "MsgId")),
    ("PUBREL cut in MsgId", h("03 10 00"), ("PUBREL", "MsgId")),
    ("SUBSCRIBE cut in MsgId", h("04 12 20 00"), ("SUBSCRIBE", "MsgId")),
    ("SUBSCRIBE predefined cut in TopicId", h("06 12 21 00 01 00"), ("SUBSCRIBE", "TopicId")),
    ("SUBACK without ReturnCode", h("07 13 20 00 00 00 03"), ("SUBACK", "ReturnCode")),
    ("UNSUBSCRIBE cut in MsgId", h("03 14 00"), ("UNSUBSCRIBE", "MsgId")),
    ("UNSUBSCRIBE short cut in TopicId", h("06 14 02 00 01 74"), ("UNSUBSCRIBE", "TopicId")),
    ("UNSUBACK without MsgId", h("02 15"), ("UNSUBACK", "MsgId")),
    ("WILLTOPICRESP without ReturnCode", h("02 1B"), ("WILLTOPICRESP", "ReturnCode")),
    ("WILLMSGRESP without ReturnCode", h("02 1D"), ("WILLMSGRESP", "ReturnCode")),
    # --- trailing bytes on fixed-size messages ---
    ("CONNACK with 2 bytes", h("04 05 00 00"), ("CONNACK", "ReturnCode")),
    ("PUBACK with 6 bytes", h("08 0D 00 01 00 02 00 00"), ("PUBACK", "ReturnCode")),
    ("PINGRESP with a body", h("03 17 00"), ("PINGRESP", "body")),
    ("WILLTOPICREQ with a body", h("03 06 00"), ("WILLTOPICREQ", "body")),
    ("WILLMSGREQ with a body", h("03 08 00"), ("WILLMSGREQ", "body")),
    (
        "SUBSCRIBE predefined with 3-byte TopicId",
        h("08 12 21 00 01 00 2A 00"),
        ("SUBSCRIBE", "TopicId"),
    ),
    ("DISCONNECT of 3 bytes [§5.4.21]", h("03 18 01"), ("DISCONNECT", "Duration")),
    ("DISCONNECT of 5 bytes", h("05 18 01 2C 00"), ("DISCONNECT", "Duration")),
    # --- flags illegal for the type [§5.3.4] ---
    (
        "PUBLISH QoS -1 with NORMAL topic [§6.8]",
        h("09 0C 60 00 01 00 00 4F 4E"),
        ("PUBLISH", "QoS -1", "NORMAL"),
    ),
    ("PUBLISH TopicIdType 0b11", h("08 0C 23 00 01 00 02 78"), ("PUBLISH", "TopicIdType")),
    ("SUBSCRIBE QoS -1", h("07 12 61 00 01 00 2A"), ("SUBSCRIBE", "QoS")),
    ("SUBSCRIBE TopicIdType 0b11", h("07 12 03 00 01 00 2A"), ("SUBSCRIBE", "TopicIdType")),
    ("UNSUBSCRIBE TopicIdType 0b11", h("07 14 03 00 01 00 2A"), ("UNSUBSCRIBE", "TopicIdType")),
    ("SUBACK QoS -1", h("08 13 60 00 00 00 03 00"), ("SUBACK", "QoS")),
    ("WILLTOPIC QoS -1", h("04 07 60 77"), ("WILLTOPIC", "QoS")),
    ("WILLTOPICUPD QoS -1", h("04 1A 60 77"), ("WILLTOPICUPD", "QoS")),
    # --- strings: invalid UTF-8, U+0000, empty where a value is required ---
    ("CONNECT ClientId not UTF-8", h("08 04 04 01 00 3C C3 28"), ("CONNECT", "ClientId", "UTF-8")),
    (
        "CONNECT ClientId with U+0000",
        h("08 04 04 01 00 3C 61 00"),
        ("CONNECT", "ClientId", "U+0000"),
    ),
    ("CONNECT empty ClientId", h("06 04 04 01 00 3C"), ("CONNECT", "ClientId", "empty")),
    ("REGISTER TopicName not UTF-8", h("07 0A 00 00 00 01 FF"), ("REGISTER", "TopicName", "UTF-8")),
    (
        "REGISTER TopicName surrogate",
        h("09 0A 00 00 00 01 ED A0 80"),
        ("REGISTER", "TopicName", "UTF-8"),
    ),
    ("REGISTER empty TopicName", h("06 0A 00 00 00 01"), ("REGISTER", "TopicName", "empty")),
    ("WILLTOPIC not UTF-8", h("05 07 20 C0 AF"), ("WILLTOPIC", "WillTopic", "UTF-8")),
    ("WILLTOPICUPD with U+0000", h("05 1A 20 61 00"), ("WILLTOPICUPD", "WillTopic", "U+0000")),
    (
        "SUBSCRIBE TopicName not UTF-8",
        h("07 12 20 00 01 61 FE"),
        ("SUBSCRIBE", "TopicName", "UTF-8"),
    ),
    ("SUBSCRIBE empty TopicName", h("05 12 20 00 01"), ("SUBSCRIBE", "TopicName", "empty")),
    ("UNSUBSCRIBE empty TopicName", h("05 14 00 00 01"), ("UNSUBSCRIBE", "TopicName", "empty")),
    ("PINGREQ ClientId not UTF-8", h("04 16 E2 82"), ("PINGREQ", "ClientId", "UTF-8")),
    ("PUBLISH short name not UTF-8", h("08 0C 22 FF 31 00 01 78"), ("PUBLISH", "short topic name")),
    (
        "PUBLISH short name with U+0000",
        h("08 0C 02 74 00 00 00 78"),
        ("PUBLISH", "short topic name"),
    ),
    (
        "SUBSCRIBE short name not UTF-8",
        h("07 12 02 00 01 C3 C3"),
        ("SUBSCRIBE", "short topic name"),
    ),
    # --- CONNECT ProtocolId [§5.4.4, P17] ---
    (
        "CONNECT ProtocolId 0x02",
        h("0B 04 04 02 00 3C 6E 6F 64 65 31"),
        ("CONNECT", "ProtocolId", "0x01", "0x02"),
    ),
    # --- forwarder encapsulation [§5.5] ---
    ("ENCAPSULATED without inner message", h("05 FE 00 AB CD"), ("ENCAPSULATED", "inner message")),
    (
        "ENCAPSULATED Length past datagram",
        h("09 FE 00 AB CD 02 16"),
        ("ENCAPSULATED", "Length"),
    ),
    ("ENCAPSULATED without Ctrl", h("02 FE 02 16"), ("ENCAPSULATED", "Ctrl")),
    ("ENCAPSULATED long form without Ctrl", h("01 00 04 FE 02 16"), ("ENCAPSULATED", "Ctrl")),
    (
        "ENCAPSULATED inner Length too long",
        h("05 FE 00 AB CD 03 16"),
        ("ENCAPSULATED", "inner message", "Length"),
    ),
    (
        "ENCAPSULATED inner Length too short",
        h("05 FE 00 AB CD 02 16 00"),
        ("ENCAPSULATED", "inner message", "Length"),
    ),
    (
        "ENCAPSULATED inner Length 0x00",
        h("05 FE 00 AB CD 00 16"),
        ("ENCAPSULATED", "inner message", "Length"),
    ),
    (
        "ENCAPSULATED inner header cut",
        h("05 FE 00 AB CD 01 00"),
        ("ENCAPSULATED", "inner message", "Length"),
    ),
    (
        "ENCAPSULATED Wireless Node Id over 252 bytes",
        h("01 01 04 FE 00") + b"\x01" * 255 + h("02 16"),
        ("ENCAPSULATED", "Wireless Node Id"),
    ),
]


@pytest.mark.parametrize(
    ("wire", "words"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_raises_remote_protocol_error(wire: bytes, words: tuple[str, ...]) -> None:
    """Malformed input raises RemoteProtocolError whose text names the type and field."""
    with pytest.raises(RemoteProtocolError) as info:
        decode(wire)
    assert type(info.value) is RemoteProtocolError
    text = str(info.value)
    for word in words:
        assert word in text, f"{word!r} missing from {text!r}"


def test_protocol_id_message_is_exact() -> None:
    """The error reads as the reference's own example."""
    with pytest.raises(RemoteProtocolError) as info:
        decode(h("0B 04 04 02 00 3C 6E 6F 64 65 31"))
    assert str(info.value) == "CONNECT: ProtocolId must be 0x01, got 0x02"


@pytest.mark.parametrize("junk", [None, 42, "02 17", 1.5, object()])
def test_non_bytes_input_raises_remote_protocol_error(junk: object) -> None:
    """Even a wrong argument type comes out as RemoteProtocolError: nothing else escapes decode."""
    with pytest.raises(RemoteProtocolError):
        decode(junk)  # type: ignore[arg-type]

"""Exact byte vectors for every MQTT-SN 1.2 message, checked in both directions."""

from __future__ import annotations

import pytest

from gateway.errors import LocalProtocolError, RemoteProtocolError
from gateway.protocol import (
    Advertise,
    Connack,
    Connect,
    Disconnect,
    Encapsulated,
    GwInfo,
    Message,
    MsgType,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    QoS,
    Regack,
    Register,
    ReturnCode,
    SearchGw,
    Suback,
    Subscribe,
    TopicIdType,
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
    decode,
    encode,
    frame_length,
    id_to_short_name,
    short_name_to_id,
)

Q0, Q1, Q2, QM1 = QoS.AT_MOST_ONCE, QoS.AT_LEAST_ONCE, QoS.EXACTLY_ONCE, QoS.MINUS_ONE
NORMAL, PREDEF, SHORT = TopicIdType.NORMAL, TopicIdType.PREDEFINED, TopicIdType.SHORT_NAME


def h(text: str) -> bytes:
    """Bytes from spaced hex, as written in the reference."""
    return bytes.fromhex(text)


# (id, wire bytes, message): canonical encodings, so both decode and encode must agree exactly.
VECTORS: list[tuple[str, bytes, Message]] = [
    # --- reference §8 worked examples ---
    (
        "§8 CONNECT node1 clean keep-alive 60",
        h("0B 04 04 01 00 3C 6E 6F 64 65 31"),
        Connect("node1", 60, will=False, clean_session=True),
    ),
    ("§8 CONNACK accepted", h("03 05 00"), Connack(ReturnCode.ACCEPTED)),
    (
        "§8 REGISTER sensors/t",
        h("0F 0A 00 00 00 01 73 65 6E 73 6F 72 73 2F 74"),
        Register(0, 1, "sensors/t"),
    ),
    ("§8 REGACK id 1", h("07 0B 00 01 00 01 00"), Regack(1, 1, ReturnCode.ACCEPTED)),
    (
        "§8 PUBLISH QoS 1 21.5",
        h("0B 0C 20 00 01 00 02 32 31 2E 35"),
        Publish(1, b"21.5", Q1, msg_id=2),
    ),
    ("§8 PUBACK", h("07 0D 00 01 00 02 00"), Puback(1, 2, ReturnCode.ACCEPTED)),
    ("§8 DISCONNECT sleep 300", h("04 18 01 2C"), Disconnect(300)),
    ("§8 DISCONNECT plain", h("02 18"), Disconnect()),
    ("§8 PINGREQ node1", h("07 16 6E 6F 64 65 31"), Pingreq("node1")),
    ("§8 PINGRESP", h("02 17"), Pingresp()),
    (
        "§8 SUBSCRIBE sensors/#",
        h("0E 12 20 00 03 73 65 6E 73 6F 72 73 2F 23"),
        Subscribe(3, NORMAL, topic_name="sensors/#", qos=Q1),
    ),
    ("§8 SUBACK wildcard", h("08 13 20 00 00 00 03 00"), Suback(0, 3, ReturnCode.ACCEPTED, Q1)),
    (
        "§8 PUBLISH QoS -1 short t1",
        h("09 0C 62 74 31 00 00 4F 4E"),
        Publish(short_name_to_id("t1"), b"ON", QM1, topic_id_type=SHORT),
    ),
    ("§8 empty WILLTOPIC", h("02 07"), WillTopic()),
    ("§8 ADVERTISE gw 1 T_ADV 900", h("05 00 01 03 84"), Advertise(1, 900)),
    ("§8 SEARCHGW radius 0", h("03 01 00"), SearchGw(0)),
    ("§8 GWINFO from GW 1", h("03 02 01"), GwInfo(1)),
    ("§8 forwarder PINGREQ", h("05 FE 00 AB CD 02 16"), Encapsulated(b"\xab\xcd", h("02 16"))),
    (
        "§8 PUBLISH 300-byte payload, long form",
        h("01 01 35 0C 20 00 01 00 02") + b"A" * 300,
        Publish(1, b"A" * 300, Q1, msg_id=2),
    ),
    (
        "§8 largest short-form PUBLISH (248 B payload, 255 total)",
        h("FF 0C 00 00 05 00 00") + bytes(range(248)),
        Publish(5, bytes(range(248))),
    ),
    (
        "§8 smallest long-form PUBLISH (249 B payload, 258 total)",
        h("01 01 02 0C 00 00 05 00 00") + b"\x00" * 249,
        Publish(5, b"\x00" * 249),
    ),
    # --- every other type and variant ---
    ("SEARCHGW radius 3", h("03 01 03"), SearchGw(3)),
    ("GWINFO from a client with GwAdd", h("05 02 07 12 34"), GwInfo(7, b"\x12\x34")),
    (
        "CONNECT will, no clean session",
        h("07 04 08 01 FF FF 6E"),
        Connect("n", 0xFFFF, will=True, clean_session=False),
    ),
    (
        "CONNECT will + clean, UTF-8 ClientId",
        h("0B 04 0C 01 00 00 C3 A9 74 C3 A9"),
        Connect("été", 0, will=True, clean_session=True),
    ),
    ("CONNACK congestion", h("03 05 01"), Connack(ReturnCode.REJECTED_CONGESTION)),
    ("CONNACK not supported", h("03 05 03"), Connack(ReturnCode.REJECTED_NOT_SUPPORTED)),
    ("CONNACK reserved 0x80 (P16)", h("03 05 80"), Connack(ReturnCode(0x80))),
    ("WILLTOPICREQ", h("02 06"), WillTopicReq()),
    ("WILLTOPIC QoS 1 retain", h("06 07 30 61 2F 62"), WillTopic("a/b", Q1, retain=True)),
    ("WILLTOPIC QoS 2", h("04 07 40 77"), WillTopic("w", Q2)),
    ("WILLMSGREQ", h("02 08"), WillMsgReq()),
    ("WILLMSG", h("06 09 64 65 61 64"), WillMsg(b"dead")),
    ("WILLMSG empty", h("02 09"), WillMsg(b"")),
    ("REGISTER from GW", h("09 0A 12 34 00 09 61 2F 62"), Register(0x1234, 9, "a/b")),
    (
        "REGACK invalid topic id",
        h("07 0B 00 00 00 05 02"),
        Regack(0, 5, ReturnCode.REJECTED_INVALID_TOPIC_ID),
    ),
    ("PUBLISH QoS 0 empty payload", h("07 0C 00 00 01 00 00"), Publish(1, b"")),
    (
        "PUBLISH QoS 2 dup retain predefined",
        h("08 0C D1 FF FE FF FF 7A"),
        Publish(0xFFFE, b"z", Q2, 0xFFFF, PREDEF, dup=True, retain=True),
    ),
    (
        "PUBLISH QoS -1 predefined",
        h("08 0C 61 00 2A 00 00 31"),
        Publish(42, b"1", QM1, topic_id_type=PREDEF),
    ),
    (
        "PUBLISH QoS 1 short name with 2-byte UTF-8 char",
        h("08 0C 22 C3 A9 00 01 78"),
        Publish(short_name_to_id("é"), b"x", Q1, 1, SHORT),
    ),
    (
        "PUBACK invalid topic id",
        h("07 0D 00 09 00 03 02"),
        Puback(9, 3, ReturnCode.REJECTED_INVALID_TOPIC_ID),
    ),
    ("PUBCOMP", h("04 0E 00 07"), Pubcomp(7)),
    ("PUBREC", h("04 0F 12 34"), Pubrec(0x1234)),
    ("PUBREL", h("04 10 FF FF"), Pubrel(0xFFFF)),
    (
        "SUBSCRIBE predefined QoS 2 dup",
        h("07 12 C1 00 04 00 2A"),
        Subscribe(4, PREDEF, topic_id=42, qos=Q2, dup=True),
    ),
    (
        "SUBSCRIBE short name QoS 0",
        h("07 12 02 00 05 74 31"),
        Subscribe(5, SHORT, topic_id=short_name_to_id("t1")),
    ),
    (
        "SUBACK QoS 2 congestion",
        h("08 13 40 00 07 00 08 01"),
        Suback(7, 8, ReturnCode.REJECTED_CONGESTION, Q2),
    ),
    ("UNSUBSCRIBE by name", h("08 14 00 00 06 61 2F 2B"), Unsubscribe(6, NORMAL, topic_name="a/+")),
    ("UNSUBSCRIBE predefined", h("07 14 01 00 06 00 2A"), Unsubscribe(6, PREDEF, topic_id=42)),
    (
        "UNSUBSCRIBE short name",
        h("07 14 02 00 06 74 31"),
        Unsubscribe(6, SHORT, topic_id=short_name_to_id("t1")),
    ),
    ("UNSUBACK", h("04 15 00 06"), Unsuback(6)),
    ("PINGREQ plain", h("02 16"), Pingreq()),
    ("DISCONNECT duration 0", h("04 18 00 00"), Disconnect(0)),
    ("WILLTOPICUPD QoS 1", h("04 1A 20 77"), WillTopicUpd("w", Q1)),
    ("WILLTOPICUPD empty", h("02 1A"), WillTopicUpd()),
    ("WILLTOPICRESP accepted", h("03 1B 00"), WillTopicResp(ReturnCode.ACCEPTED)),
    (
        "WILLTOPICRESP not supported",
        h("03 1B 03"),
        WillTopicResp(ReturnCode.REJECTED_NOT_SUPPORTED),
    ),
    ("WILLMSGUPD", h("05 1C 62 79 65"), WillMsgUpd(b"bye")),
    ("WILLMSGRESP", h("03 1D 00"), WillMsgResp(ReturnCode.ACCEPTED)),
    (
        "forwarder radius 3, 8-byte node id, CONNECT",
        h("0B FE 03 00 13 A2 00 41 52 0D 9C 0B 04 04 01 00 3C 6E 6F 64 65 31"),
        Encapsulated(h("00 13 A2 00 41 52 0D 9C"), h("0B 04 04 01 00 3C 6E 6F 64 65 31"), 3),
    ),
    ("forwarder empty node id", h("03 FE 01 02 17"), Encapsulated(b"", h("02 17"), 1)),
    (
        "forwarder carrying a long-form PUBLISH",
        h("04 FE 00 07 01 01 35 0C 20 00 01 00 02") + b"A" * 300,
        Encapsulated(b"\x07", h("01 01 35 0C 20 00 01 00 02") + b"A" * 300),
    ),
    # --- the 255 / 256+ boundary on other variable-length types ---
    ("WILLMSG 253 B body, 255 total", h("FF 09") + b"m" * 253, WillMsg(b"m" * 253)),
    ("WILLMSG 254 B body, 258 total", h("01 01 02 09") + b"m" * 254, WillMsg(b"m" * 254)),
    (
        "REGISTER 300-char name, long form",
        h("01 01 34 0A 00 00 00 02") + b"t" * 300,
        Register(0, 2, "t" * 300),
    ),
    (
        "PINGREQ 260-char ClientId, long form",
        h("01 01 08 16") + b"c" * 260,
        Pingreq("c" * 260),
    ),
    (
        "PUBLISH 65526 B payload, 65535 total (largest frame)",
        h("01 FF FF 0C 00 00 01 00 00") + b"\x55" * 65526,
        Publish(1, b"\x55" * 65526),
    ),
]

# (id, wire bytes, message): non-canonical input accepted on receipt; encode gives other bytes.
LENIENT: list[tuple[str, bytes, Message]] = [
    ("P11 WILLTOPIC with lone Flags byte (Paho)", h("03 07 00"), WillTopic()),
    ("P11 WILLTOPICUPD with lone Flags byte", h("03 1A 00"), WillTopicUpd()),
    ("lone Flags byte with QoS bits set", h("03 07 30"), WillTopic()),
    ("P6 long form carrying a small value: PINGREQ", h("01 00 04 16"), Pingreq()),
    (
        "P6 long form carrying a small value: PUBLISH",
        h("01 00 0D 0C 20 00 01 00 02 32 31 2E 35"),
        Publish(1, b"21.5", Q1, msg_id=2),
    ),
    ("P6 long form DISCONNECT with duration", h("01 00 06 18 01 2C"), Disconnect(300)),
    (
        "PUBLISH Will and CleanSession bits ignored",
        h("08 0C 2C 00 01 00 02 78"),
        Publish(1, b"x", Q1, 2),
    ),
    (
        "CONNECT DUP/QoS/Retain/TopicIdType bits ignored",
        h("07 04 FF 01 00 0A 6E"),
        Connect("n", 10, will=True, clean_session=True),
    ),
    (
        "SUBSCRIBE Retain/Will/CleanSession bits ignored",
        h("07 12 3D 00 04 00 2A"),
        Subscribe(4, PREDEF, topic_id=42, qos=Q1),
    ),
    (
        "SUBACK DUP/Retain/TopicIdType bits ignored",
        h("08 13 B3 00 00 00 03 00"),
        Suback(0, 3, ReturnCode.ACCEPTED, Q1),
    ),
    (
        "UNSUBSCRIBE QoS -1 bits ignored",
        h("07 14 E1 00 06 00 2A"),
        Unsubscribe(6, PREDEF, topic_id=42),
    ),
    ("WILLTOPIC DUP/Will/TopicIdType bits ignored", h("04 07 BF 77"), WillTopic("w", Q1, True)),
    (
        "forwarder Ctrl reserved bits ignored",
        h("05 FE FE AB CD 02 16"),
        Encapsulated(b"\xab\xcd", h("02 16"), 2),
    ),
    (
        "forwarder with a long-form outer header",
        h("01 00 07 FE 00 AB CD 02 16"),
        Encapsulated(b"\xab\xcd", h("02 16")),
    ),
]

PUBLISH_P5 = h("09 0C 00 00 01 00 07 4F 4E")  # QoS 0 with MsgId 7


@pytest.mark.parametrize(("wire", "msg"), [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS])
def test_decode_vector(wire: bytes, msg: Message) -> None:
    """The bytes decode to exactly the message."""
    assert decode(wire) == msg


@pytest.mark.parametrize(("wire", "msg"), [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS])
def test_encode_vector(wire: bytes, msg: Message) -> None:
    """The message encodes to exactly the bytes."""
    assert encode(msg) == wire


@pytest.mark.parametrize(("wire", "msg"), [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS])
def test_frame_length_vector(wire: bytes, msg: Message) -> None:
    """A stream reader learns each frame's full length from its header alone."""
    assert frame_length(wire) == len(wire)
    assert frame_length(wire + b"\x02\x17") == len(wire)


@pytest.mark.parametrize(("wire", "msg"), [v[1:] for v in LENIENT], ids=[v[0] for v in LENIENT])
def test_decode_lenient(wire: bytes, msg: Message) -> None:
    """Non-canonical but legal input decodes; re-encoding gives the canonical form."""
    assert decode(wire) == msg
    assert decode(encode(msg)) == msg


def test_every_type_has_a_vector() -> None:
    """The table covers every MsgType of MQTT-SN 1.2 (0x00-0x1D and 0xFE)."""
    assert {m.TYPE for _, _, m in VECTORS} == set(MsgType)


def test_publish_nonzero_msg_id_at_qos0_is_accepted_on_receipt_only() -> None:
    """P5: lenient on receipt (MsgId kept), strict when sending."""
    msg = decode(PUBLISH_P5)
    assert msg == Publish(1, b"ON", Q0, msg_id=7)
    with pytest.raises(LocalProtocolError, match="MsgId"):
        encode(msg)
    with pytest.raises(LocalProtocolError, match="MsgId"):
        encode(Publish(42, b"1", QM1, msg_id=1, topic_id_type=PREDEF))


def test_reserved_return_code_keeps_its_value() -> None:
    """P16: reserved codes decode to a ReturnCode that is not ACCEPTED and re-encode unchanged."""
    msg = decode(h("07 0D 00 01 00 02 84"))
    assert isinstance(msg, Puback)
    assert msg.return_code == 0x84
    assert msg.return_code != ReturnCode.ACCEPTED
    assert encode(msg) == h("07 0D 00 01 00 02 84")


def test_short_topic_name_round_trip() -> None:
    """A short topic name travels as its two bytes in the TopicId field."""
    msg = decode(h("09 0C 62 74 31 00 00 4F 4E"))
    assert isinstance(msg, Publish)
    assert id_to_short_name(msg.topic_id) == "t1"


def test_decode_accepts_bytearray_and_memoryview() -> None:
    """Transports may hand over mutable buffers; fields still come out as bytes."""
    wire = h("0B 0C 20 00 01 00 02 32 31 2E 35")
    for buf in (bytearray(wire), memoryview(wire)):
        msg = decode(buf)  # type: ignore[arg-type]
        assert isinstance(msg, Publish)
        assert type(msg.data) is bytes
        assert msg == Publish(1, b"21.5", Q1, msg_id=2)


def test_encode_rejects_frames_over_65535() -> None:
    """[§5.2.1] the long-form Length is 16 bits: one byte more cannot be sent."""
    with pytest.raises(LocalProtocolError, match="65535"):
        encode(Publish(1, b"\x00" * 65527))
    with pytest.raises(LocalProtocolError, match="65535"):
        encode(WillMsg(b"\x00" * 65532))


@pytest.mark.parametrize(
    ("msg", "field"),
    [
        (Register(0, 1, ""), "TopicName"),
        (Register(0, 1, "a\x00b"), "TopicName"),
        (Register(0, 1, "bad\udcff"), "TopicName"),
        (Subscribe(1, NORMAL, topic_name="a\x00"), "TopicName"),
        (Publish(0xFFFE, b"", topic_id_type=SHORT), "short topic name"),
        (Subscribe(1, SHORT, topic_id=0x7400), "short topic name"),
        (Encapsulated(b"\x01", b""), "message"),
        (Encapsulated(b"\x01", h("03 16")), "message"),
        (Encapsulated(b"\x01", h("00 16")), "message"),
    ],
)
def test_encode_rejects_what_a_peer_could_not_decode(msg: Message, field: str) -> None:
    """Strict when sending: what decode would reject is refused with LocalProtocolError."""
    with pytest.raises(LocalProtocolError, match=field):
        encode(msg)


def test_encode_rejects_non_messages() -> None:
    """Only MQTT-SN messages can be encoded."""
    with pytest.raises(LocalProtocolError):
        encode(b"\x02\x17")  # type: ignore[arg-type]


def test_decoded_acks_are_shared_or_fresh_but_equal() -> None:
    """Header-only messages may be shared instances; they still compare and hash like new ones."""
    assert decode(h("02 17")) == Pingresp()
    assert hash(decode(h("02 16"))) == hash(Pingreq())
    assert decode(h("04 0F 00 01")) == Pubrec(1)
    assert hash(decode(h("04 0F 00 01"))) == hash(Pubrec(1))


# --- frame_length for stream transports ---


def test_frame_length_needs_the_header() -> None:
    """None until the Length (and, for 0xFE, the inner Length) has arrived."""
    assert frame_length(b"") is None
    assert frame_length(h("0B")) is None
    assert frame_length(h("0B 0C")) == 11
    assert frame_length(h("01")) is None
    assert frame_length(h("01 01")) is None
    assert frame_length(h("01 01 35")) is None
    assert frame_length(h("01 01 35 0C")) == 309
    # Forwarder frame: the outer Length stops at the node id; the inner header decides.
    assert frame_length(h("05 FE 00 AB CD")) is None
    assert frame_length(h("05 FE 00 AB CD 02")) is None
    assert frame_length(h("05 FE 00 AB CD 02 16")) == 7
    assert frame_length(h("04 FE 00 07 01 01")) is None
    assert frame_length(h("04 FE 00 07 01 01 35 0C")) == 4 + 309


def test_frame_length_splits_a_stream() -> None:
    """Consecutive frames in one buffer are cut at the claimed lengths."""
    frames = [wire for _, wire, _ in VECTORS[:20]]
    stream = b"".join(frames)
    out = []
    while stream:
        size = frame_length(stream)
        assert size is not None
        out.append(stream[:size])
        stream = stream[size:]
    assert out == frames


@pytest.mark.parametrize(
    "buf",
    [
        h("00"),
        h("00 0C 00"),
        h("01 00 03 0C"),
        h("01 00 00 0C"),
        h("02 FE 00 02 16"),
        h("05 FE 00 AB CD 00"),
    ],
    ids=["zero", "zero-with-more", "long-3", "long-0", "encapsulation-without-ctrl", "inner-zero"],
)
def test_frame_length_rejects_unframeable_headers(buf: bytes) -> None:
    """A Length that can never be right cannot be waited for: RemoteProtocolError."""
    with pytest.raises(RemoteProtocolError, match="Length"):
        frame_length(buf)


def test_encode_wraps_wrong_field_types() -> None:
    """A field of the wrong type (bypassing the constructor) still gives LocalProtocolError."""
    msg = Publish(1, b"x")
    object.__setattr__(msg, "data", "not bytes")
    with pytest.raises(LocalProtocolError, match="PUBLISH"):
        encode(msg)


def test_fast_construction_is_active() -> None:
    """The hot-path builders did not fall back to the constructors (field lists still match)."""
    from gateway.protocol import codec

    for build in (codec._make_publish, codec._make_puback, codec._make_pubrec):
        assert not isinstance(build, type), "messages.py fields changed: update codec builders"

"""Cross-check with an independent codec: scapy's ``contrib.mqttsn`` (test-only dependency).

Both ways for every type scapy knows: what we encode, scapy dissects to the same fields; what
scapy builds from those fields, we decode to the same message.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
)
from tests.protocol.strategies import BY_TYPE

logging.getLogger("scapy").setLevel(logging.ERROR)  # scapy warns about unrelated layers on import
import scapy.contrib.mqttsn as mqttsn  # noqa: E402 - after silencing scapy's import warnings

# Our class -> scapy layer; header-only messages have a layer with no fields.
LAYERS: dict[type[Message], Any] = {
    Advertise: mqttsn.MQTTSNAdvertise,
    SearchGw: mqttsn.MQTTSNSearchGW,
    GwInfo: mqttsn.MQTTSNGwInfo,
    Connect: mqttsn.MQTTSNConnect,
    Connack: mqttsn.MQTTSNConnack,
    WillTopicReq: mqttsn.MQTTSNWillTopicReq,
    WillTopic: mqttsn.MQTTSNWillTopic,
    WillMsgReq: mqttsn.MQTTSNWillMsgReq,
    WillMsg: mqttsn.MQTTSNWillMsg,
    Register: mqttsn.MQTTSNRegister,
    Regack: mqttsn.MQTTSNRegack,
    Publish: mqttsn.MQTTSNPublish,
    Puback: mqttsn.MQTTSNPuback,
    Pubcomp: mqttsn.MQTTSNPubcomp,
    Pubrec: mqttsn.MQTTSNPubrec,
    Pubrel: mqttsn.MQTTSNPubrel,
    Subscribe: mqttsn.MQTTSNSubscribe,
    Suback: mqttsn.MQTTSNSuback,
    Unsubscribe: mqttsn.MQTTSNUnsubscribe,
    Unsuback: mqttsn.MQTTSNUnsuback,
    Pingreq: mqttsn.MQTTSNPingReq,
    Pingresp: mqttsn.MQTTSNPingResp,
    Disconnect: mqttsn.MQTTSNDisconnect,
    WillTopicUpd: mqttsn.MQTTSNWillTopicUpd,
    WillTopicResp: mqttsn.MQTTSNWillTopicResp,
    WillMsgUpd: mqttsn.MQTTSNWillMsgUpd,
    WillMsgResp: mqttsn.MQTTSNWillMsgResp,
    Encapsulated: mqttsn.MQTTSNEncaps,
}


def _topic_fields(tit: TopicIdType, name: str, topic_id: int) -> dict[str, Any]:
    if tit is TopicIdType.NORMAL:
        return {"topic_name": name.encode()}
    if tit is TopicIdType.SHORT_NAME:
        return {"short_topic": topic_id.to_bytes(2, "big")}
    return {"tid": topic_id}


def scapy_fields(msg: Message) -> dict[str, Any]:
    """The field values scapy's layer for ``msg`` must hold (scapy's names, wire values)."""
    match msg:
        case Advertise(gw_id, duration):
            return {"gw_id": gw_id, "duration": duration}
        case SearchGw(radius):
            return {"radius": radius}
        case GwInfo(gw_id, gw_add):
            return {"gw_id": gw_id, "gw_addr": gw_add}
        case Connect(client_id, duration, will, clean):
            return {
                "will": int(will),
                "cleansess": int(clean),
                "prot_id": 1,
                "duration": duration,
                "client_id": client_id.encode(),
            }
        case Connack(rc) | WillTopicResp(rc) | WillMsgResp(rc):
            return {"return_code": int(rc)}
        case WillTopic(topic, qos, retain) | WillTopicUpd(topic, qos, retain):
            return {"qos": qos.wire_bits >> 5, "retain": int(retain), "will_topic": topic.encode()}
        case WillMsg(data) | WillMsgUpd(data):
            return {"will_msg": data}
        case Register(topic_id, msg_id, name):
            return {"tid": topic_id, "mid": msg_id, "topic_name": name.encode()}
        case Regack(topic_id, msg_id, rc) | Puback(topic_id, msg_id, rc):
            return {"tid": topic_id, "mid": msg_id, "return_code": int(rc)}
        case Publish(topic_id, data, qos, msg_id, tit, dup, retain):
            return {
                "dup": int(dup),
                "qos": qos.wire_bits >> 5,
                "retain": int(retain),
                "tid_type": int(tit),
                "tid": topic_id,
                "mid": msg_id,
                "data": data,
            }
        case Pubcomp(msg_id) | Pubrec(msg_id) | Pubrel(msg_id) | Unsuback(msg_id):
            return {"mid": msg_id}
        case Subscribe(msg_id, tit, name, topic_id, qos, dup):
            fields = {"dup": int(dup), "qos": qos.wire_bits >> 5, "tid_type": int(tit)}
            return fields | {"mid": msg_id} | _topic_fields(tit, name, topic_id)
        case Suback(topic_id, msg_id, rc, qos):
            return {
                "qos": qos.wire_bits >> 5,
                "tid": topic_id,
                "mid": msg_id,
                "return_code": int(rc),
            }
        case Unsubscribe(msg_id, tit, name, topic_id):
            return {"tid_type": int(tit), "mid": msg_id} | _topic_fields(tit, name, topic_id)
        case Pingreq(client_id):
            return {"client_id": (client_id or "").encode()}
        case Disconnect(duration):
            return {"duration": duration}
        case Encapsulated(node_id, _, radius):
            return {"radius": radius, "w_node_id": node_id}
        case WillTopicReq() | WillMsgReq() | Pingresp():
            return {}
    raise AssertionError(f"no scapy mapping for {msg!r}")


def scapy_build(msg: Message) -> bytes:
    """Let scapy build ``msg`` from its fields alone."""
    layer = LAYERS[type(msg)]
    fields = scapy_fields(msg)
    if isinstance(msg, Disconnect) and msg.duration is None:
        # P24: scapy 2.8.0 builds a bare DISCONNECT as `02 18 00 00` unless told len=2.
        return bytes(mqttsn.MQTTSN(len=2, type=msg.TYPE) / layer())
    if isinstance(msg, Encapsulated):
        inner = mqttsn.MQTTSN(msg.message)
        return bytes(mqttsn.MQTTSN(type=msg.TYPE) / layer(**fields) / inner)
    return bytes(mqttsn.MQTTSN(type=msg.TYPE) / layer(**fields))


def assert_scapy_dissects(msg: Message, wire: bytes) -> None:
    """scapy reads ``wire`` as ``msg``: same type, Length and every field."""
    pkt = mqttsn.MQTTSN(wire)
    assert pkt.type == msg.TYPE
    expected = scapy_fields(msg)
    layer = LAYERS[type(msg)]
    if isinstance(msg, Encapsulated):
        assert pkt.len == 3 + len(msg.wireless_node_id)  # [§5.5] outer Length stops at node id
        assert bytes(pkt[layer].payload) == msg.message
    else:
        assert pkt.len == len(wire)
    if pkt.haslayer(layer):
        got = pkt[layer]
        for name, value in expected.items():
            assert got.getfieldval(name) == value, (name, got.getfieldval(name), value)
    else:
        # scapy adds no layer for an empty body: every field must be empty or absent.
        assert len(wire) in (2, 4) and wire[-1 if len(wire) == 2 else 3] == msg.TYPE
        assert all(v in (None, b"", 0) for v in expected.values()), expected


EXAMPLES: list[Message] = [
    Advertise(1, 900),
    SearchGw(2),
    GwInfo(1),
    GwInfo(7, b"\x12\x34"),
    Connect("node1", 60),
    Connect("n", 0xFFFF, will=True, clean_session=False),
    Connack(),
    WillTopicReq(),
    WillTopic("a/b", QoS.AT_LEAST_ONCE, retain=True),
    WillTopic(),
    WillMsgReq(),
    WillMsg(b"dead"),
    Register(0, 1, "sensors/t"),
    Regack(1, 1),
    Publish(1, b"21.5", QoS.AT_LEAST_ONCE, 2),
    Publish(42, b"1", QoS.MINUS_ONE, 0, TopicIdType.PREDEFINED, dup=True, retain=True),
    Publish(0x7431, b"ON", topic_id_type=TopicIdType.SHORT_NAME),
    Publish(1, b"A" * 300),
    Puback(1, 2),
    Pubcomp(7),
    Pubrec(8),
    Pubrel(9),
    Subscribe(3, topic_name="sensors/#"),
    Subscribe(4, TopicIdType.PREDEFINED, topic_id=42, qos=QoS.EXACTLY_ONCE, dup=True),
    Subscribe(5, TopicIdType.SHORT_NAME, topic_id=0x7431),
    Suback(0, 3),
    Unsubscribe(6, topic_name="a/+"),
    Unsubscribe(6, TopicIdType.PREDEFINED, topic_id=42),
    Unsuback(6),
    Pingreq(),
    Pingreq("node1"),
    Pingresp(),
    Disconnect(),
    Disconnect(300),
    WillTopicUpd("w"),
    WillTopicUpd(),
    WillTopicResp(),
    WillMsgUpd(b"bye"),
    WillMsgResp(),
    Encapsulated(b"\xab\xcd", bytes.fromhex("02 16")),
    Encapsulated(b"\x01" * 8, encode(Publish(1, b"A" * 300)), 3),
]


def test_examples_cover_every_scapy_layer() -> None:
    """Every message type scapy knows is exercised by the example list."""
    assert {type(m) for m in EXAMPLES} == set(LAYERS)
    assert {m.TYPE for m in EXAMPLES} == set(MsgType)


@pytest.mark.parametrize("msg", EXAMPLES, ids=repr)
def test_scapy_reads_what_we_encode(msg: Message) -> None:
    """Our bytes dissect in scapy to the same fields."""
    assert_scapy_dissects(msg, encode(msg))


@pytest.mark.parametrize("msg", EXAMPLES, ids=repr)
def test_we_read_what_scapy_builds(msg: Message) -> None:
    """scapy's bytes, built from the same fields, decode to the same message."""
    assert decode(scapy_build(msg)) == msg


@pytest.mark.parametrize("msg_type", list(BY_TYPE), ids=lambda t: t.name)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_messages_agree_with_scapy(msg_type: MsgType, data: st.DataObject) -> None:
    """Random messages of every type: both directions agree (scapy is slow, so few examples)."""
    msg = data.draw(BY_TYPE[msg_type])
    assert_scapy_dissects(msg, encode(msg))
    assert decode(scapy_build(msg)) == msg

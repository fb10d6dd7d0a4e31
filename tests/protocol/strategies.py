"""Hypothesis strategies: one per MQTT-SN message type, producing messages the codec can encode."""

from __future__ import annotations

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
    encode,
    short_name_to_id,
)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
return_codes = u8.map(ReturnCode)  # reserved values included (P16)
qos012 = st.sampled_from([QoS.AT_MOST_ONCE, QoS.AT_LEAST_ONCE, QoS.EXACTLY_ONCE])
# Payloads straddle the 255/256 boundary between the short and the long Length form.
payloads = st.one_of(st.binary(max_size=40), st.binary(min_size=240, max_size=300))

# Strings as MQTT allows them: UTF-8 without surrogates and without U+0000.
_chars = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
texts = st.one_of(
    st.text(_chars, min_size=1, max_size=30),
    st.text(_chars, min_size=250, max_size=280),
)

# A short topic name is two bytes of UTF-8: two ASCII characters or one from U+0080-U+07FF.
_ascii = st.characters(min_codepoint=1, max_codepoint=0x7F)
short_names = st.one_of(
    st.tuples(_ascii, _ascii).map("".join),
    st.characters(min_codepoint=0x80, max_codepoint=0x7FF),
)
short_ids = short_names.map(short_name_to_id)


@st.composite
def publishes(draw: st.DrawFn) -> Publish:
    """PUBLISH of every QoS (incl. -1) and TopicIdType, MsgId 0 where the spec says so."""
    qos = draw(st.sampled_from(list(QoS)))
    if qos is QoS.MINUS_ONE:  # [§6.8] only pre-defined ids or short names
        tit = draw(st.sampled_from([TopicIdType.PREDEFINED, TopicIdType.SHORT_NAME]))
    else:
        tit = draw(st.sampled_from(list(TopicIdType)))
    topic_id = draw(short_ids if tit is TopicIdType.SHORT_NAME else u16)
    msg_id = draw(u16) if qos > 0 else 0
    return Publish(
        topic_id,
        draw(payloads),
        qos,
        msg_id,
        tit,
        dup=draw(st.booleans()),
        retain=draw(st.booleans()),
    )


def _topic_ref(draw: st.DrawFn) -> tuple[TopicIdType, str, int]:
    tit = draw(st.sampled_from(list(TopicIdType)))
    if tit is TopicIdType.NORMAL:
        return tit, draw(texts), 0
    return tit, "", draw(short_ids if tit is TopicIdType.SHORT_NAME else u16)


@st.composite
def subscribes(draw: st.DrawFn) -> Subscribe:
    """SUBSCRIBE by name, pre-defined id or short name."""
    tit, name, topic_id = _topic_ref(draw)
    return Subscribe(draw(u16), tit, name, topic_id, draw(qos012), draw(st.booleans()))


@st.composite
def unsubscribes(draw: st.DrawFn) -> Unsubscribe:
    """UNSUBSCRIBE by name, pre-defined id or short name."""
    tit, name, topic_id = _topic_ref(draw)
    return Unsubscribe(draw(u16), tit, name, topic_id)


def _will_topics(cls: type[WillTopic | WillTopicUpd]) -> st.SearchStrategy[Message]:
    # The empty form carries no flags, so only the default QoS/retain survive a round trip.
    return st.one_of(
        st.just(cls()),
        st.builds(cls, texts, qos012, st.booleans()),
    )


# Every message type except the forwarder encapsulation, keyed by MsgType.
PLAIN: dict[MsgType, st.SearchStrategy[Message]] = {
    MsgType.ADVERTISE: st.builds(Advertise, u8, u16),
    MsgType.SEARCHGW: st.builds(SearchGw, u8),
    MsgType.GWINFO: st.builds(GwInfo, u8, st.binary(max_size=10)),
    MsgType.CONNECT: st.builds(Connect, texts, u16, st.booleans(), st.booleans()),
    MsgType.CONNACK: st.builds(Connack, return_codes),
    MsgType.WILLTOPICREQ: st.just(WillTopicReq()),
    MsgType.WILLTOPIC: _will_topics(WillTopic),
    MsgType.WILLMSGREQ: st.just(WillMsgReq()),
    MsgType.WILLMSG: st.builds(WillMsg, payloads),
    MsgType.REGISTER: st.builds(Register, u16, u16, texts),
    MsgType.REGACK: st.builds(Regack, u16, u16, return_codes),
    MsgType.PUBLISH: publishes(),
    MsgType.PUBACK: st.builds(Puback, u16, u16, return_codes),
    MsgType.PUBCOMP: st.builds(Pubcomp, u16),
    MsgType.PUBREC: st.builds(Pubrec, u16),
    MsgType.PUBREL: st.builds(Pubrel, u16),
    MsgType.SUBSCRIBE: subscribes(),
    MsgType.SUBACK: st.builds(Suback, u16, u16, return_codes, qos012),
    MsgType.UNSUBSCRIBE: unsubscribes(),
    MsgType.UNSUBACK: st.builds(Unsuback, u16),
    MsgType.PINGREQ: st.builds(Pingreq, st.none() | texts),
    MsgType.PINGRESP: st.just(Pingresp()),
    MsgType.DISCONNECT: st.builds(Disconnect, st.none() | u16),
    MsgType.WILLTOPICUPD: _will_topics(WillTopicUpd),
    MsgType.WILLTOPICRESP: st.builds(WillTopicResp, return_codes),
    MsgType.WILLMSGUPD: st.builds(WillMsgUpd, payloads),
    MsgType.WILLMSGRESP: st.builds(WillMsgResp, return_codes),
}

plain_messages: st.SearchStrategy[Message] = st.one_of(*PLAIN.values())

encapsulated: st.SearchStrategy[Message] = st.builds(
    Encapsulated,
    st.binary(max_size=252),
    plain_messages.map(encode),
    st.integers(0, 3),
)

BY_TYPE: dict[MsgType, st.SearchStrategy[Message]] = {**PLAIN, MsgType.ENCAPSULATED: encapsulated}

messages: st.SearchStrategy[Message] = st.one_of(*BY_TYPE.values())

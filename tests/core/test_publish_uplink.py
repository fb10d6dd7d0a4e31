"""PUBLISH from nodes: QoS -1/0/1/2, acks only after the broker's, duplicates [§6.6, §6.8]."""

from __future__ import annotations

from gateway.core import PublishUpstream, SendFrame
from gateway.core.settings import CoreSettings
from gateway.protocol.constants import QoS, ReturnCode, TopicIdType
from gateway.protocol.messages import (
    Connect,
    Disconnect,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Regack,
    Register,
    WillMsg,
    WillTopic,
    short_name_to_id,
)
from tests.core.helpers import A1, A2, Driver

PRE = TopicIdType.PREDEFINED
SHORT = TopicIdType.SHORT_NAME
Q1 = QoS.AT_LEAST_ONCE
Q2 = QoS.EXACTLY_ONCE


def registered(d: Driver, name: str = "a/b") -> int:
    """Connect n1 at A1 and register ``name``; its topic id."""
    d.connect(A1, "n1")
    (frame,) = d.rx(A1, Register(0, 1, name))
    assert isinstance(frame, SendFrame) and isinstance(frame.message, Regack)
    return frame.message.topic_id


def test_qos_minus_one_predefined_without_session() -> None:
    """QoS -1 with a pre-defined id from an unknown address is published as QoS 0 [§6.8]."""
    d = Driver(CoreSettings(predefined={7: "pre/seven"}))
    out = d.rx(A1, Publish(7, b"v", QoS.MINUS_ONE, 0, PRE, retain=True), 0.0)
    assert out == [PublishUpstream(None, "pre/seven", b"v", 0, True)]
    assert d.core.sessions == {}


def test_qos_minus_one_short_name_without_session() -> None:
    """QoS -1 with a short topic name needs no session either."""
    d = Driver()
    out = d.rx(A1, Publish(short_name_to_id("t1"), b"ON", QoS.MINUS_ONE, 0, SHORT), 0.0)
    assert out == [PublishUpstream(None, "t1", b"ON", 0, False)]


def test_qos_minus_one_unknown_predefined_id_is_dropped_and_counted() -> None:
    """Nothing can be reported back for an unknown pre-defined id at QoS -1: drop, count."""
    d = Driver(CoreSettings(predefined={7: "pre/seven"}))
    assert d.rx(A1, Publish(8, b"v", QoS.MINUS_ONE, 0, PRE), 0.0) == []
    assert d.core.counters["minus_one_unknown_topic"] == 1


def test_qos_minus_one_from_a_connected_node_carries_its_client_id() -> None:
    """QoS -1 from an address with a session is attributed to that node (template applies)."""
    d = Driver(CoreSettings(predefined={7: "t"}, uplink_topic_template="n/{client_id}/{topic}"))
    d.connect(A1, "n1")
    out = d.rx(A1, Publish(7, b"v", QoS.MINUS_ONE, 0, PRE), 1.0)
    assert out == [PublishUpstream("n1", "n/n1/t", b"v", 0, False)]


def test_qos0_publish() -> None:
    """QoS 0: PublishUpstream, no token, no answer to the node."""
    d = Driver()
    topic_id = registered(d)
    out = d.rx(A1, Publish(topic_id, b"v", retain=True), 1.0)
    assert out == [PublishUpstream("n1", "a/b", b"v", 0, True, None)]


def test_qos1_puback_only_after_the_broker_acked() -> None:
    """QoS 1: PublishUpstream with a token; PUBACK only after on_publish_done(token, True)."""
    d = Driver()
    topic_id = registered(d)
    out = d.rx(A1, Publish(topic_id, b"v", Q1, 42), 1.0)
    assert out == [PublishUpstream("n1", "a/b", b"v", 1, False, 1)]
    assert d.done(1, True, 2.0) == [SendFrame(A1, Puback(topic_id, 42))]
    assert d.done(1, True, 2.0) == []  # a token is reported once
    assert d.session("n1").uplink == {}


def test_qos1_broker_failure_gives_puback_congestion() -> None:
    """on_publish_done(False) -> PUBACK rejected: congestion [§6.6]."""
    d = Driver()
    topic_id = registered(d)
    d.rx(A1, Publish(topic_id, b"v", Q1, 42), 1.0)
    out = d.done(1, False, 2.0)
    assert out == [SendFrame(A1, Puback(topic_id, 42, ReturnCode.REJECTED_CONGESTION))]
    assert d.core.counters["uplink_refused_congestion"] == 1


def test_qos1_duplicate_while_broker_pending_is_not_published_twice() -> None:
    """A DUP QoS 1 PUBLISH whose first copy the broker still holds is not published again."""
    d = Driver()
    topic_id = registered(d)
    d.rx(A1, Publish(topic_id, b"v", Q1, 42), 1.0)
    assert d.rx(A1, Publish(topic_id, b"v", Q1, 42, dup=True), 11.0) == []
    assert d.done(1, True, 12.0) == [SendFrame(A1, Puback(topic_id, 42))]


def test_qos2_flow() -> None:
    """QoS 2: PUBREC only after the broker ack; PUBREL -> PUBCOMP; PUBREL again -> PUBCOMP."""
    d = Driver()
    topic_id = registered(d)
    assert d.rx(A1, Publish(topic_id, b"v", Q2, 9), 1.0) == [
        PublishUpstream("n1", "a/b", b"v", 2, False, 1)
    ]
    assert d.rx(A1, Pubrel(9), 1.5) == []  # too early: the broker has not taken it yet
    assert d.done(1, True, 2.0) == [SendFrame(A1, Pubrec(9))]
    assert d.rx(A1, Pubrel(9), 3.0) == [SendFrame(A1, Pubcomp(9))]
    assert d.rx(A1, Pubrel(9), 4.0) == [SendFrame(A1, Pubcomp(9))]
    assert d.session("n1").uplink == {}


def test_qos2_dup_before_and_after_broker_ack_publishes_once() -> None:
    """DUP copies of a QoS 2 PUBLISH never publish twice; after the ack they get PUBREC again."""
    d = Driver()
    topic_id = registered(d)
    first = d.rx(A1, Publish(topic_id, b"v", Q2, 9), 1.0)
    assert len(d.uplinks(first)) == 1
    assert d.rx(A1, Publish(topic_id, b"v", Q2, 9, dup=True), 2.0) == []
    assert d.done(1, True, 3.0) == [SendFrame(A1, Pubrec(9))]
    assert d.rx(A1, Publish(topic_id, b"v", Q2, 9, dup=True), 4.0) == [SendFrame(A1, Pubrec(9))]
    assert d.rx(A1, Pubrel(9), 5.0) == [SendFrame(A1, Pubcomp(9))]
    assert d.core.counters["uplink_duplicate"] == 2


def test_qos2_broker_failure_gives_puback_congestion() -> None:
    """A QoS 2 PUBLISH the broker did not take is answered with PUBACK congestion."""
    d = Driver()
    topic_id = registered(d)
    d.rx(A1, Publish(topic_id, b"v", Q2, 9), 1.0)
    assert d.done(1, False, 2.0) == [
        SendFrame(A1, Puback(topic_id, 9, ReturnCode.REJECTED_CONGESTION))
    ]


def test_unknown_topic_id_gets_puback_invalid_at_qos0_and_qos1() -> None:
    """PUBACK 0x02 for an unknown normal or pre-defined id, QoS 0 included (P25)."""
    d = Driver()
    registered(d)
    for qos, msg_id in ((QoS.AT_MOST_ONCE, 0), (Q1, 5)):
        out = d.rx(A1, Publish(99, b"v", qos, msg_id), 1.0)
        assert out == [SendFrame(A1, Puback(99, msg_id, ReturnCode.REJECTED_INVALID_TOPIC_ID))]
    out = d.rx(A1, Publish(3, b"v", Q1, 6, PRE), 1.0)
    assert out == [SendFrame(A1, Puback(3, 6, ReturnCode.REJECTED_INVALID_TOPIC_ID))]
    assert d.core.counters["publish_invalid_topic_id"] == 3


def test_publish_from_unknown_address_gets_disconnect() -> None:
    """QoS 0/1 PUBLISH from an address without a session: DISCONNECT [§6.12]."""
    d = Driver()
    assert d.rx(A2, Publish(1, b"v"), 0.0) == [SendFrame(A2, Disconnect())]


def test_uplink_topic_template_with_client_id() -> None:
    """uplink_topic_template puts the node's ClientId into the upstream topic."""
    d = Driver(CoreSettings(uplink_topic_template="nodes/{client_id}/{topic}"))
    topic_id = registered(d)
    out = d.rx(A1, Publish(topic_id, b"v", Q1, 1), 1.0)
    assert out == [PublishUpstream("n1", "nodes/n1/a/b", b"v", 1, False, 1)]


def test_uplink_template_refuses_client_ids_that_break_the_topic() -> None:
    """With {client_id} in the topic, a ClientId with a wildcard or NUL is refused at CONNECT."""
    from gateway.protocol.messages import Connack

    d = Driver(CoreSettings(uplink_topic_template="nodes/{client_id}/{topic}"))
    for bad in ("a+", "#", "x\x00"):
        out = d.rx(A1, Connect(bad, 60), 0.0)
        assert out == [SendFrame(A1, Connack(ReturnCode.REJECTED_NOT_SUPPORTED))]
        assert bad not in d.core.sessions
    plain = Driver()
    assert plain.rx(A1, Connect("a+", 60), 0.0) == [SendFrame(A1, Connack())]


def test_uplink_template_is_validated() -> None:
    """A template with an unknown placeholder fails at settings time, not at each publish."""
    import pytest

    with pytest.raises(ValueError, match="uplink_topic_template"):
        CoreSettings(uplink_topic_template="{gateway}/{topic}")


def test_too_many_pending_uplinks_get_congestion() -> None:
    """QoS 1/2 the broker has not acked are bounded per node; beyond: PUBACK congestion."""
    d = Driver()
    topic_id = registered(d)
    for msg_id in range(1, 33):
        assert len(d.rx(A1, Publish(topic_id, b"v", Q1, msg_id), 1.0)) == 1
    out = d.rx(A1, Publish(topic_id, b"v", Q1, 33), 1.0)
    assert out == [SendFrame(A1, Puback(topic_id, 33, ReturnCode.REJECTED_CONGESTION))]


def test_stale_token_does_not_ack_a_newer_publish_with_the_same_msg_id() -> None:
    """A broker ack for a publish from before a clean re-CONNECT must not ack a newer one."""
    d = Driver()
    topic_id = registered(d)
    d.rx(A1, Publish(topic_id, b"old", Q1, 5), 1.0)  # token 1, broker slow
    d.rx(A1, Connect("n1", 60), 2.0)  # clean session: pending uplink state dropped
    (regack,) = d.rx(A1, Register(0, 1, "a/b"), 2.0)
    new_id = regack.message.topic_id
    assert d.uplinks(d.rx(A1, Publish(new_id, b"new", Q1, 5), 3.0))[0].token == 2
    assert d.done(1, True, 4.0) == []  # the old publish's ack: nothing to tell the node
    assert d.done(2, True, 5.0) == [SendFrame(A1, Puback(new_id, 5))]


def test_will_token_does_not_ack_a_publish_with_msg_id_zero() -> None:
    """The token of a QoS 1 will must not be mistaken for a node's publish with MsgId 0."""
    d = Driver()
    d.rx(A1, Connect("n1", 10, True, False), 0.0)
    d.rx(A1, WillTopic("w", Q1), 0.0)
    d.rx(A1, WillMsg(b"bye"), 0.0)
    ((_, lost),) = d.run_until(15.0)
    assert lost == [PublishUpstream("n1", "w", b"bye", 1, False, 1)]
    d.rx(A1, Connect("n1", 10, False, False), 16.0)
    (regack,) = d.rx(A1, Register(0, 1, "a/b"), 16.0)
    topic_id = regack.message.topic_id
    d.rx(A1, Publish(topic_id, b"v", Q1, 0), 17.0)  # lenient: MsgId 0 accepted (P5)
    assert d.done(1, True, 18.0) == []  # the will's ack
    assert d.done(2, True, 18.0) == [SendFrame(A1, Puback(topic_id, 0))]

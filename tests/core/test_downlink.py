"""SUBSCRIBE/UNSUBSCRIBE and broker -> node delivery: REGISTER first, one QoS 1/2 in flight."""

from __future__ import annotations

from gateway.core import SendFrame, SubscribeUpstream, UnsubscribeUpstream
from gateway.core.settings import CoreSettings
from gateway.protocol.constants import QoS, ReturnCode, TopicIdType
from gateway.protocol.messages import (
    Disconnect,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Regack,
    Register,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    short_name_to_id,
)
from tests.core.helpers import A1, A2, A3, Driver, frames

Q0 = QoS.AT_MOST_ONCE
Q1 = QoS.AT_LEAST_ONCE
Q2 = QoS.EXACTLY_ONCE
PRE = TopicIdType.PREDEFINED
SHORT = TopicIdType.SHORT_NAME


def test_subscribe_concrete_name_gets_its_id_and_publish_uses_it() -> None:
    """SUBSCRIBE by name -> SUBACK with a registered id; downlink PUBLISH uses it, no REGISTER."""
    d = Driver()
    d.connect(A1, "n1")
    out = d.rx(A1, Subscribe(3, topic_name="a/b", qos=Q1), 1.0)
    assert out == [
        SendFrame(A1, Suback(1, 3, ReturnCode.ACCEPTED, Q1)),
        SubscribeUpstream(None, "a/b", 1),
    ]
    assert d.broker("a/b", b"v", 0, now=2.0) == [SendFrame(A1, Publish(1, b"v"))]


def test_subscribe_by_predefined_id() -> None:
    """SUBSCRIBE by pre-defined id -> SUBACK with that id; PUBLISH with TopicIdType PREDEFINED."""
    d = Driver(CoreSettings(predefined={5: "pre/five"}))
    d.connect(A1, "n1")
    out = d.rx(A1, Subscribe(1, PRE, topic_id=5), 1.0)
    assert out == [SendFrame(A1, Suback(5, 1)), SubscribeUpstream(None, "pre/five", 0)]
    assert d.broker("pre/five", b"v", 0, now=2.0) == [SendFrame(A1, Publish(5, b"v", Q0, 0, PRE))]


def test_subscribe_unknown_predefined_id_is_refused() -> None:
    """SUBSCRIBE to an unknown pre-defined id -> SUBACK 0x02, nothing upstream."""
    d = Driver(CoreSettings(predefined={5: "pre/five"}))
    d.connect(A1, "n1")
    assert d.rx(A1, Subscribe(1, PRE, topic_id=6), 1.0) == [
        SendFrame(A1, Suback(0, 1, ReturnCode.REJECTED_INVALID_TOPIC_ID))
    ]


def test_subscribe_by_short_name() -> None:
    """SUBSCRIBE by short name -> SUBACK id 0; PUBLISH carries the short name."""
    d = Driver()
    d.connect(A1, "n1")
    tid = short_name_to_id("t1")
    out = d.rx(A1, Subscribe(1, SHORT, topic_id=tid, qos=Q1), 1.0)
    assert out == [SendFrame(A1, Suback(0, 1, qos=Q1)), SubscribeUpstream(None, "t1", 1)]
    out = d.broker("t1", b"v", 1, now=2.0)
    assert out == [SendFrame(A1, Publish(tid, b"v", Q1, 1, SHORT))]


def test_name_subscription_to_a_predefined_topic_uses_the_subacked_id() -> None:
    """SUBSCRIBE by the name of a pre-defined topic: PUBLISH uses the id SUBACK gave (§5.10)."""
    d = Driver(CoreSettings(predefined={5: "pre/five"}))
    d.connect(A1, "n1")
    out = d.rx(A1, Subscribe(1, topic_name="pre/five"), 1.0)
    ((suback,),) = [frames(out)]
    assert isinstance(suback, Suback)
    assert d.broker("pre/five", b"v", now=2.0) == [SendFrame(A1, Publish(suback.topic_id, b"v"))]


def test_wildcard_subscription_registers_before_first_publish_per_topic() -> None:
    """Wildcard: SUBACK id 0; REGISTER before the first PUBLISH of each new topic only."""
    d = Driver()
    d.connect(A1, "n1")
    out = d.rx(A1, Subscribe(1, topic_name="s/#", qos=Q0), 1.0)
    assert out == [SendFrame(A1, Suback(0, 1)), SubscribeUpstream(None, "s/#", 0)]
    assert d.broker("s/a", b"1", now=2.0) == [SendFrame(A1, Register(1, 1, "s/a"))]
    # Arriving while the REGISTER is open: waits behind it.
    assert d.broker("s/a", b"2", now=2.5) == []
    assert d.rx(A1, Regack(1, 1), 3.0) == [
        SendFrame(A1, Publish(1, b"1")),
        SendFrame(A1, Publish(1, b"2")),
    ]
    assert d.broker("s/a", b"3", now=4.0) == [SendFrame(A1, Publish(1, b"3"))]
    assert d.broker("s/b", b"4", now=5.0) == [SendFrame(A1, Register(2, 2, "s/b"))]


def test_rejected_regack_drops_the_delivery_and_counts_it() -> None:
    """REGACK rejected: the delivery is dropped (counted), the id forgotten, the queue moves on."""
    d = Driver()
    d.connect(A1, "n1")
    d.rx(A1, Subscribe(1, topic_name="s/#"), 1.0)
    d.broker("s/a", b"1", now=2.0)
    d.broker("s/b", b"2", now=2.0)
    out = d.rx(A1, Regack(1, 1, ReturnCode.REJECTED_INVALID_TOPIC_ID), 3.0)
    assert out == [SendFrame(A1, Register(2, 2, "s/b"))]
    assert d.core.budget.drops["register_rejected"] == 1
    assert d.session("n1").registry.id_for("s/a") is None


def test_qos1_downlink_one_in_flight() -> None:
    """QoS 1: msg ids allocated; the second waits for the first's PUBACK."""
    d = Driver()
    d.connect(A1, "n1")
    d.rx(A1, Subscribe(1, topic_name="a/b", qos=Q1), 1.0)
    assert d.broker("a/b", b"1", 1, now=2.0) == [SendFrame(A1, Publish(1, b"1", Q1, 1))]
    assert d.broker("a/b", b"2", 1, now=2.0) == []
    assert d.rx(A1, Puback(1, 1), 3.0) == [SendFrame(A1, Publish(1, b"2", Q1, 2))]
    assert d.rx(A1, Puback(1, 2), 3.0) == []
    assert d.session("n1").inflight is None


def test_qos_is_the_minimum_of_message_and_subscription() -> None:
    """A QoS 2 message on a QoS 1 subscription goes out at QoS 1; QoS 0 stays QoS 0."""
    d = Driver()
    d.connect(A1, "n1")
    d.rx(A1, Subscribe(1, topic_name="a/b", qos=Q1), 1.0)
    assert frames(d.broker("a/b", b"x", 2, now=2.0)) == [Publish(1, b"x", Q1, 1)]
    d.rx(A1, Puback(1, 1), 2.0)
    assert frames(d.broker("a/b", b"y", 0, now=2.0)) == [Publish(1, b"y")]


def test_qos2_downlink_flow_and_ordering() -> None:
    """QoS 2: PUBLISH -> PUBREC -> PUBREL -> PUBCOMP; the next waits for PUBCOMP."""
    d = Driver()
    d.connect(A1, "n1")
    d.rx(A1, Subscribe(1, topic_name="a/b", qos=Q2), 1.0)
    assert d.broker("a/b", b"1", 2, now=2.0) == [SendFrame(A1, Publish(1, b"1", Q2, 1))]
    assert d.broker("a/b", b"2", 2, now=2.0) == []
    assert d.rx(A1, Pubrec(1), 3.0) == [SendFrame(A1, Pubrel(1))]
    assert d.rx(A1, Pubrec(1), 3.5) == [SendFrame(A1, Pubrel(1))]  # our PUBREL was lost
    assert d.rx(A1, Pubcomp(1), 4.0) == [SendFrame(A1, Publish(1, b"2", Q2, 2))]
    assert d.rx(A1, Pubcomp(1), 4.0) == []  # late duplicate: ignored
    assert d.core.counters["unexpected_ack_pubrel"] == 1


def test_unsolicited_acks_are_ignored() -> None:
    """PUBACK/PUBREC/PUBCOMP/REGACK with unknown MsgIds change nothing."""
    d = Driver()
    d.connect(A1, "n1")
    for msg in (Puback(1, 9), Pubrec(9), Pubcomp(9), Regack(1, 9)):
        assert d.rx(A1, msg, 1.0) == []
    assert d.rx(A2, Puback(1, 9), 1.0) == []


def test_puback_invalid_topic_id_re_registers_and_resends() -> None:
    """PUBACK 0x02 to our PUBLISH: the id is forgotten, REGISTERed again, then re-sent."""
    d = Driver()
    d.connect(A1, "n1")
    d.rx(A1, Subscribe(1, topic_name="a/b", qos=Q1), 1.0)
    d.broker("a/b", b"v", 1, now=2.0)
    out = d.rx(A1, Puback(1, 1, ReturnCode.REJECTED_INVALID_TOPIC_ID), 3.0)
    assert out == [SendFrame(A1, Register(2, 2, "a/b"))]
    assert d.rx(A1, Regack(2, 2), 4.0) == [SendFrame(A1, Publish(2, b"v", Q1, 3))]


def test_unsubscribe_aggregates_upstream() -> None:
    """UNSUBACK always; UnsubscribeUpstream only when the last node leaves the filter."""
    d = Driver()
    d.connect(A1, "n1")
    d.connect(A2, "n2")
    assert d.rx(A1, Subscribe(1, topic_name="x/#", qos=Q1), 1.0)[-1] == SubscribeUpstream(
        None, "x/#", 1
    )
    # A second node on the same filter: re-sent (the broker then replays retained messages).
    assert d.rx(A2, Subscribe(1, topic_name="x/#"), 1.0) == [
        SendFrame(A2, Suback(0, 1)),
        SubscribeUpstream(None, "x/#", 1),
    ]
    assert d.rx(A1, Unsubscribe(2, topic_name="x/#"), 2.0) == [SendFrame(A1, Unsuback(2))]
    assert d.broker("x/y", b"v", now=2.5) == [SendFrame(A2, Register(1, 1, "x/y"))]
    assert d.rx(A2, Unsubscribe(2, topic_name="x/#"), 3.0) == [
        UnsubscribeUpstream(None, "x/#"),
        SendFrame(A2, Unsuback(2)),
    ]
    # Nothing matched: still answered.
    assert d.rx(A2, Unsubscribe(3, topic_name="nothing"), 4.0) == [SendFrame(A2, Unsuback(3))]


def test_unsubscribe_by_predefined_and_short() -> None:
    """UNSUBSCRIBE by pre-defined id and by short name removes those subscriptions."""
    d = Driver(CoreSettings(predefined={5: "pre/five"}))
    d.connect(A1, "n1")
    d.rx(A1, Subscribe(1, PRE, topic_id=5), 1.0)
    d.rx(A1, Subscribe(2, SHORT, topic_id=short_name_to_id("t1")), 1.0)
    assert d.rx(A1, Unsubscribe(3, PRE, topic_id=5), 2.0) == [
        UnsubscribeUpstream(None, "pre/five"),
        SendFrame(A1, Unsuback(3)),
    ]
    assert d.rx(A1, Unsubscribe(4, SHORT, topic_id=short_name_to_id("t1")), 2.0) == [
        UnsubscribeUpstream(None, "t1"),
        SendFrame(A1, Unsuback(4)),
    ]
    assert d.session("n1").subscriptions == {}


def test_subscribe_upstream_uses_the_highest_qos_of_all_nodes() -> None:
    """The shared subscription carries the highest granted QoS; each node gets its own."""
    d = Driver()
    d.connect(A1, "n1")
    d.connect(A2, "n2")
    d.rx(A1, Subscribe(1, topic_name="a/b", qos=Q2), 1.0)
    assert d.rx(A2, Subscribe(1, topic_name="a/b", qos=Q0), 1.0)[-1] == SubscribeUpstream(
        None, "a/b", 2
    )
    out = d.broker("a/b", b"v", 2, now=2.0)
    assert out == [SendFrame(A1, Publish(1, b"v", Q2, 1)), SendFrame(A2, Publish(1, b"v"))]


def test_overlapping_filters_deliver_once_at_the_highest_qos() -> None:
    """Two filters of one node matching a topic: one delivery, at the higher QoS."""
    d = Driver()
    d.connect(A1, "n1")
    d.rx(A1, Subscribe(1, topic_name="a/+", qos=Q0), 1.0)
    d.rx(A1, Subscribe(2, topic_name="a/#", qos=Q1), 1.0)
    assert d.broker("a/b", b"v", 1, now=2.0) == [SendFrame(A1, Register(1, 1, "a/b"))]
    assert d.rx(A1, Regack(1, 1), 2.0) == [SendFrame(A1, Publish(1, b"v", Q1, 2))]


def test_retained_messages_go_only_to_fresh_subscribers() -> None:
    """Retained broker messages reach only nodes that subscribed within retained_window."""
    d = Driver(CoreSettings(retained_window=5.0))
    d.connect(A1, "n1")
    d.connect(A2, "n2")
    d.rx(A1, Subscribe(1, topic_name="r/t"), 0.0)
    out = d.rx(A2, Subscribe(1, topic_name="r/t"), 10.0)
    # SUBACK before the upstream SUBSCRIBE, whose retained answer must come after it (P8).
    assert out == [SendFrame(A2, Suback(1, 1)), SubscribeUpstream(None, "r/t", 0)]
    assert d.broker("r/t", b"kept", 0, retain=True, now=11.0) == [
        SendFrame(A2, Publish(1, b"kept", retain=True))
    ]
    # Past the window, even the fresh subscriber gets no retained copy.
    assert d.broker("r/t", b"kept", 0, retain=True, now=15.5) == []
    # A live (non-retained) message goes to both.
    assert frames(d.broker("r/t", b"live", now=16.0)) == [Publish(1, b"live"), Publish(1, b"live")]


def test_subscribe_limit_per_client() -> None:
    """Beyond max_subscriptions_per_client new filters get SUBACK congestion."""
    d = Driver(CoreSettings(max_subscriptions_per_client=2))
    d.connect(A1, "n1")
    d.rx(A1, Subscribe(1, topic_name="a/#"), 1.0)
    d.rx(A1, Subscribe(2, topic_name="b/#"), 1.0)
    assert d.rx(A1, Subscribe(3, topic_name="c/#"), 1.0) == [
        SendFrame(A1, Suback(0, 3, ReturnCode.REJECTED_CONGESTION))
    ]
    # Re-subscribing a held filter (e.g. DUP) is still fine.
    assert frames(d.rx(A1, Subscribe(4, topic_name="a/#", dup=True), 1.0)) == [Suback(0, 4)]


def test_invalid_filter_is_refused() -> None:
    """A malformed filter -> SUBACK not supported, nothing upstream."""
    d = Driver()
    d.connect(A1, "n1")
    assert d.rx(A1, Subscribe(1, topic_name="a/#/b"), 1.0) == [
        SendFrame(A1, Suback(0, 1, ReturnCode.REJECTED_NOT_SUPPORTED))
    ]


def test_subscribe_from_unknown_address_gets_disconnect() -> None:
    """SUBSCRIBE/UNSUBSCRIBE nobody can attribute: DISCONNECT."""
    d = Driver()
    assert d.rx(A3, Subscribe(1, topic_name="a"), 0.0) == [SendFrame(A3, Disconnect())]
    assert d.rx(A3, Unsubscribe(1, topic_name="a"), 0.0) == [SendFrame(A3, Disconnect())]


def test_broker_message_for_nobody() -> None:
    """A broker message nobody subscribed to produces nothing."""
    d = Driver()
    d.connect(A1, "n1")
    assert d.broker("nobody/here", b"v", 1, now=1.0) == []

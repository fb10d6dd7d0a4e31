"""Keep-alive supervision, DISCONNECT, sleeping nodes and the wake-up flush [§6.11, §6.14]."""

from __future__ import annotations

from gateway.core import PublishUpstream, SendFrame, SessionState
from gateway.protocol.constants import QoS
from gateway.protocol.messages import (
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Regack,
    Register,
    Subscribe,
    WillMsg,
    WillTopic,
)
from tests.core.helpers import A1, A2, Driver, frames

S = SessionState
Q1 = QoS.AT_LEAST_ONCE
Q2 = QoS.EXACTLY_ONCE
WILL = PublishUpstream("n1", "will/n1", b"bye", 0, False)


def connect_with_will(d: Driver, duration: int = 10, clean: bool = True, now: float = 0.0) -> None:
    """n1 at A1 with a QoS 0 will."""
    d.rx(A1, Connect("n1", duration, True, clean), now)
    d.rx(A1, WillTopic("will/n1"), now)
    assert frames(d.rx(A1, WillMsg(b"bye"), now)) == [Connack()]


def test_keepalive_expiry_at_exactly_one_and_a_half_periods() -> None:
    """Silent for 1.5 x keep-alive: lost at that exact instant, will published."""
    d = Driver()
    connect_with_will(d, duration=10)
    assert d.core.next_deadline() == 15.0
    assert d.tick(14.999) == []
    assert d.tick(15.0) == [WILL]
    assert d.state("n1") is None  # clean session: forgotten


def test_keepalive_is_reset_by_any_message() -> None:
    """A message at 1.4 x keep-alive moves the deadline to that time + 1.5 x keep-alive."""
    d = Driver()
    connect_with_will(d, duration=10)
    assert d.rx(A1, Pingreq(), 14.0) == [SendFrame(A1, Pingresp())]
    assert d.run_until(28.999) == []
    assert d.core.next_deadline() == 29.0
    assert d.run_until(29.0) == [(29.0, [WILL])]


def test_long_keepalive_is_found_through_next_deadline() -> None:
    """With a 60 s keep-alive the loss happens at 90 s, ticking only when next_deadline says."""
    d = Driver()
    connect_with_will(d, duration=60)
    assert d.run_until(89.99) == []
    assert d.run_until(1000.0) == [(90.0, [WILL])]


def test_disconnect_replies_and_disconnects() -> None:
    """DISCONNECT -> DISCONNECT; state disconnected; no supervision, no will."""
    d = Driver()
    connect_with_will(d, clean=False)
    assert d.rx(A1, Disconnect(), 1.0) == [SendFrame(A1, Disconnect())]
    assert d.state("n1") is S.DISCONNECTED
    assert d.run_until(1000.0) == []


def test_disconnect_clean_session_forgets_it() -> None:
    """A clean session ends with DISCONNECT: the gateway forgets it."""
    d = Driver()
    d.connect(A1, "n1")
    assert d.rx(A1, Disconnect(), 1.0) == [SendFrame(A1, Disconnect())]
    assert d.core.sessions == {} and d.core.by_address == {}


def test_persistent_session_expires_after_session_expiry() -> None:
    """A disconnected persistent session is forgotten after session_expiry."""
    from gateway.core.settings import CoreSettings

    d = Driver(CoreSettings(session_expiry=100.0))
    d.connect(A1, "n1", clean=False)
    d.rx(A1, Disconnect(), 1.0)
    d.run_until(100.9)
    assert d.state("n1") is S.DISCONNECTED
    d.run_until(101.0)
    assert d.state("n1") is None
    assert d.core.counters["sessions_expired"] == 1


def _asleep_with_subscription(d: Driver, name: str = "a/b", qos: QoS = Q1) -> None:
    d.connect(A1, "n1", duration=10, clean=False)
    d.rx(A1, Subscribe(1, topic_name=name, qos=qos), 0.0)
    assert d.rx(A1, Disconnect(100), 1.0) == [SendFrame(A1, Disconnect())]
    assert d.state("n1") is S.ASLEEP


def test_asleep_node_buffers_broker_messages() -> None:
    """While asleep nothing is sent; messages wait in the node's queue."""
    d = Driver()
    _asleep_with_subscription(d)
    assert d.broker("a/b", b"1", 1, now=2.0) == []
    assert d.broker("a/b", b"2", 0, now=3.0) == []
    assert [x.payload for x in d.session("n1").queue] == [b"1", b"2"]
    assert d.core.budget.used == 2


def test_wake_flushes_one_qos1_at_a_time_then_pingresp_and_asleep() -> None:
    """PINGREQ(ClientId): awake; each QoS 1 acked before the next; PINGRESP; asleep again."""
    d = Driver()
    _asleep_with_subscription(d)
    d.broker("a/b", b"1", 1, now=2.0)
    d.broker("a/b", b"2", 1, now=3.0)
    assert d.rx(A1, Pingreq("n1"), 50.0) == [SendFrame(A1, Publish(1, b"1", Q1, 1))]
    assert d.state("n1") is S.AWAKE
    assert d.rx(A1, Puback(1, 1), 51.0) == [SendFrame(A1, Publish(1, b"2", Q1, 2))]
    assert d.rx(A1, Puback(1, 2), 52.0) == [SendFrame(A1, Pingresp())]
    assert d.state("n1") is S.ASLEEP
    # The sleep timer restarted at the PINGRESP: lost only at 52 + 150.
    assert d.run_until(201.9) == []
    d.run_until(202.0)
    assert d.state("n1") is S.LOST


def test_wake_registers_wildcard_topics_before_publishing() -> None:
    """Buffered messages on wildcard topics: REGISTER, REGACK, PUBLISH, then the next."""
    d = Driver()
    _asleep_with_subscription(d, "s/#", Q2)
    d.broker("s/x", b"1", 0, now=2.0)
    d.broker("s/y", b"2", 2, now=2.0)
    assert d.rx(A1, Pingreq("n1"), 50.0) == [SendFrame(A1, Register(1, 1, "s/x"))]
    assert d.rx(A1, Regack(1, 1), 50.0) == [
        SendFrame(A1, Publish(1, b"1")),
        SendFrame(A1, Register(2, 2, "s/y")),
    ]
    assert d.rx(A1, Regack(2, 2), 50.0) == [SendFrame(A1, Publish(2, b"2", Q2, 3))]
    assert d.rx(A1, Pubrec(3), 50.0) == [SendFrame(A1, Pubrel(3))]
    assert d.rx(A1, Pubcomp(3), 50.0) == [SendFrame(A1, Pingresp())]
    assert d.state("n1") is S.ASLEEP


def test_wake_with_nothing_buffered_gets_pingresp_at_once() -> None:
    """PINGREQ(ClientId) with an empty buffer -> PINGRESP immediately, asleep again."""
    d = Driver()
    _asleep_with_subscription(d)
    assert d.rx(A1, Pingreq("n1"), 50.0) == [SendFrame(A1, Pingresp())]
    assert d.state("n1") is S.ASLEEP


def test_qos0_only_buffer_is_flushed_in_one_go() -> None:
    """QoS 0 needs no acknowledgement: all of them, then PINGRESP, in one answer."""
    d = Driver()
    _asleep_with_subscription(d, qos=QoS.AT_MOST_ONCE)
    d.broker("a/b", b"1", now=2.0)
    d.broker("a/b", b"2", now=2.0)
    assert frames(d.rx(A1, Pingreq("n1"), 50.0)) == [
        Publish(1, b"1"),
        Publish(1, b"2"),
        Pingresp(),
    ]


def test_oversleeping_node_is_lost_and_its_will_published() -> None:
    """No PINGREQ within 1.5 x the sleep duration: lost, will published."""
    d = Driver()
    connect_with_will(d, duration=10, clean=False)
    d.rx(A1, Disconnect(100), 1.0)
    # The heap is lazy: an earlier check (the old keep-alive) may come first; it is a no-op.
    assert d.core.next_deadline() <= 151.0
    assert d.run_until(150.99) == []
    assert d.core.next_deadline() == 151.0
    assert d.run_until(151.0) == [(151.0, [WILL])]
    assert d.state("n1") is S.LOST


def test_wake_from_a_new_address_updates_the_address() -> None:
    """A node waking from another address keeps its session; replies go to the new address."""
    d = Driver()
    _asleep_with_subscription(d)
    d.broker("a/b", b"1", 1, now=2.0)
    assert d.rx(A2, Pingreq("n1"), 50.0) == [SendFrame(A2, Publish(1, b"1", Q1, 1))]
    assert d.core.by_address == {A2: "n1"}
    assert d.rx(A1, Puback(1, 1), 51.0) == []  # the old address means nothing any more
    assert d.rx(A2, Puback(1, 1), 51.0) == [SendFrame(A2, Pingresp())]


def test_new_sleep_duration_while_asleep() -> None:
    """DISCONNECT(d) while asleep adopts the new duration."""
    d = Driver()
    _asleep_with_subscription(d)
    d.rx(A1, Disconnect(10), 5.0)
    assert d.session("n1").sleep_duration == 10.0
    d.run_until(20.0)
    assert d.state("n1") is S.LOST


def test_disconnect_while_asleep_disconnects() -> None:
    """DISCONNECT without duration while asleep -> disconnected."""
    d = Driver()
    _asleep_with_subscription(d)
    assert d.rx(A1, Disconnect(), 5.0) == [SendFrame(A1, Disconnect())]
    assert d.state("n1") is S.DISCONNECTED


def test_sleep_with_message_in_flight_requeues_it() -> None:
    """Going to sleep with an unacknowledged PUBLISH: it is delivered again on wake."""
    d = Driver()
    d.connect(A1, "n1", duration=10, clean=False)
    d.rx(A1, Subscribe(1, topic_name="a/b", qos=Q1), 0.0)
    assert frames(d.broker("a/b", b"1", 1, now=1.0)) == [Publish(1, b"1", Q1, 1)]
    d.rx(A1, Disconnect(100), 2.0)
    assert d.session("n1").inflight is None
    assert d.run_until(50.0) == []  # no retransmission to a sleeping node
    assert frames(d.rx(A1, Pingreq("n1"), 50.0)) == [Publish(1, b"1", Q1, 2)]


def test_live_message_while_awake_waits_for_the_flush() -> None:
    """A broker message arriving while the node is awake is delivered before PINGRESP."""
    d = Driver()
    _asleep_with_subscription(d)
    d.broker("a/b", b"1", 1, now=2.0)
    d.rx(A1, Pingreq("n1"), 50.0)
    assert d.broker("a/b", b"2", 1, now=50.5) == []
    assert frames(d.rx(A1, Puback(1, 1), 51.0)) == [Publish(1, b"2", Q1, 2)]
    assert frames(d.rx(A1, Puback(1, 2), 51.0)) == [Pingresp()]


def test_publish_while_asleep_gets_disconnect() -> None:
    """An asleep node must wake or CONNECT before publishing."""
    d = Driver()
    _asleep_with_subscription(d)
    assert d.rx(A1, Publish(1, b"x", Q1, 3), 5.0) == [SendFrame(A1, Disconnect())]


def test_pingreq_from_disconnected_session_gets_disconnect() -> None:
    """A disconnected node that PINGREQs is told to CONNECT again."""
    d = Driver()
    d.connect(A1, "n1", clean=False)
    d.rx(A1, Disconnect(), 1.0)
    assert d.rx(A1, Pingreq("n1"), 2.0) == [SendFrame(A1, Disconnect())]
    assert d.rx(A1, Pingreq(), 2.0) == [SendFrame(A1, Disconnect())]


def test_unknown_pingreq_is_not_answered() -> None:
    """PINGREQ from an unknown address or ClientId gets no answer (P9)."""
    d = Driver()
    assert d.rx(A1, Pingreq(), 0.0) == []
    assert d.rx(A1, Pingreq("ghost"), 0.0) == []


def test_disconnect_from_unknown_address_is_answered() -> None:
    """DISCONNECT from an unknown address still gets DISCONNECT."""
    d = Driver()
    assert d.rx(A2, Disconnect(), 0.0) == [SendFrame(A2, Disconnect())]


def test_unacknowledged_register_is_sent_again_after_sleep() -> None:
    """A REGISTER the node never acked is not assumed known: after waking it is re-sent."""
    d = Driver()
    _asleep_with_subscription(d, "s/#")
    d.rx(A1, Pingreq("n1"), 2.0)  # wake with nothing buffered; asleep again
    assert frames(d.rx(A1, Connect("n1", 10, False, False), 3.0)) == [Connack()]
    assert d.broker("s/x", b"1", 1, now=4.0) == [SendFrame(A1, Register(1, 1, "s/x"))]
    d.rx(A1, Disconnect(100), 5.0)  # sleeps without answering the REGISTER
    assert frames(d.rx(A1, Pingreq("n1"), 50.0)) == [Register(2, 2, "s/x")]

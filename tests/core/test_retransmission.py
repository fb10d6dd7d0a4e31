"""Gateway retransmission: REGISTER and QoS 1/2 PUBLISH re-sent after T_RETRY, N_RETRY times."""

from __future__ import annotations

from gateway.core import PublishUpstream, SendFrame, SessionState, UnsubscribeUpstream
from gateway.core.settings import CoreSettings
from gateway.protocol.constants import QoS
from gateway.protocol.messages import (
    Connect,
    Puback,
    Publish,
    Pubrec,
    Pubrel,
    Register,
    Subscribe,
    WillMsg,
    WillTopic,
)
from tests.core.helpers import A1, Driver

Q1 = QoS.AT_LEAST_ONCE
Q2 = QoS.EXACTLY_ONCE
WILL = PublishUpstream("n1", "w", b"bye", 0, False)
SETTINGS = CoreSettings(t_retry=10.0, n_retry=3)


def connected(d: Driver, filter_: str, qos: QoS, clean: bool = True) -> None:
    """n1 at A1 with a will, keep-alive long enough not to interfere, subscribed."""
    d.rx(A1, Connect("n1", 600, True, clean), 0.0)
    d.rx(A1, WillTopic("w"), 0.0)
    d.rx(A1, WillMsg(b"bye"), 0.0)
    d.rx(A1, Subscribe(1, topic_name=filter_, qos=qos), 0.0)


def test_publish_retransmitted_with_dup_then_node_lost() -> None:
    """QoS 1 PUBLISH: re-sent at +10, +20, +30 with DUP and the same MsgId; lost at +40."""
    d = Driver(SETTINGS)
    connected(d, "a/b", Q1)
    assert d.broker("a/b", b"v", 1, now=1.0) == [SendFrame(A1, Publish(1, b"v", Q1, 1))]
    dup = SendFrame(A1, Publish(1, b"v", Q1, 1, dup=True))
    assert d.run_until(40.99) == [(11.0, [dup]), (21.0, [dup]), (31.0, [dup])]
    # Lost: will published; the clean session is forgotten with its upstream subscription.
    assert d.run_until(41.0) == [(41.0, [WILL, UnsubscribeUpstream(None, "a/b")])]
    assert d.state("n1") is None
    assert d.core.counters["retransmissions"] == 3


def test_register_retransmitted_then_node_lost() -> None:
    """A gateway REGISTER is re-sent with the same MsgId and TopicId, then the node is lost."""
    d = Driver(SETTINGS)
    connected(d, "s/#", Q1)
    reg = SendFrame(A1, Register(1, 1, "s/x"))
    assert d.broker("s/x", b"v", 1, now=1.0) == [reg]
    assert d.run_until(41.0) == [
        (11.0, [reg]),
        (21.0, [reg]),
        (31.0, [reg]),
        (41.0, [WILL, UnsubscribeUpstream(None, "s/#")]),
    ]


def test_pubrel_retransmitted() -> None:
    """QoS 2: after PUBREC our PUBREL is guarded by T_RETRY too."""
    d = Driver(SETTINGS)
    connected(d, "a/b", Q2)
    d.broker("a/b", b"v", 2, now=1.0)
    assert d.rx(A1, Pubrec(1), 5.0) == [SendFrame(A1, Pubrel(1))]
    rel = SendFrame(A1, Pubrel(1))
    assert d.run_until(45.0) == [
        (15.0, [rel]),
        (25.0, [rel]),
        (35.0, [rel]),
        (45.0, [WILL, UnsubscribeUpstream(None, "a/b")]),
    ]


def test_ack_stops_retransmission() -> None:
    """Once PUBACKed nothing is re-sent."""
    d = Driver(SETTINGS)
    connected(d, "a/b", Q1)
    d.broker("a/b", b"v", 1, now=1.0)
    d.run_until(11.0)
    assert d.rx(A1, Puback(1, 1), 12.0) == []
    assert d.run_until(100.0) == []
    assert d.state("n1") is SessionState.ACTIVE


def test_send_failed_brings_the_retry_forward() -> None:
    """on_send_failed: the in-flight message is retried within a second, not after T_RETRY."""
    d = Driver(SETTINGS)
    connected(d, "a/b", Q1)
    d.broker("a/b", b"v", 1, now=1.0)
    assert d.core.on_send_failed(A1, 1.5) == []
    dup = SendFrame(A1, Publish(1, b"v", Q1, 1, dup=True))
    assert d.run_until(12.5) == [(2.5, [dup]), (12.5, [dup])]
    assert d.core.counters["send_failed"] == 1


def test_send_failed_for_unknown_address_is_counted_only() -> None:
    """A send failure to nobody in particular changes nothing."""
    d = Driver(SETTINGS)
    assert d.core.on_send_failed(A1, 1.0) == []
    assert d.core.next_deadline() is None


def test_lost_persistent_session_keeps_the_unacked_message() -> None:
    """Retries exhausted on a persistent session: the message is kept for the next CONNECT."""
    d = Driver(SETTINGS)
    connected(d, "a/b", Q1, clean=False)
    d.broker("a/b", b"v", 1, now=1.0)
    d.run_until(41.0)
    assert d.state("n1") is SessionState.LOST
    assert [x.payload for x in d.session("n1").queue] == [b"v"]
    out = d.rx(A1, Connect("n1", 600, False, False), 50.0)
    assert [getattr(a, "message", None) for a in out][1] == Register(1, 2, "a/b")

"""Transparent mode: one broker connection per node, CONNACK after the broker's [§4, §6.2]."""

from __future__ import annotations

from gateway.bridge.base import Will
from gateway.core import (
    CloseUpstreamSession,
    OpenUpstreamSession,
    PublishUpstream,
    SendFrame,
    SessionState,
    SubscribeUpstream,
    UnsubscribeUpstream,
)
from gateway.core.settings import CoreSettings, Mode
from gateway.protocol.constants import QoS, ReturnCode
from gateway.protocol.messages import (
    Connack,
    Connect,
    Disconnect,
    Puback,
    Publish,
    Regack,
    Register,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    WillMsg,
    WillMsgReq,
    WillTopic,
    WillTopicReq,
)
from tests.core.helpers import A1, A2, Driver

S = SessionState
Q1 = QoS.AT_LEAST_ONCE
TRANSPARENT = CoreSettings(mode=Mode.TRANSPARENT, t_retry=10.0, n_retry=3)


def up(d: Driver, address: object, cid: str, clean: bool = True, now: float = 0.0) -> None:
    """CONNECT (no will) and the broker's accept."""
    assert d.rx(address, Connect(cid, 10, False, clean), now) == [
        OpenUpstreamSession(cid, clean, None, 10)
    ]
    assert d.core.on_upstream_session(cid, True, 0, now) == [SendFrame(address, Connack())]


def test_connack_only_after_the_upstream_session_is_open() -> None:
    """CONNECT -> OpenUpstreamSession(client_id, clean, will, keepalive); CONNACK after ok."""
    d = Driver(TRANSPARENT)
    assert d.rx(A1, Connect("n1", 30, True, False), 0.0) == [SendFrame(A1, WillTopicReq())]
    assert d.rx(A1, WillTopic("w", Q1, True), 0.0) == [SendFrame(A1, WillMsgReq())]
    assert d.rx(A1, WillMsg(b"bye"), 0.0) == [
        OpenUpstreamSession("n1", False, Will("w", b"bye", 1, True), 30)
    ]
    assert d.state("n1") is S.CONNECTING
    assert d.core.on_upstream_session("n1", True, 0, 1.0) == [SendFrame(A1, Connack())]
    assert d.state("n1") is S.ACTIVE
    assert d.core.on_upstream_session("n1", True, 0, 1.0) == []  # late duplicate


def test_stored_will_is_resupplied_upstream() -> None:
    """CleanSession=0, Will=0: the stored will goes into the new upstream CONNECT (§5.4)."""
    d = Driver(TRANSPARENT)
    d.rx(A1, Connect("n1", 30, True, False), 0.0)
    d.rx(A1, WillTopic("w"), 0.0)
    d.rx(A1, WillMsg(b"bye"), 0.0)
    d.core.on_upstream_session("n1", True, 0, 0.0)
    d.rx(A1, Disconnect(), 1.0)
    assert d.rx(A1, Connect("n1", 30, False, False), 2.0) == [
        OpenUpstreamSession("n1", False, Will("w", b"bye", 0, False), 30)
    ]


def test_broker_refusal_gives_connack_rejected() -> None:
    """on_upstream_session(ok=False): CONNACK congestion (server unavailable) / not supported."""
    d = Driver(TRANSPARENT)
    d.rx(A1, Connect("n1", 10), 0.0)
    assert d.core.on_upstream_session("n1", False, 3, 0.5) == [
        SendFrame(A1, Connack(ReturnCode.REJECTED_CONGESTION))
    ]
    assert d.state("n1") is None
    d.rx(A2, Connect("n2", 10), 1.0)
    assert d.core.on_upstream_session("n2", False, 5, 1.5) == [
        SendFrame(A2, Connack(ReturnCode.REJECTED_NOT_SUPPORTED))
    ]


def test_refusal_keeps_a_persistent_session() -> None:
    """A refused CONNECT (CleanSession=0) keeps the subscriptions and buffered messages."""
    d = Driver(TRANSPARENT)
    up(d, A1, "n1", clean=False)
    d.rx(A1, Subscribe(1, topic_name="a/b", qos=Q1), 0.5)
    d.rx(A1, Disconnect(), 1.0)
    d.rx(A1, Connect("n1", 10, False, False), 2.0)
    d.core.on_upstream_session("n1", False, 3, 2.5)
    assert d.state("n1") is S.DISCONNECTED
    assert d.session("n1").subscriptions == {"a/b": 1}


def test_upstream_that_never_answers_is_closed() -> None:
    """No answer from the broker within the connect timeout: attempt dropped and closed."""
    d = Driver(TRANSPARENT)
    d.rx(A1, Connect("n1", 10), 0.0)
    assert d.run_until(40.0) == [(40.0, [CloseUpstreamSession("n1", fire_will=False)])]
    assert d.state("n1") is None
    assert d.core.on_upstream_session("n1", True, 0, 41.0) == []


def test_subscribe_and_publish_carry_the_client_id() -> None:
    """SubscribeUpstream/PublishUpstream/UnsubscribeUpstream name the node's own connection."""
    d = Driver(TRANSPARENT)
    up(d, A1, "n1")
    up(d, A2, "n2")
    assert d.rx(A1, Subscribe(1, topic_name="a/#", qos=Q1), 1.0) == [
        SendFrame(A1, Suback(0, 1, qos=Q1)),
        SubscribeUpstream("n1", "a/#", 1),
    ]
    assert d.rx(A2, Subscribe(1, topic_name="a/#"), 1.0)[-1] == SubscribeUpstream("n2", "a/#", 0)
    (regack,) = d.rx(A1, Register(0, 2, "up/t"), 1.0)
    assert regack == SendFrame(A1, Regack(1, 2))
    assert d.rx(A1, Publish(1, b"v", Q1, 3), 2.0) == [
        PublishUpstream("n1", "up/t", b"v", 1, False, 1)
    ]
    assert d.done(1, True, 2.5) == [SendFrame(A1, Puback(1, 3))]
    # Not aggregated: each node's connection unsubscribes for itself.
    assert d.rx(A1, Unsubscribe(4, topic_name="a/#"), 3.0) == [
        UnsubscribeUpstream("n1", "a/#"),
        SendFrame(A1, Unsuback(4)),
    ]


def test_broker_message_for_one_client_goes_only_to_it() -> None:
    """on_broker_message(..., client_id=X) delivers to X only, at min(QoS, granted)."""
    d = Driver(TRANSPARENT)
    up(d, A1, "n1")
    up(d, A2, "n2")
    d.rx(A1, Subscribe(1, topic_name="a/b", qos=Q1), 1.0)
    d.rx(A2, Subscribe(1, topic_name="a/b", qos=Q1), 1.0)
    out = d.broker("a/b", b"v", 2, now=2.0, client_id="n2")
    assert out == [SendFrame(A2, Publish(1, b"v", Q1, 1))]
    assert d.broker("a/b", b"v", 1, now=2.0, client_id="ghost") == []


def test_lost_closes_upstream_firing_the_will() -> None:
    """Keep-alive expiry: CloseUpstreamSession(fire_will=True); the broker publishes the will."""
    d = Driver(TRANSPARENT)
    up(d, A1, "n1")
    assert d.run_until(15.0) == [(15.0, [CloseUpstreamSession("n1", fire_will=True)])]


def test_disconnect_closes_upstream_without_will() -> None:
    """DISCONNECT: CloseUpstreamSession(fire_will=False)."""
    d = Driver(TRANSPARENT)
    up(d, A1, "n1")
    assert d.rx(A1, Disconnect(), 1.0) == [
        SendFrame(A1, Disconnect()),
        CloseUpstreamSession("n1", fire_will=False),
    ]


def test_sleep_keeps_the_upstream_session() -> None:
    """DISCONNECT(duration): the node's broker connection stays open while it sleeps."""
    d = Driver(TRANSPARENT)
    up(d, A1, "n1", clean=False)
    assert d.rx(A1, Disconnect(60), 1.0) == [SendFrame(A1, Disconnect())]


def test_connect_from_asleep_clean0_does_not_reopen_upstream() -> None:
    """Resuming from ASLEEP with CleanSession=0: CONNACK at once, the connection is kept (P10)."""
    d = Driver(TRANSPARENT)
    up(d, A1, "n1", clean=False)
    d.rx(A1, Disconnect(60), 1.0)
    assert d.rx(A1, Connect("n1", 10, False, False), 2.0) == [SendFrame(A1, Connack())]

"""CONNECT, the will handshake, clean session extended to will data, keep-alive 0 [§6.2, §6.3]."""

from __future__ import annotations

import pytest

from gateway.core import (
    PublishUpstream,
    SendFrame,
    SessionState,
    SubscribeUpstream,
    UnsubscribeUpstream,
)
from gateway.core.settings import CoreSettings
from gateway.protocol.constants import QoS, ReturnCode
from gateway.protocol.messages import (
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    Publish,
    Register,
    Suback,
    Subscribe,
    WillMsg,
    WillMsgReq,
    WillTopic,
    WillTopicReq,
)
from tests.core.helpers import A1, A2, Driver, frames

S = SessionState


def connect_with_will(
    d: Driver, client_id: str, topic: str, msg: bytes, clean: bool = True, now: float = 0.0
) -> None:
    """Run the full will handshake and assert each step's exact answer."""
    assert d.rx(A1, Connect(client_id, 10, True, clean), now) == [SendFrame(A1, WillTopicReq())]
    assert d.rx(A1, WillTopic(topic, QoS.AT_LEAST_ONCE, True), now) == [SendFrame(A1, WillMsgReq())]
    assert d.rx(A1, WillMsg(msg), now) == [SendFrame(A1, Connack(ReturnCode.ACCEPTED))]


def lose(d: Driver, client_id: str) -> list[PublishUpstream]:
    """Let ``client_id`` go silent until the core declares it lost; the wills it published."""
    session = d.session(client_id)
    until = session.last_rx + session.keepalive * d.core.settings.keepalive_factor
    wills: list[PublishUpstream] = []
    for _, actions in d.run_until(until):
        wills += d.uplinks(actions)
    return wills


def test_connect_without_will_gets_connack() -> None:
    """CONNECT(Will=0) -> CONNACK accepted, nothing else; the session is ACTIVE."""
    d = Driver()
    assert d.rx(A1, Connect("n1", 60, False, True), 0.0) == [
        SendFrame(A1, Connack(ReturnCode.ACCEPTED))
    ]
    assert d.state("n1") is S.ACTIVE
    assert d.core.by_address == {A1: "n1"}


def test_connect_with_will_prompts_topic_then_message() -> None:
    """WILLTOPICREQ, WILLTOPIC -> WILLMSGREQ, WILLMSG -> CONNACK; the will is stored."""
    d = Driver()
    connect_with_will(d, "n1", "will/n1", b"gone")
    session = d.session("n1")
    assert session.state is S.ACTIVE
    assert (session.will.topic, session.will.message, session.will.qos, session.will.retain) == (
        "will/n1",
        b"gone",
        1,
        True,
    )
    assert lose(d, "n1") == [PublishUpstream("n1", "will/n1", b"gone", 1, True, 1)]


def test_state_is_connecting_while_prompting() -> None:
    """Between CONNECT and WILLMSG the node is CONNECTING and may not publish."""
    d = Driver()
    d.rx(A1, Connect("n1", 60, True, True), 0.0)
    assert d.state("n1") is S.CONNECTING
    out = d.rx(A1, Publish(1, b"x", QoS.AT_LEAST_ONCE, 1), 0.1)
    assert out == [SendFrame(A1, Disconnect())]


def test_repeated_willtopic_after_lost_willmsgreq() -> None:
    """A WILLTOPIC repeated while the gateway waits for WILLMSG gets WILLMSGREQ again."""
    d = Driver()
    d.rx(A1, Connect("n1", 60, True, True), 0.0)
    d.rx(A1, WillTopic("w"), 1.0)
    assert d.rx(A1, WillTopic("w"), 2.0) == [SendFrame(A1, WillMsgReq())]
    assert d.rx(A1, WillMsg(b"m"), 3.0) == [SendFrame(A1, Connack())]


def test_empty_willtopic_skips_willmsgreq_and_deletes_the_will() -> None:
    """An empty WILLTOPIC deletes the stored will and goes straight to CONNACK (P11)."""
    d = Driver()
    connect_with_will(d, "n1", "will/n1", b"gone", clean=False)
    d.rx(A1, Disconnect(), 1.0)
    assert d.rx(A1, Connect("n1", 10, True, False), 2.0) == [SendFrame(A1, WillTopicReq())]
    assert d.rx(A1, WillTopic(), 2.0) == [SendFrame(A1, Connack())]
    assert d.session("n1").will is None
    assert lose(d, "n1") == []


def test_willtopic_and_willmsg_outside_the_handshake_are_ignored() -> None:
    """WILLTOPIC/WILLMSG when not prompted change nothing and get no answer."""
    d = Driver()
    d.connect(A1, "n1")
    assert d.rx(A1, WillTopic("x"), 1.0) == []
    assert d.rx(A1, WillMsg(b"m"), 1.0) == []
    assert d.rx(A2, WillTopic("x"), 1.0) == []
    assert d.session("n1").will is None


# Reference §5.4: the four rows of CleanSession x Will.


def _persistent_with_will_and_subscription(d: Driver) -> None:
    connect_with_will(d, "n1", "will/n1", b"old", clean=False)
    out = d.rx(A1, Subscribe(1, topic_name="a/b", qos=QoS.AT_LEAST_ONCE), 0.5)
    assert frames(out) == [Suback(1, 1, ReturnCode.ACCEPTED, QoS.AT_LEAST_ONCE)]
    d.rx(A1, Disconnect(), 1.0)
    assert d.state("n1") is S.DISCONNECTED


def test_clean1_will1_deletes_subscriptions_and_will_then_prompts() -> None:
    """CleanSession=1, Will=1: subscriptions and will data go, a new will is prompted."""
    d = Driver()
    _persistent_with_will_and_subscription(d)
    out = d.rx(A1, Connect("n1", 10, True, True), 2.0)
    # The last node on "a/b" left it: the shared connection unsubscribes too.
    assert out == [UnsubscribeUpstream(None, "a/b"), SendFrame(A1, WillTopicReq())]
    assert d.session("n1").subscriptions == {}
    assert d.session("n1").will is None
    d.rx(A1, WillTopic("will/new"), 2.0)
    d.rx(A1, WillMsg(b"new"), 2.0)
    assert d.broker("a/b", b"p", 1, now=3.0) == []
    assert lose(d, "n1") == [PublishUpstream("n1", "will/new", b"new", 0, False)]


def test_clean1_will0_deletes_subscriptions_and_will() -> None:
    """CleanSession=1, Will=0: everything goes, CONNACK at once, no will when lost."""
    d = Driver()
    _persistent_with_will_and_subscription(d)
    out = d.rx(A1, Connect("n1", 10, False, True), 2.0)
    assert out == [UnsubscribeUpstream(None, "a/b"), SendFrame(A1, Connack())]
    assert d.session("n1").subscriptions == {}
    assert d.session("n1").will is None
    assert d.broker("a/b", b"p", 1, now=3.0) == []
    assert lose(d, "n1") == []


def test_clean0_will1_keeps_subscriptions_and_overwrites_will() -> None:
    """CleanSession=0, Will=1: subscriptions kept; the new will replaces the stored one."""
    d = Driver()
    _persistent_with_will_and_subscription(d)
    assert d.rx(A1, Connect("n1", 10, True, False), 2.0) == [SendFrame(A1, WillTopicReq())]
    d.rx(A1, WillTopic("will/new"), 2.0)
    assert d.rx(A1, WillMsg(b"new"), 2.0) == [SendFrame(A1, Connack())]
    assert d.session("n1").subscriptions == {"a/b": 1}
    # Topic ids must be registered again after a new connection (P3).
    out = d.broker("a/b", b"p", 1, now=3.0)
    assert frames(out) == [Register(1, 1, "a/b")]
    assert lose(d, "n1")[-1] == PublishUpstream("n1", "will/new", b"new", 0, False)


def test_clean0_will0_keeps_the_stored_will_armed() -> None:
    """CleanSession=0, Will=0: the stored will stays armed and is published when lost (P12)."""
    d = Driver()
    _persistent_with_will_and_subscription(d)
    assert d.rx(A1, Connect("n1", 10, False, False), 2.0) == [SendFrame(A1, Connack())]
    assert d.session("n1").subscriptions == {"a/b": 1}
    assert lose(d, "n1") == [PublishUpstream("n1", "will/n1", b"old", 1, True, 1)]
    assert d.state("n1") is S.LOST  # persistent: kept for a later CONNECT


def test_second_connect_on_a_live_session_reruns_the_connect() -> None:
    """A CONNECT while ACTIVE (e.g. retransmitted) is answered again with CONNACK (P10)."""
    d = Driver()
    d.connect(A1, "n1")
    out = d.rx(A1, Subscribe(1, topic_name="a/#"), 1.0)
    assert out[-1] == SubscribeUpstream(None, "a/#", 0)
    assert d.rx(A1, Connect("n1", 60, False, False), 2.0) == [SendFrame(A1, Connack())]
    assert d.state("n1") is S.ACTIVE
    assert d.session("n1").subscriptions == {"a/#": 0}


def test_connect_from_asleep_clean0_resumes_and_flushes_after_connack() -> None:
    """CONNECT(CleanSession=0) from ASLEEP: CONNACK, then the buffered messages (P10)."""
    d = Driver()
    d.connect(A1, "n1", clean=False)
    d.rx(A1, Subscribe(1, topic_name="a/b", qos=QoS.AT_LEAST_ONCE), 0.0)
    d.rx(A1, Disconnect(100), 1.0)
    assert d.broker("a/b", b"1", 1, now=2.0) == []
    assert d.broker("a/b", b"2", 1, now=3.0) == []
    out = d.rx(A1, Connect("n1", 60, False, False), 4.0)
    # Resumed: the id from the SUBACK is still valid, no REGISTER needed.
    assert frames(out) == [Connack(), Publish(1, b"1", QoS.AT_LEAST_ONCE, 1)]
    assert d.state("n1") is S.ACTIVE
    from gateway.protocol.messages import Puback

    assert frames(d.rx(A1, Puback(1, 1), 5.0)) == [Publish(1, b"2", QoS.AT_LEAST_ONCE, 2)]
    assert frames(d.rx(A1, Puback(1, 2), 5.0)) == []


def test_connect_from_awake_clean0_resumes() -> None:
    """CONNECT(CleanSession=0) from AWAKE: CONNACK and the rest of the buffer follows."""
    d = Driver()
    d.connect(A1, "n1", clean=False)
    d.rx(A1, Subscribe(1, topic_name="a/b", qos=QoS.AT_LEAST_ONCE), 0.0)
    d.rx(A1, Disconnect(100), 1.0)
    d.broker("a/b", b"1", 1, now=2.0)
    d.broker("a/b", b"2", 1, now=2.0)
    out = d.rx(A1, Pingreq("n1"), 3.0)
    assert frames(out) == [Publish(1, b"1", QoS.AT_LEAST_ONCE, 1)]
    assert d.state("n1") is S.AWAKE
    # The node gives up waiting and CONNECTs: the unacknowledged one is sent again first.
    out = d.rx(A1, Connect("n1", 60, False, False), 4.0)
    assert frames(out) == [Connack(), Publish(1, b"1", QoS.AT_LEAST_ONCE, 2)]
    assert d.state("n1") is S.ACTIVE


def test_connect_from_asleep_clean1_drops_the_buffer() -> None:
    """CONNECT(CleanSession=1) from ASLEEP is a fresh start: buffer dropped and counted."""
    d = Driver()
    d.connect(A1, "n1", clean=False)
    d.rx(A1, Subscribe(1, topic_name="a/b", qos=QoS.AT_LEAST_ONCE), 0.0)
    d.rx(A1, Disconnect(100), 1.0)
    d.broker("a/b", b"1", 1, now=2.0)
    assert frames(d.rx(A1, Connect("n1", 60, False, True), 3.0)) == [Connack()]
    assert d.core.budget.used == 0
    assert d.core.budget.drops["clean_session"] == 1


def test_keepalive_zero_is_supervised_with_the_configured_period() -> None:
    """Keep-alive 0 (P18): supervised with zero_keepalive instead of never."""
    d = Driver(CoreSettings(zero_keepalive=100.0))
    d.rx(A1, Connect("n1", 0, True, True), 0.0)
    d.rx(A1, WillTopic("w"), 0.0)
    d.rx(A1, WillMsg(b"bye"), 0.0)
    assert d.session("n1").keepalive == 100.0
    assert d.run_until(149.9) == []
    assert d.run_until(150.0) == [(150.0, [PublishUpstream("n1", "w", b"bye", 0, False)])]


def test_max_clients_refuses_with_congestion() -> None:
    """Beyond max_clients a new ClientId gets CONNACK congestion; known ones still connect."""
    d = Driver(CoreSettings(max_clients=1))
    d.connect(A1, "n1")
    assert d.rx(A2, Connect("n2", 60), 1.0) == [
        SendFrame(A2, Connack(ReturnCode.REJECTED_CONGESTION))
    ]
    assert "n2" not in d.core.sessions
    assert d.rx(A1, Connect("n1", 60), 2.0) == [SendFrame(A1, Connack())]


def test_connect_abandoned_mid_handshake_expires() -> None:
    """A node that never answers WILLTOPICREQ is dropped after t_retry * (n_retry + 1)."""
    d = Driver(CoreSettings(t_retry=10, n_retry=3))
    d.rx(A1, Connect("n1", 60, True, True), 0.0)
    assert d.run_until(39.9) == []
    d.run_until(40.0)
    assert "n1" not in d.core.sessions
    assert d.core.by_address == {}


def test_abandoned_handshake_keeps_a_persistent_session() -> None:
    """A persistent session survives an unfinished re-CONNECT: buffered QoS 1 stays."""
    d = Driver(CoreSettings(t_retry=10, n_retry=3))
    d.connect(A1, "n1", clean=False)
    d.rx(A1, Subscribe(1, topic_name="a/b", qos=QoS.AT_LEAST_ONCE), 0.0)
    d.rx(A1, Disconnect(), 1.0)
    d.broker("a/b", b"keep", 1, now=2.0)
    d.rx(A1, Connect("n1", 60, True, False), 3.0)
    d.run_until(100.0)
    assert d.state("n1") is S.DISCONNECTED
    assert [x.payload for x in d.session("n1").queue] == [b"keep"]
    out = d.rx(A1, Connect("n1", 60, False, False), 101.0)
    assert frames(out) == [Connack(), Register(1, 1, "a/b")]


@pytest.mark.parametrize("state_path", ["disconnected", "lost"])
def test_connect_after_disconnect_or_loss_is_a_new_connection(state_path: str) -> None:
    """From DISCONNECTED or LOST, CONNECT(CleanSession=0) works and registers ids again."""
    d = Driver()
    d.connect(A1, "n1", duration=10, clean=False)
    d.rx(A1, Subscribe(1, topic_name="a/b", qos=QoS.AT_LEAST_ONCE), 0.0)
    if state_path == "disconnected":
        d.rx(A1, Disconnect(), 1.0)
        assert d.state("n1") is S.DISCONNECTED
    else:
        d.run_until(16.0)
        assert d.state("n1") is S.LOST
    d.broker("a/b", b"q", 1, now=20.0)
    out = d.rx(A2, Connect("n1", 10, False, False), 21.0)
    assert out == [SendFrame(A2, Connack()), SendFrame(A2, Register(1, 1, "a/b"))]
    assert d.core.by_address == {A2: "n1"}


def test_pingreq_from_active_node_gets_pingresp() -> None:
    """PINGREQ -> PINGRESP."""
    d = Driver()
    d.connect(A1, "n1")
    assert d.rx(A1, Pingreq(), 1.0) == [SendFrame(A1, Pingresp())]

"""``outage_policy``: what nodes hear while the gateway's broker connection is down [§6.6]."""

from __future__ import annotations

import pytest

from gateway.core import PublishUpstream
from gateway.core.settings import CoreSettings, Mode
from gateway.protocol.constants import QoS, ReturnCode
from gateway.protocol.messages import Connack, Connect, Puback, Publish, Regack, Register
from tests.core.helpers import A1, A2, Driver, frames

Q1 = QoS.AT_LEAST_ONCE
Q2 = QoS.EXACTLY_ONCE


def node_with_topic(policy: str) -> tuple[Driver, int]:
    """n1 at A1 connected (broker up) with "a/b" registered; then the broker goes away."""
    d = Driver(CoreSettings(outage_policy=policy))
    d.core.on_broker_state(True, 0.0)
    d.connect(A1, "n1")
    (regack,) = frames(d.rx(A1, Register(0, 1, "a/b")))
    assert isinstance(regack, Regack)
    d.core.on_broker_state(False, 1.0)
    return d, regack.topic_id


@pytest.mark.parametrize("qos", [Q1, Q2])
def test_reject_answers_congestion_at_once_and_publishes_nothing(qos: QoS) -> None:
    d, tid = node_with_topic("reject")
    out = d.rx(A1, Publish(tid, b"v", qos, 5))
    assert out and not d.uplinks(out)
    assert frames(out) == [Puback(tid, 5, ReturnCode.REJECTED_CONGESTION)]
    assert d.session("n1").uplink == {}  # nothing pending: the node sends it again later
    assert d.core.counters["uplink_refused_outage"] == 1


def test_reject_lets_qos0_through_to_the_bridge() -> None:
    """QoS 0 is not acknowledged, so there is nothing to refuse: the bridge drops and counts."""
    d, tid = node_with_topic("reject")
    out = d.rx(A1, Publish(tid, b"v", QoS.AT_MOST_ONCE, 0))
    assert d.uplinks(out) == [PublishUpstream("n1", "a/b", b"v", 0, False)]


def test_reject_refuses_connect_while_down_and_accepts_once_up() -> None:
    d, _ = node_with_topic("reject")
    refused = d.rx(A2, Connect("n2", 60))
    assert frames(refused) == [Connack(ReturnCode.REJECTED_CONGESTION)]
    assert "n2" not in d.core.sessions
    assert d.core.counters["connect_refused_outage"] == 1
    d.core.on_broker_state(True, 2.0)
    d.connect(A2, "n2", now=2.0)  # asserts CONNACK accepted


def test_reject_publishes_again_once_the_broker_is_back() -> None:
    d, tid = node_with_topic("reject")
    d.rx(A1, Publish(tid, b"v", Q1, 5))
    d.core.on_broker_state(True, 2.0)
    out = d.rx(A1, Publish(tid, b"v", Q1, 5, dup=True), 2.0)
    (up,) = d.uplinks(out)
    assert (up.topic, up.qos) == ("a/b", 1) and up.token is not None


def test_buffer_policy_hands_qos1_to_the_outbox_while_down() -> None:
    """The default: the publish goes to the bridge (its persistent outbox), acked later."""
    d, tid = node_with_topic("buffer")
    out = d.rx(A1, Publish(tid, b"v", Q1, 5))
    (up,) = d.uplinks(out)
    assert up.qos == 1 and frames(out) == []
    assert 5 in d.session("n1").uplink
    d.connect(A2, "n2")  # CONNECT accepted while down


def test_transparent_mode_leaves_connect_to_the_nodes_own_connection() -> None:
    d = Driver(CoreSettings(outage_policy="reject", mode=Mode.TRANSPARENT))
    out = d.rx(A2, Connect("n2", 60))  # the gateway's own connection is down (never up)
    assert Connack(ReturnCode.REJECTED_CONGESTION) not in frames(out)
    assert [type(a).__name__ for a in out] == ["OpenUpstreamSession"]


def test_unknown_policy_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="outage_policy"):
        CoreSettings(outage_policy="drop")

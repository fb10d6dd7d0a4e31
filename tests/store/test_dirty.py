"""The core names what changed (``core.dirty``); the QoS 0 hot path names nothing."""

from __future__ import annotations

from gateway.core import PublishUpstream
from gateway.protocol.constants import QoS, TopicIdType
from gateway.protocol.messages import Disconnect, Pingreq, Publish, Register, Subscribe
from tests.core.helpers import A1, A2, Driver

Q1 = QoS.AT_LEAST_ONCE


def tracked() -> Driver:
    """A driver whose core tracks changes, with n1 connected and a topic registered."""
    d = Driver()
    d.core.dirty = set()
    d.connect(A1, "n1")
    d.rx(A1, Register(0, 1, "up/t"), 0.0)
    d.rx(A1, Subscribe(2, topic_name="down/t", qos=Q1), 0.0)
    d.core.dirty.clear()
    return d


def test_untracked_by_default() -> None:
    """Without a state file nothing is collected (no growth for a gateway in memory)."""
    d = Driver()
    d.connect(A1, "n1")
    assert d.core.dirty is None


def test_qos0_uplink_and_downlink_mark_nothing() -> None:
    """QoS 0 and QoS -1 PUBLISH, and a QoS 0 sent straight to an active node, change nothing kept."""
    d = tracked()
    d.rx(A1, Publish(1, b"x", QoS.AT_MOST_ONCE), 1.0)
    d.rx(A1, Publish(0x6162, b"x", QoS.MINUS_ONE, topic_id_type=TopicIdType.SHORT_NAME), 1.0)
    d.broker("down/t", b"v", 0, now=1.0)
    assert d.core.dirty == set()


def test_qos1_uplink_leaves_the_row_alone() -> None:
    """A QoS 1 PUBLISH and the broker's acknowledgement do not mark the node: its row gets the
    entry only if the broker has not acknowledged it within an interval (store.py), and the
    loader drops an entry whose outbox row is gone."""
    d = tracked()
    out = d.rx(A1, Publish(1, b"x", Q1, 5), 1.0)
    assert d.core.dirty == set()
    token = next(a.token for a in out if isinstance(a, PublishUpstream))
    assert token is not None and 5 in d.session("n1").uplink
    d.done(token, True, 1.1)
    assert d.core.dirty == set()


def test_qos2_uplink_marks_the_node_twice() -> None:
    """QoS 2 marks the node at the PUBLISH and again at the broker's acknowledgement: after
    the PUBREC the entry must survive a restart, or a repeated PUBLISH would go out twice."""
    d = tracked()
    out = d.rx(A1, Publish(1, b"x", QoS.EXACTLY_ONCE, 5), 1.0)
    assert d.core.dirty == {"n1"}
    d.core.dirty.clear()
    token = next(a.token for a in out if isinstance(a, PublishUpstream))
    d.done(token, True, 1.1)
    assert d.core.dirty == {"n1"}


def test_buffering_for_a_sleeper_marks_it() -> None:
    """A broker message buffered for an asleep node (any QoS) marks that node."""
    d = tracked()
    d.rx(A1, Disconnect(100), 1.0)
    d.core.dirty.clear()
    d.broker("down/t", b"v", 0, now=2.0)
    assert d.core.dirty == {"n1"}


def test_forgotten_session_is_marked() -> None:
    """A clean DISCONNECT forgets the session: it is marked so its row is deleted."""
    d = tracked()
    d.rx(A1, Disconnect(), 1.0)
    assert d.core.dirty == {"n1"}
    assert "n1" not in d.core.sessions


def test_timers_mark_what_they_touch() -> None:
    """Supervision (a lost node) marks the session."""
    d = tracked()
    d.connect(A2, "n2", duration=10)
    d.core.dirty.clear()
    d.run_until(100.0)
    assert "n2" in d.core.dirty


def test_ping_marks_the_node() -> None:
    """PINGREQ keeps last_rx current on disk too (cheap: once per keep-alive)."""
    d = tracked()
    d.rx(A1, Pingreq(), 5.0)
    assert d.core.dirty == {"n1"}

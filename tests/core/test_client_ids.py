"""Sessions are keyed by the exact ClientId; addresses follow the node (DESIGN §3)."""

from __future__ import annotations

from gateway.core import SendFrame, SessionState
from gateway.protocol.constants import QoS
from gateway.protocol.messages import (
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    Publish,
    Register,
    Subscribe,
)
from tests.core.helpers import A1, A2, A3, Driver, frames

S = SessionState
Q1 = QoS.AT_LEAST_ONCE


def test_prefix_client_id_never_takes_over_the_longer_one() -> None:
    """sensor1 and sensor10 are different sessions; PINGREQ('sensor1') wakes only sensor1."""
    d = Driver()
    for address, cid in ((A1, "sensor1"), (A2, "sensor10")):
        d.connect(address, cid, clean=False)
        d.rx(address, Subscribe(1, topic_name=f"{cid}/in", qos=Q1))
        d.rx(address, Disconnect(100), 1.0)
    d.broker("sensor1/in", b"for-1", 1, now=2.0)
    d.broker("sensor10/in", b"for-10", 1, now=2.0)
    out = d.rx(A3, Pingreq("sensor1"), 3.0)
    assert out == [SendFrame(A3, Publish(1, b"for-1", Q1, 1))]
    assert d.state("sensor1") is S.AWAKE
    assert d.state("sensor10") is S.ASLEEP
    assert d.session("sensor10").address == A2
    assert [x.payload for x in d.session("sensor10").queue] == [b"for-10"]
    assert d.core.by_address == {A3: "sensor1", A2: "sensor10"}


def test_connect_from_another_nodes_old_address() -> None:
    """sensor10 moves away; CONNECT('sensor1') from its old address is sensor1's, not sensor10's."""
    d = Driver()
    d.connect(A1, "sensor10", clean=False)
    d.rx(A1, Subscribe(1, topic_name="t/10", qos=Q1))
    d.connect(A2, "sensor10", clean=False, now=1.0)  # moved to A2
    assert d.core.by_address == {A2: "sensor10"}
    d.connect(A1, "sensor1", now=2.0)
    assert d.core.by_address == {A1: "sensor1", A2: "sensor10"}
    assert d.session("sensor1").subscriptions == {}
    assert d.session("sensor10").subscriptions == {"t/10": 1}
    # sensor10's traffic goes to its new address only.
    assert d.broker("t/10", b"v", 1, now=3.0) == [SendFrame(A2, Register(1, 1, "t/10"))]


def test_connect_updates_the_address() -> None:
    """CONNECT from a new address moves the session; the old address becomes unknown."""
    d = Driver()
    d.connect(A1, "n1", clean=False)
    assert d.rx(A2, Connect("n1", 60, False, False), 1.0) == [SendFrame(A2, Connack())]
    assert d.core.by_address == {A2: "n1"}
    assert d.rx(A1, Publish(1, b"x"), 2.0) == [SendFrame(A1, Disconnect())]
    assert d.rx(A1, Pingreq(), 2.0) == []


def test_pingreq_with_client_id_updates_the_address_of_an_active_node() -> None:
    """A PINGREQ carrying the ClientId rebinds the address even while active."""
    d = Driver()
    d.connect(A1, "n1")
    assert d.rx(A2, Pingreq("n1"), 1.0) == [SendFrame(A2, Pingresp())]
    assert d.core.by_address == {A2: "n1"}


def test_client_ids_are_case_and_whitespace_exact() -> None:
    """'Node' and 'node ' are not 'node'."""
    d = Driver()
    d.connect(A1, "node", clean=False)
    d.rx(A1, Disconnect(100), 1.0)
    assert d.rx(A2, Pingreq("Node"), 2.0) == []
    assert d.rx(A2, Pingreq("node "), 2.0) == []
    assert d.state("node") is S.ASLEEP
    assert frames(d.rx(A2, Pingreq("node"), 3.0)) == [Pingresp()]


def test_address_taken_by_another_client_gets_nothing_meant_for_the_old_one() -> None:
    """A new ClientId CONNECTs from a live node's address: the old session's traffic stops.

    Otherwise sensor10's PUBLISHes (with sensor10's topic ids) would reach the node that is now
    sensor1 at that address, where the same ids may name other topics [§7.3].
    """
    d = Driver()
    d.connect(A1, "sensor10", duration=10)
    d.rx(A1, Subscribe(1, topic_name="t/10", qos=Q1), 0.0)
    d.connect(A1, "sensor1", now=1.0)
    assert d.core.by_address == {A1: "sensor1"}
    assert d.broker("t/10", b"secret", 1, now=2.0) == []
    for _, actions in d.run_until(100.0):
        assert all(getattr(a, "address", None) != A1 for a in actions), actions
    assert d.state("sensor10") is None  # lost without its traffic reaching sensor1
    assert d.state("sensor1") is S.LOST or d.state("sensor1") is None

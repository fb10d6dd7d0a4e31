"""State is data: export_state() survives pickling and a new core continues from it."""

from __future__ import annotations

import pickle
from types import MappingProxyType

from gateway.core import GatewayCore, PublishUpstream, SendFrame, SessionState
from gateway.core.settings import CoreSettings
from gateway.protocol.constants import QoS, TopicIdType
from gateway.protocol.messages import (
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    Puback,
    Publish,
    Regack,
    Register,
    Subscribe,
    WillMsg,
    WillTopic,
)
from tests.core.helpers import A1, A2, Driver, frames

Q1 = QoS.AT_LEAST_ONCE


def restart(d: Driver, settings: CoreSettings | None = None) -> Driver:
    """Pickle the core's state and start a new core from it, at the same time."""
    blob = pickle.dumps(d.core.export_state())
    new = Driver(settings or d.core.settings)
    new.core = GatewayCore(settings or d.core.settings, state=pickle.loads(blob))
    new.now = d.now
    return new


def test_restart_delivers_buffered_messages_on_wake() -> None:
    """Messages buffered for an asleep node survive the restart and are delivered on wake."""
    d = Driver()
    d.rx(A1, Connect("n1", 10, True, False), 0.0)
    d.rx(A1, WillTopic("w"), 0.0)
    d.rx(A1, WillMsg(b"bye"), 0.0)
    d.rx(A1, Subscribe(1, topic_name="a/+", qos=Q1), 0.0)
    d.rx(A1, Disconnect(100), 1.0)
    d.broker("a/x", b"1", 1, now=2.0)
    d.broker("a/x", b"2", 1, now=3.0)
    d = restart(d)
    assert d.core.budget.used == 2
    assert d.core.upstream_subscriptions() == [("a/+", 1)]
    assert d.rx(A1, Pingreq("n1"), 50.0) == [SendFrame(A1, Register(1, 1, "a/x"))]
    assert frames(d.rx(A1, Regack(1, 1), 50.0)) == [Publish(1, b"1", Q1, 2)]
    assert frames(d.rx(A1, Puback(1, 2), 50.0)) == [Publish(1, b"2", Q1, 3)]
    assert frames(d.rx(A1, Puback(1, 3), 50.0)) == [Pingresp()]
    # Supervision survived too: oversleeping still fires the stored will.
    assert d.run_until(200.0) == [(200.0, [PublishUpstream("n1", "w", b"bye", 0, False)])]


def test_restart_keeps_registrations_and_in_flight() -> None:
    """Registrations, an in-flight PUBLISH (with its retry timer) and uplink QoS 2 state."""
    d = Driver(CoreSettings(t_retry=10.0))
    d.connect(A1, "n1", duration=600)
    d.rx(A1, Register(0, 1, "up/t"), 0.0)
    d.rx(A1, Subscribe(2, topic_name="d/t", qos=Q1), 0.0)
    d.broker("d/t", b"v", 1, now=1.0)
    d.rx(A1, Publish(1, b"q2", QoS.EXACTLY_ONCE, 7), 2.0)
    d = restart(d)
    assert d.run_until(11.0) == [(11.0, [SendFrame(A1, Publish(2, b"v", Q1, 1, dup=True))])]
    out = d.rx(A1, Publish(1, b"x", QoS.AT_MOST_ONCE), 12.0)
    assert out == [PublishUpstream("n1", "up/t", b"x", 0, False)]
    # The broker's ack for the QoS 2 publish arrives after the restart: PUBREC goes out.
    from gateway.protocol.messages import Pubrec

    assert d.done(1, True, 13.0) == [SendFrame(A1, Pubrec(7))]


def test_restart_with_mapping_proxy_predefined_pickles() -> None:
    """Settings from a frozen config (read-only mappings) still give a picklable state."""
    settings = CoreSettings(predefined=MappingProxyType({1: "p/one"}))
    d = Driver(settings)
    d.connect(A1, "n1", clean=False)
    d.rx(A1, Subscribe(1, TopicIdType.PREDEFINED, topic_id=1), 0.0)
    d = restart(d, settings)
    assert frames(d.broker("p/one", b"v", now=1.0)) == [
        Publish(1, b"v", topic_id_type=TopicIdType.PREDEFINED)
    ]


def test_restart_restores_addresses() -> None:
    """by_address is rebuilt: the node's next message is attributed to it."""
    d = Driver()
    d.connect(A1, "n1")
    d.connect(A2, "n2")
    d = restart(d)
    assert d.core.by_address == {A1: "n1", A2: "n2"}
    assert d.state("n1") is SessionState.ACTIVE
    assert d.rx(A2, Pingreq(), 1.0) == [SendFrame(A2, Pingresp())]


def test_reprs_show_live_state() -> None:
    """__repr__ of the core and its parts names the live state (STYLE rule 12)."""
    d = Driver()
    d.connect(A1, "n1", clean=False)
    d.rx(A1, Subscribe(1, topic_name="a/#", qos=Q1), 0.0)
    d.rx(A1, Disconnect(100), 1.0)
    d.broker("a/x", b"v", 1, now=2.0)
    assert "ASLEEP" in repr(d.core) and "buffered=1" in repr(d.core)
    assert repr(d.session("n1")).startswith("<ClientSession 'n1' ASLEEP")
    assert "wildcard=1" in repr(d.core.index)
    assert "TimerHeap" in repr(d.core._timers)

"""Bounded buffers and flood resistance: nothing grows without bound (DESIGN §4)."""

from __future__ import annotations

from gateway.core import SendFrame
from gateway.core.settings import CoreSettings
from gateway.protocol.constants import QoS, ReturnCode, TopicIdType
from gateway.protocol.messages import (
    Connect,
    Disconnect,
    Pingreq,
    Puback,
    Publish,
    Regack,
    Register,
    SearchGw,
    Suback,
    Subscribe,
)
from tests.core.helpers import A1, A2, Driver, frames

Q1 = QoS.AT_LEAST_ONCE
SMALL = CoreSettings(queue_per_client=3, queue_total=5)


def asleep(d: Driver, address: object, client_id: str, topic: str = "a/b") -> None:
    """Connect ``client_id`` (persistent), subscribe QoS 1 to ``topic``, put it to sleep."""
    d.connect(address, client_id, clean=False)
    d.rx(address, Subscribe(1, topic_name=topic, qos=Q1))
    d.rx(address, Disconnect(1000))


def payloads(d: Driver, client_id: str) -> list[bytes]:
    """What is buffered for ``client_id``."""
    return [x.payload for x in d.session(client_id).queue]


def test_per_client_limit_drops_oldest_qos0_then_refuses() -> None:
    """Full queue: the oldest QoS 0 goes first; with none left, new messages are refused."""
    d = Driver(SMALL)
    asleep(d, A1, "n1")
    d.broker("a/b", b"q0-old", 0)
    d.broker("a/b", b"q1-a", 1)
    d.broker("a/b", b"q0-new", 0)
    assert payloads(d, "n1") == [b"q0-old", b"q1-a", b"q0-new"]
    d.broker("a/b", b"q1-b", 1)
    assert payloads(d, "n1") == [b"q1-a", b"q0-new", b"q1-b"]
    d.broker("a/b", b"q1-c", 1)
    assert payloads(d, "n1") == [b"q1-a", b"q1-b", b"q1-c"]
    d.broker("a/b", b"q1-d", 1)
    assert payloads(d, "n1") == [b"q1-a", b"q1-b", b"q1-c"]
    assert d.core.budget.drops == {"overflow_oldest_qos0": 2, "overflow_refused": 1}
    assert d.core.budget.used == 3


def test_total_limit_across_nodes() -> None:
    """The gateway-wide bound holds across nodes; drops counted by reason."""
    d = Driver(SMALL)
    asleep(d, A1, "n1")
    asleep(d, A2, "n2")
    for i in range(3):
        d.broker("a/b", bytes([i]), 1)  # both subscribed: n1 gets 3, n2 gets 2 then refused
    assert len(d.session("n1").queue) == 3
    assert len(d.session("n2").queue) == 2
    assert d.core.budget.used == 5
    assert d.core.budget.drops == {"overflow_refused": 1}


def test_offline_qos0_is_not_buffered() -> None:
    """A disconnected persistent session keeps QoS 1/2 but not QoS 0 (counted)."""
    d = Driver()
    d.connect(A1, "n1", clean=False)
    d.rx(A1, Subscribe(1, topic_name="a/b", qos=Q1))
    d.rx(A1, Disconnect())
    d.broker("a/b", b"0", 0)
    d.broker("a/b", b"1", 1)
    assert payloads(d, "n1") == [b"1"]
    assert d.core.budget.drops["offline_qos0"] == 1


def test_busy_node_queue_is_bounded_too() -> None:
    """An awake node that never acks: deliveries queue behind the one in flight, bounded."""
    d = Driver(SMALL)
    d.connect(A1, "n1")
    d.rx(A1, Subscribe(1, topic_name="a/b", qos=Q1))
    for i in range(100):
        d.broker("a/b", bytes([i]), 1)
    assert len(d.session("n1").queue) == 3
    assert d.core.budget.drops["overflow_refused"] == 96


def test_flood_of_registers_is_bounded() -> None:
    """10,000 REGISTERs with distinct names: the registry stops at its limit."""
    d = Driver(CoreSettings(max_topics_per_client=50))
    d.connect(A1, "n1")
    refused = 0
    for i in range(10_000):
        (frame,) = frames(d.rx(A1, Register(0, i % 0xFFFF + 1, f"t/{i}")))
        assert isinstance(frame, Regack)
        refused += frame.return_code is ReturnCode.REJECTED_CONGESTION
    assert len(d.session("n1").registry) == 50
    assert refused == 10_000 - 50


def test_flood_of_unacked_qos1_publishes_is_bounded() -> None:
    """10,000 QoS 1 publishes the broker never acks: pending state and tokens stay bounded."""
    d = Driver()
    d.connect(A1, "n1")
    d.rx(A1, Register(0, 1, "a/b"))
    congested = 0
    for i in range(10_000):
        out = d.rx(A1, Publish(1, b"v", Q1, i + 1))
        congested += out == [SendFrame(A1, Puback(1, i + 1, ReturnCode.REJECTED_CONGESTION))]
    assert len(d.session("n1").uplink) <= 32
    assert len(d.core._tokens) <= 32
    assert congested == 10_000 - 32


def test_flood_of_subscribes_is_bounded() -> None:
    """10,000 SUBSCRIBEs with distinct filters: subscriptions, index and registry bounded."""
    d = Driver(CoreSettings(max_subscriptions_per_client=20, max_topics_per_client=30))
    d.connect(A1, "n1")
    accepted = 0
    for i in range(10_000):
        name = f"w/{i}/#" if i % 2 else f"c/{i}"
        (frame,) = frames(d.rx(A1, Subscribe(i % 0xFFFF + 1, topic_name=name)))
        assert isinstance(frame, Suback)
        accepted += frame.return_code is ReturnCode.ACCEPTED
    session = d.session("n1")
    assert accepted == 20
    assert len(session.subscriptions) == 20
    assert len(session.retained_until) == 20
    assert len(d.core.index) == 20
    assert len(session.registry) <= 30


def test_flood_of_state_changes_keeps_the_timer_heap_bounded() -> None:
    """CONNECTs, sleeps, wake-ups and send failures by the thousand: the timer heap stays small."""
    d = Driver()
    now = 0.0
    for _ in range(1_500):
        now += 0.001
        d.rx(A1, Connect("n1", 60, False, False), now)
        d.rx(A1, Disconnect(1000), now)
        d.rx(A1, Pingreq("n1"), now)
        d.core.on_send_failed(A1, now)
    # 6,000 pushes; compaction keeps at most one entry per (session, kind) plus slack.
    assert len(d.core._timers) <= 1024


def test_searchgw_flood_from_many_sources_is_bounded() -> None:
    """Per-source GWINFO bookkeeping does not grow without bound."""
    d = Driver()
    for i in range(30_000):
        d.rx(("udp", "10.1.0.0", i), SearchGw(0), i * 1.0)
    assert len(d.core._gwinfo_last) <= 10_001


def test_unknown_topic_flood_does_not_grow_counters_keys() -> None:
    """Counters are keyed by reason, never by topic or address."""
    d = Driver()
    d.connect(A1, "n1")
    for i in range(1_000):
        d.rx(A1, Publish(i + 2, b"v", Q1, i + 1, TopicIdType.NORMAL))
    assert len(d.core.counters) < 10


def test_timers_still_fire_after_compaction() -> None:
    """After the heap was compacted, supervision still fires at the exact deadline."""
    d = Driver()
    now = 0.0
    for _ in range(400):
        now += 0.001
        d.rx(A1, Connect("n1", 60, False, False), now)
        d.rx(A1, Disconnect(1000), now)
        d.rx(A1, Pingreq("n1"), now)
    last = d.session("n1").last_rx
    assert d.run_until(last + 1499.9) == []
    assert d.state("n1").name == "ASLEEP"
    d.run_until(last + 1500.0)
    assert d.state("n1").name == "LOST"


def test_timer_heap_compaction_keeps_the_earliest_per_key() -> None:
    """TimerHeap keeps one (the earliest) entry per key when it compacts."""
    from gateway.core.timers import TimerHeap

    heap = TimerHeap()
    for i in range(2_000):
        heap.push(100.0 + i, "a", "sup")
    heap.push(50.0, "b", "retry")
    assert len(heap) < 1024
    assert heap.earliest() == 50.0
    assert heap.pop_due(100.0) == [("b", "retry"), ("a", "sup")]

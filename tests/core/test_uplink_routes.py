"""The QoS 0 uplink route cache: a hit is exactly ``publish_fields``' decision, or no hit at all."""

from __future__ import annotations

import pytest

from gateway.core.access import AccessPolicy, TopicRule
from gateway.core.settings import CoreSettings
from gateway.protocol.codec import encode
from gateway.protocol.constants import QoS, ReturnCode, TopicIdType
from gateway.protocol.messages import Disconnect, Puback, Publish, Regack, Register
from tests.core.helpers import A1, A2, Driver, frames

NORMAL = TopicIdType.NORMAL
PREDEFINED = TopicIdType.PREDEFINED


def _registered(d: Driver, address: object, client_id: str, name: str) -> int:
    d.connect(address, client_id)
    (regack,) = frames(d.rx(address, Register(0, 1, name)))
    assert isinstance(regack, Regack)
    return regack.topic_id


def _key(topic_id: int) -> bytes:
    """MsgType, Flags and TopicId of a QoS 0 PUBLISH, as the runtime keys it."""
    return encode(Publish(topic_id, b"v"))[1:5]


def _route(d: Driver, address: object, topic_id: int, now: float) -> object:
    """Make (or fail to make) the route: the route is the (client_id, topic) it was made for."""
    return d.core.add_qos0_route(
        address, _key(topic_id), NORMAL, topic_id, now, lambda c, t: (c, t)
    )


def test_a_route_is_made_once_and_hit_with_last_rx_updated() -> None:
    d = Driver()
    topic_id = _registered(d, A1, "n1", "a/b")
    assert _route(d, A1, topic_id, 1.0) == ("n1", "a/b")
    assert d.core.qos0_route(A1, _key(topic_id), 5.0) == ("n1", "a/b")
    assert d.session("n1").last_rx == 5.0
    assert d.core.qos0_route(A2, _key(topic_id), 6.0) is None  # another address: no session


def test_no_route_for_what_publish_fields_refuses() -> None:
    rules = AccessPolicy(rules=(TopicRule("*", publish=("ok/#",)),))
    d = Driver(CoreSettings(access=rules, predefined={7: "denied/t", 8: "ok/t"}))
    d.connect(A1, "n1")
    key = encode(Publish(7, b"v", topic_id_type=PREDEFINED))[1:5]
    make = lambda c, t: (c, t)  # noqa: E731
    assert d.core.add_qos0_route(A1, key, PREDEFINED, 7, 1.0, make) is None  # access rules
    assert d.core.add_qos0_route(A1, key, PREDEFINED, 8, 1.0, make) == ("n1", "ok/t")
    assert _route(d, A1, 1, 1.0) is None  # a normal id never registered
    assert _route(d, A2, 1, 1.0) is None  # no session at that address


def test_a_clean_reconnect_drops_the_routes_of_reused_topic_ids() -> None:
    """Ids start again at 1 after a clean CONNECT: a stale route would publish to the old topic."""
    d = Driver()
    old = _registered(d, A1, "n1", "old/topic")
    _route(d, A1, old, 1.0)
    new = _registered(d, A1, "n1", "new/topic")
    assert new == old
    assert d.core.qos0_route(A1, _key(new), 2.0) is None
    assert _route(d, A1, new, 2.0) == ("n1", "new/topic")


def test_sleep_and_an_address_taken_over_end_the_route() -> None:
    d = Driver()
    topic_id = _registered(d, A1, "n1", "a/b")
    _route(d, A1, topic_id, 1.0)
    d.rx(A1, Disconnect(100), 2.0)  # asleep: a PUBLISH now is not accepted
    assert d.core.qos0_route(A1, _key(topic_id), 3.0) is None
    d.connect(A1, "n1", clean=False, now=4.0)
    _route(d, A1, topic_id, 4.0)
    d.connect(A1, "n2", now=5.0)  # another ClientId at the same address
    assert d.core.qos0_route(A1, _key(topic_id), 6.0) is None


def test_routes_are_bounded_per_node_and_in_all(monkeypatch: pytest.MonkeyPatch) -> None:
    d = Driver()
    d.connect(A1, "n1")
    for n in range(1, 1000):
        d.rx(A1, Register(0, n, f"t/{n}"))
        _route(d, A1, n, 1.0)
    assert 0 < len(d.session("n1").registry.routes) <= 64
    monkeypatch.setattr("gateway.core.uplink._MAX_ROUTES_TOTAL", 10)
    d.connect(A2, "n2")
    for n in range(1, 30):
        d.rx(A2, Register(0, n, f"t/{n}"))
        _route(d, A2, n, 1.0)
    total = sum(len(s.registry.routes) for s in d.core.sessions.values())
    assert 0 < total <= 10


def _key1(topic_id: int) -> bytes:
    """MsgType, Flags and TopicId of a QoS 1 PUBLISH."""
    return encode(Publish(topic_id, b"v", QoS.AT_LEAST_ONCE, 1))[1:5]


def _route1(d: Driver, address: object, topic_id: int) -> None:
    d.core.add_qos1_route(address, _key1(topic_id), NORMAL, topic_id, lambda c, t: ("pub", c, t))


def test_a_qos1_route_takes_the_message_as_publish_fields_does() -> None:
    """A hit makes the pending entry and token; the broker's ack then answers the node."""
    d = Driver()
    topic_id = _registered(d, A1, "n1", "a/b")
    assert d.core.qos1_route(A1, _key1(topic_id), 7, 1.0) is None  # no route yet
    _route1(d, A1, topic_id)
    route, token = d.core.qos1_route(A1, _key1(topic_id), 7, 2.0)
    assert route == (("pub", "n1", "a/b"), "n1", "a/b")
    assert d.session("n1").uplink[7].topic_id == topic_id
    assert d.session("n1").last_rx == 2.0
    assert frames(d.done(token)) == [Puback(topic_id, 7, ReturnCode.ACCEPTED)]


def test_a_qos1_route_leaves_every_other_case_to_the_general_path() -> None:
    """A MsgId in flight (a retransmission), the bound, an outage refusal: None, nothing done."""
    d = Driver(CoreSettings(outage_policy="reject"))
    d.core.on_broker_state(True, 0.0)
    topic_id = _registered(d, A1, "n1", "a/b")
    _route1(d, A1, topic_id)
    assert d.core.qos1_route(A1, _key1(topic_id), 7, 1.0) is not None
    assert d.core.qos1_route(A1, _key1(topic_id), 7, 1.0) is None  # in flight: answered there
    for msg_id in range(8, 8 + 40):
        d.core.qos1_route(A1, _key1(topic_id), msg_id, 1.0)
    assert len(d.session("n1").uplink) == 32  # the bound publish_fields keeps
    d.core.on_broker_state(False, 2.0)
    d.session("n1").uplink.clear()
    assert d.core.qos1_route(A1, _key1(topic_id), 99, 2.0) is None  # refused while away
    assert d.session("n1").uplink == {}

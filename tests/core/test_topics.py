"""Topic ids: REGISTER/REGACK both ways, pre-defined ids, short names, limits [§6.5, §6.7]."""

from __future__ import annotations

import pytest

from gateway.core import PublishUpstream, SendFrame
from gateway.core.settings import CoreSettings
from gateway.core.topics import TopicRegistry, topic_matches, valid_filter, valid_topic_name
from gateway.protocol.constants import QoS, ReturnCode, TopicIdType
from gateway.protocol.messages import (
    Disconnect,
    Puback,
    Publish,
    Regack,
    Register,
    Suback,
    Subscribe,
    short_name_to_id,
)
from tests.core.helpers import A1, A2, Driver, frames

PREDEFINED = {1: "pre/one", 2: "pre/two", 3: "pre/three", 4: "pre/four", 5: "pre/five"}


def test_register_from_node_gets_regack_with_a_new_id() -> None:
    """REGISTER(0, MsgId, name) -> REGACK(id, MsgId, accepted); the same name keeps its id."""
    d = Driver()
    d.connect(A1, "n1")
    assert d.rx(A1, Register(0, 7, "a/b"), 1.0) == [SendFrame(A1, Regack(1, 7))]
    assert d.rx(A1, Register(0, 8, "a/c"), 1.0) == [SendFrame(A1, Regack(2, 8))]
    assert d.rx(A1, Register(0, 9, "a/b"), 1.0) == [SendFrame(A1, Regack(1, 9))]


def test_registries_are_per_client() -> None:
    """Each node numbers its own topics; an id of one node never resolves for another [§7.3]."""
    d = Driver()
    d.connect(A1, "n1")
    d.connect(A2, "n2")
    d.rx(A1, Register(0, 1, "only/n1"), 1.0)
    assert d.rx(A2, Register(0, 1, "only/n2"), 1.0) == [SendFrame(A2, Regack(1, 1))]
    out = d.rx(A2, Publish(1, b"v"), 2.0)
    assert out == [PublishUpstream("n2", "only/n2", b"v", 0, False)]


def test_registered_ids_skip_predefined_ids() -> None:
    """With pre-defined ids 1..5 the first registered id is 6."""
    d = Driver(CoreSettings(predefined=PREDEFINED))
    d.connect(A1, "n1")
    assert d.rx(A1, Register(0, 1, "a/b"), 1.0) == [SendFrame(A1, Regack(6, 1))]


def test_registered_ids_wrap_around_skipping_predefined_and_reserved() -> None:
    """After 0xFFFE the allocator wraps to 1, skips the pre-defined ids, never uses 0/0xFFFF."""
    d = Driver(CoreSettings(predefined=PREDEFINED))
    d.connect(A1, "n1")
    d.session("n1").registry.next_id = 0xFFFE
    assert d.rx(A1, Register(0, 1, "a/1"), 1.0) == [SendFrame(A1, Regack(0xFFFE, 1))]
    assert d.rx(A1, Register(0, 2, "a/2"), 1.0) == [SendFrame(A1, Regack(6, 2))]
    assert d.rx(A1, Register(0, 3, "a/3"), 1.0) == [SendFrame(A1, Regack(7, 3))]


def test_wrap_around_skips_ids_still_in_use() -> None:
    """A wrapped allocator never hands out an id that is still registered."""
    registry = TopicRegistry({1: "p"}, limit=10)
    assert registry.register("x") == 2
    registry.next_id = 0xFFFE
    assert registry.register("y") == 0xFFFE
    assert registry.register("z") == 3  # 1 pre-defined, 2 taken by "x"


def test_wildcard_register_is_refused() -> None:
    """REGISTER of a wildcard name -> REGACK rejected: not supported (EMQX does the same)."""
    d = Driver()
    d.connect(A1, "n1")
    for msg_id, name in enumerate(["a/+", "a/#", "#"], start=1):
        out = d.rx(A1, Register(0, msg_id, name), 1.0)
        assert out == [SendFrame(A1, Regack(0, msg_id, ReturnCode.REJECTED_NOT_SUPPORTED))]
    assert len(d.session("n1").registry) == 0


def test_register_limit_per_client() -> None:
    """Beyond max_topics_per_client REGISTER gets REGACK congestion; known names still work."""
    d = Driver(CoreSettings(max_topics_per_client=2))
    d.connect(A1, "n1")
    d.rx(A1, Register(0, 1, "t/1"), 1.0)
    d.rx(A1, Register(0, 2, "t/2"), 1.0)
    out = d.rx(A1, Register(0, 3, "t/3"), 1.0)
    assert out == [SendFrame(A1, Regack(0, 3, ReturnCode.REJECTED_CONGESTION))]
    assert d.rx(A1, Register(0, 4, "t/1"), 1.0) == [SendFrame(A1, Regack(1, 4))]
    assert d.core.counters["register_refused_limit"] == 1


def test_register_from_unknown_address_gets_disconnect() -> None:
    """A REGISTER nobody can attribute is answered with DISCONNECT [§6.12]."""
    d = Driver()
    assert d.rx(A1, Register(0, 1, "a"), 0.0) == [SendFrame(A1, Disconnect())]


def test_gateway_register_then_publish_after_regack() -> None:
    """Downlink on an unknown topic: REGISTER first, PUBLISH only after REGACK [§6.10]."""
    d = Driver()
    d.connect(A1, "n1")
    d.rx(A1, Subscribe(1, topic_name="s/+"), 0.0)
    out = d.broker("s/x", b"v", 0, now=1.0)
    assert out == [SendFrame(A1, Register(1, 1, "s/x"))]
    assert d.rx(A1, Regack(1, 1), 2.0) == [SendFrame(A1, Publish(1, b"v"))]


def test_publish_with_predefined_id() -> None:
    """A configured pre-defined id resolves without REGISTER (TopicIdType 01)."""
    d = Driver(CoreSettings(predefined=PREDEFINED))
    d.connect(A1, "n1")
    out = d.rx(A1, Publish(2, b"v", topic_id_type=TopicIdType.PREDEFINED), 1.0)
    assert out == [PublishUpstream("n1", "pre/two", b"v", 0, False)]


def test_publish_with_short_topic_name() -> None:
    """A short topic name travels in the TopicId field (TopicIdType 10)."""
    d = Driver()
    d.connect(A1, "n1")
    out = d.rx(A1, Publish(short_name_to_id("t1"), b"v", topic_id_type=TopicIdType.SHORT_NAME))
    assert out == [PublishUpstream("n1", "t1", b"v", 0, False)]


@pytest.mark.parametrize("name", ["+/", "a#", "#a", "\x00a"])
def test_short_topic_name_with_wildcard_or_nul_is_refused(name: str) -> None:
    """A short name that is not a valid MQTT topic never reaches the broker (it would drop us)."""
    d = Driver()
    d.connect(A1, "n1")
    topic_id = short_name_to_id(name)
    out = d.rx(A1, Publish(topic_id, b"v", QoS.AT_LEAST_ONCE, 5, TopicIdType.SHORT_NAME), 1.0)
    assert out == [SendFrame(A1, Puback(topic_id, 5, ReturnCode.REJECTED_INVALID_TOPIC_ID))]
    out = d.rx(A1, Publish(topic_id, b"v", QoS.MINUS_ONE, 0, TopicIdType.SHORT_NAME), 1.0)
    assert out == []


@pytest.mark.parametrize("name", ["a#", "#a", "\x00a", "++"])
def test_short_subscription_that_is_no_valid_filter_is_refused(name: str) -> None:
    """SUBSCRIBE by a short name that is not a valid filter is refused, not sent upstream."""
    d = Driver()
    d.connect(A1, "n1")
    out = d.rx(
        A1,
        Subscribe(1, TopicIdType.SHORT_NAME, topic_id=short_name_to_id(name)),
        1.0,
    )
    assert frames(out) == [Suback(0, 1, ReturnCode.REJECTED_INVALID_TOPIC_ID)]
    assert len(out) == 1


def test_topic_helpers() -> None:
    """Filter syntax and matching as in MQTT 3.1.1 §4.7."""
    assert valid_filter("a/+/c") and valid_filter("#") and valid_filter("a/#")
    assert not valid_filter("a/#/c") and not valid_filter("a+") and not valid_filter("")
    assert valid_topic_name("a/b") and not valid_topic_name("a/+") and not valid_topic_name("")
    assert topic_matches("a/+/c", "a/b/c") and topic_matches("a/#", "a")
    assert topic_matches("a/#", "a/b/c") and not topic_matches("a/+", "a/b/c")
    assert not topic_matches("#", "$SYS/x") and not topic_matches("+/x", "$SYS/x")
    assert topic_matches("$SYS/#", "$SYS/x")


def test_registry_full_of_ids_refuses_instead_of_looping() -> None:
    """When every id is taken (pre-defined ones included) register() says no, never spins."""
    predefined = {i: f"p/{i}" for i in range(1, 0xFFFE - 1)}  # leaves 0xFFFD and 0xFFFE
    registry = TopicRegistry(predefined, limit=100)
    assert registry.register("a") == 0xFFFD
    assert registry.register("b") == 0xFFFE
    assert registry.register("c") is None
    assert registry.register("a") == 0xFFFD

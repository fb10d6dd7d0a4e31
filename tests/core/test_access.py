"""Access control in the pure core: the allow-list and topic rules ([access]), both modes."""

from __future__ import annotations

import logging
from collections.abc import Hashable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core import PublishUpstream, SendFrame, SubscribeUpstream
from gateway.core.access import (
    AccessControl,
    AccessPolicy,
    ClientPattern,
    TopicRule,
    expand_pattern,
    filter_covers,
)
from gateway.core.settings import CoreSettings, Mode
from gateway.core.topics import topic_matches
from gateway.protocol.constants import QoS, ReturnCode, TopicIdType
from gateway.protocol.messages import (
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    Puback,
    Publish,
    Regack,
    Register,
    Suback,
    Subscribe,
    WillMsg,
    WillMsgReq,
    WillTopic,
    WillTopicReq,
    WillTopicResp,
    WillTopicUpd,
    short_name_to_id,
)
from gateway.runtime import ForwardedAddress
from tests.core.helpers import Driver, frames, of_type
from transports.base import UdpAddress
from transports.serial import SerialAddress
from transports.xbee import XBeeAddress

Q0, Q1, QM1 = QoS.AT_MOST_ONCE, QoS.AT_LEAST_ONCE, QoS.MINUS_ONE
NOT_SUPPORTED = ReturnCode.REJECTED_NOT_SUPPORTED
U1 = UdpAddress("10.0.0.1", 1001)
U2 = UdpAddress("10.0.0.2", 1002)
X1 = XBeeAddress(0x0013A200_41B3C4D5)
X2 = XBeeAddress(0x0013A300_00000001)

RULES = (
    TopicRule(
        client_id="*",
        publish=("sensors/{client_id}/#",),
        subscribe=("cmd/{client_id}/#", "broadcast/#"),
    ),
)
PREDEFINED = {1: "sensors/n1/temp", 2: "sensors/n2/temp", 3: "cmd/n1/led", 4: "public/x"}


def driver(mode: Mode, policy: AccessPolicy, **overrides: object) -> Driver:
    """A core with ``policy``, time starting at 0."""
    return Driver(CoreSettings(mode=mode, access=policy, predefined=PREDEFINED, **overrides))  # type: ignore[arg-type]


def connect(d: Driver, address: Hashable, client_id: str, *, clean: bool = True) -> None:
    """CONNECT and (transparent mode) the broker's accept; asserts CONNACK accepted."""
    out = d.rx(address, Connect(client_id, 60, False, clean))
    if d.core.settings.mode is Mode.TRANSPARENT:
        out = d.core.on_upstream_session(client_id, True, 0, d.now)
    assert frames(out) == [Connack(ReturnCode.ACCEPTED)], out


@pytest.fixture(params=[Mode.AGGREGATING, Mode.TRANSPARENT], ids=lambda m: m.value)
def mode(request: pytest.FixtureRequest) -> Mode:
    """Every rule applies the same in both modes."""
    return Mode(request.param)


# ---------------------------------------------------------------------------- filter_covers


@pytest.mark.parametrize(
    ("pattern", "topic_filter", "covered"),
    [
        ("sensors/n1/#", "sensors/n1/+/temp", True),
        ("sensors/n1/#", "sensors/n1/#", True),
        ("sensors/n1/#", "sensors/n1", True),  # "a/#" matches "a" itself
        ("sensors/n1/#", "sensors/n1/a/b/c", True),
        ("sensors/n1/#", "sensors/+/temp", False),
        ("sensors/n1/#", "sensors/#", False),
        ("sensors/n1/#", "sensors/n2/temp", False),
        ("sensors/+/temp", "sensors/n1/temp", True),
        ("sensors/+/temp", "sensors/+/temp", True),
        ("sensors/+/temp", "sensors/#", False),
        ("sensors/+/temp", "sensors/+/+", False),
        ("sensors/+/temp", "sensors/n1/temp/x", False),
        ("sensors/+", "sensors/n1/#", False),
        ("a/+/#", "a/#", False),  # a/# matches "a", which a/+/# does not
        ("a/+/#", "a/b/#", True),
        ("#", "anything/at/all", True),
        ("#", "$SYS/broker/load", False),  # a leading wildcard never matches $ topics
        ("+/#", "$SYS/#", False),
        ("$SYS/#", "$SYS/broker/+", True),
        ("a//b", "a//b", True),
        ("a/+/b", "a//b", True),
    ],
)
def test_filter_covers(pattern: str, topic_filter: str, covered: bool) -> None:
    """A pattern covers a filter when every topic the filter matches, it matches too."""
    assert filter_covers(pattern, topic_filter) is covered


_LEVEL = st.sampled_from(["a", "b", "", "$x"])
_TOPIC = st.lists(_LEVEL, min_size=1, max_size=4).map("/".join)
_FILTER = st.lists(st.sampled_from(["a", "b", "", "+", "$x"]), min_size=1, max_size=4).flatmap(
    lambda levels: st.sampled_from(["/".join(levels), "/".join([*levels, "#"]), "#"])
)


@given(_FILTER, _TOPIC)
def test_covers_a_topic_is_plain_matching(pattern: str, topic: str) -> None:
    """For a concrete topic, filter_covers agrees with the core's own matching."""
    assert filter_covers(pattern, topic) is topic_matches(pattern, topic)


@given(_FILTER, _FILTER, _TOPIC)
def test_covers_is_sound(pattern: str, topic_filter: str, topic: str) -> None:
    """If the pattern covers the filter, every topic the filter matches is matched by it."""
    if filter_covers(pattern, topic_filter) and topic_matches(topic_filter, topic):
        assert topic_matches(pattern, topic)


@pytest.mark.parametrize("client_id", ["+", "#", "a/b", "", "x\x00"])
def test_client_id_that_would_widen_a_template_gets_nothing(client_id: str) -> None:
    """{client_id} is filled only with a single, wildcard-free topic level."""
    assert expand_pattern("sensors/{client_id}/#", client_id) is None
    assert expand_pattern("public/#", client_id) == "public/#"
    assert expand_pattern("sensors/{client_id}/#", "n-1") == "sensors/n-1/#"


def test_policy_validates_patterns() -> None:
    """Bad patterns and transports are refused when the policy is built."""
    with pytest.raises(ValueError, match="not a valid topic filter"):
        TopicRule(publish=("a/#/b",))
    with pytest.raises(ValueError, match="placeholder"):
        TopicRule(subscribe=("a/{clientid}",))
    with pytest.raises(ValueError, match="transport"):
        ClientPattern("x", transport="lora")


def test_client_pattern_matches_transport_by_address_class() -> None:
    """transport= names the config type; the core compares address class names only."""
    xbee = ClientPattern("sensor-*", transport="xbee", address="0013a200*")  # case-insensitive
    assert xbee.matches("sensor-1", X1)
    assert not xbee.matches("sensor-1", X2)  # wrong address
    assert not xbee.matches("sensor-1", U1)  # wrong transport
    assert not xbee.matches("Sensor-1", X1)  # ClientIds are case-sensitive
    assert ClientPattern("*", transport="udp", address="10.0.0.*").matches("n", U1)
    assert ClientPattern("*", transport="serial").matches("n", SerialAddress("/dev/ttyS0"))
    forwarded = ForwardedAddress(U1, b"\x01\x02")
    assert ClientPattern("*", transport="forwarded", address="10.0.0.1:1001/0102").matches(
        "n", forwarded
    )
    assert not ClientPattern("*", transport="udp").matches("n", forwarded)


def test_grants_are_the_union_of_matching_rules() -> None:
    """Several rules may match one node; it gets what any of them grants, nothing else."""
    access = AccessControl(
        AccessPolicy(
            rules=(
                TopicRule("*", publish=("sensors/{client_id}/#",)),
                TopicRule("admin-*", publish=("cmd/#",), subscribe=("#",)),
            )
        )
    )
    assert access.may_publish("admin-1", "cmd/n1/led")
    assert access.may_publish("admin-1", "sensors/admin-1/t")
    assert access.may_subscribe("admin-1", "sensors/+/t")
    assert not access.may_publish("n1", "cmd/n1/led")
    assert not access.may_subscribe("n1", "sensors/n1/t")  # no subscribe grant at all
    empty = AccessControl(AccessPolicy())
    assert empty.may_publish("anyone", "any/topic") and empty.may_subscribe("x", "#")


# ---------------------------------------------------------------------------- default: open


def test_default_policy_allows_everything(mode: Mode) -> None:
    """No allow-list and no rules: any ClientId connects and uses any topic."""
    d = driver(mode, AccessPolicy())
    connect(d, U1, "whoever")
    assert frames(d.rx(U1, Register(0, 1, "any/topic"))) == [Regack(5, 1)]  # 1-4 predefined
    out = d.rx(U1, Subscribe(2, topic_name="#", qos=Q1))
    assert frames(out) == [Suback(0, 2, ReturnCode.ACCEPTED, Q1)]


# ---------------------------------------------------------------------------- allow-list

ALLOW = AccessPolicy(
    clients=(
        ClientPattern("sensor-*", transport="xbee", address="0013A200*"),
        ClientPattern("tool"),
    )
)


def test_allow_list_refuses_unknown_client_id(mode: Mode, caplog: pytest.LogCaptureFixture) -> None:
    """Unknown ClientId: CONNACK rejected: not supported (0x03), a WARNING, no session."""
    d = driver(mode, ALLOW)
    with caplog.at_level(logging.WARNING):
        out = d.rx(U1, Connect("intruder", 60))
    assert out == [SendFrame(U1, Connack(NOT_SUPPORTED))]
    assert "intruder" not in d.core.sessions
    assert d.core.counters["connect_refused_access"] == 1
    assert [r.levelno for r in caplog.records if "allow-list" in r.getMessage()] == [
        logging.WARNING
    ]
    connect(d, U1, "tool")  # any transport, any address
    connect(d, X1, "sensor-7")


def test_allow_list_binds_transport_and_address(mode: Mode) -> None:
    """sensor-* only over XBee from 0013A200*: the same ClientId elsewhere is refused."""
    d = driver(mode, ALLOW)
    assert d.rx(U1, Connect("sensor-7", 60)) == [SendFrame(U1, Connack(NOT_SUPPORTED))]
    assert d.rx(X2, Connect("sensor-7", 60)) == [SendFrame(X2, Connack(NOT_SUPPORTED))]
    connect(d, X1, "sensor-7")


def test_refused_connect_cannot_hijack_a_session(mode: Mode) -> None:
    """A CONNECT with a bound node's ClientId from elsewhere leaves its session untouched."""
    d = driver(mode, ALLOW)
    connect(d, X1, "sensor-7")
    assert d.rx(U1, Connect("sensor-7", 60)) == [SendFrame(U1, Connack(NOT_SUPPORTED))]
    session = d.session("sensor-7")
    assert session.address == X1 and d.core.by_address[X1] == "sensor-7"
    assert d.rx(X1, Pingreq()) == [SendFrame(X1, Pingresp())]


def test_pingreq_with_client_id_cannot_move_a_sleeper_elsewhere(mode: Mode) -> None:
    """PINGREQ(ClientId) from an address the allow-list refuses: no answer, nothing moves."""
    d = driver(mode, ALLOW)
    connect(d, X1, "sensor-7", clean=False)
    d.rx(X1, Disconnect(600))
    assert d.rx(U1, Pingreq("sensor-7")) == []
    assert d.session("sensor-7").address == X1
    assert d.core.counters["pingreq_refused_access"] == 1
    assert frames(d.rx(X1, Pingreq("sensor-7"))) == [Pingresp()]


def test_allow_list_warning_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    """A flood of refused ClientIds logs one WARNING per 10 s, then says how many it skipped."""
    d = driver(Mode.AGGREGATING, ALLOW, connect_per_second=0.0)
    with caplog.at_level(logging.WARNING):
        for i in range(50):
            d.rx(U1, Connect(f"x{i}", 60))
        d.rx(U1, Connect("late", 60), now=11.0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "49 more refused" in warnings[1]
    assert d.core.counters["connect_refused_access"] == 51


# ---------------------------------------------------------------------------- topic rules

POLICY = AccessPolicy(rules=RULES)


def test_register_of_forbidden_topic_gets_not_supported(mode: Mode) -> None:
    """REGACK 0x03, not 0x02 (invalid topic id would make the node register again forever)."""
    d = driver(mode, POLICY)
    connect(d, U1, "n1")
    assert d.rx(U1, Register(0, 1, "sensors/n2/temp")) == [
        SendFrame(U1, Regack(0, 1, NOT_SUPPORTED))
    ]
    assert d.rx(U1, Register(0, 2, "sensors/n1/temp")) == [SendFrame(U1, Regack(5, 2))]
    assert d.core.counters["register_refused_access"] == 1


@pytest.mark.parametrize("qos", [Q0, Q1])
def test_publish_to_forbidden_predefined_or_short_topic(mode: Mode, qos: QoS) -> None:
    """PUBACK 0x03 and nothing forwarded, at QoS 0 too; allowed topics go up."""
    d = driver(mode, POLICY)
    connect(d, U1, "n1")
    msg_id = 5 if qos else 0
    out = d.rx(U1, Publish(2, b"x", qos, msg_id, TopicIdType.PREDEFINED))
    assert out == [SendFrame(U1, Puback(2, msg_id, NOT_SUPPORTED))]
    short = short_name_to_id("zz")
    out = d.rx(U1, Publish(short, b"x", qos, msg_id, TopicIdType.SHORT_NAME))
    assert out == [SendFrame(U1, Puback(short, msg_id, NOT_SUPPORTED))]
    assert d.core.counters["publish_refused_access"] == 2
    out = d.rx(U1, Publish(1, b"ok", qos, msg_id, TopicIdType.PREDEFINED))
    assert [u.topic for u in d.uplinks(out)] == ["sensors/n1/temp"]


def test_publish_on_a_gateway_registered_id_is_checked_too(mode: Mode) -> None:
    """An id the gateway REGISTERed for downlink (cmd/n1/x) does not make it publishable."""
    d = driver(mode, POLICY)
    connect(d, U1, "n1")
    assert frames(d.rx(U1, Subscribe(1, topic_name="cmd/n1/#", qos=Q0)))[0].return_code == 0
    out = d.broker("cmd/n1/x", b"on", client_id="n1")
    register = next(m for m in frames(out) if isinstance(m, Register))
    d.rx(U1, Regack(register.topic_id, register.msg_id))
    out = d.rx(U1, Publish(register.topic_id, b"x", Q1, 9))
    assert out == [SendFrame(U1, Puback(register.topic_id, 9, NOT_SUPPORTED))]
    assert not d.uplinks(out)


def test_subscribe_rules_and_wildcard_cover(mode: Mode) -> None:
    """A filter is allowed only when an allowed pattern covers it; else SUBACK 0x03."""
    d = driver(mode, POLICY)
    connect(d, U1, "n1")
    cases = [
        ("cmd/n1/+/set", ReturnCode.ACCEPTED),
        ("cmd/n1/#", ReturnCode.ACCEPTED),
        ("broadcast/news", ReturnCode.ACCEPTED),
        ("cmd/#", NOT_SUPPORTED),
        ("cmd/+/led", NOT_SUPPORTED),
        ("cmd/n2/led", NOT_SUPPORTED),
        ("#", NOT_SUPPORTED),
    ]
    for msg_id, (topic_filter, code) in enumerate(cases, start=1):
        out = d.rx(U1, Subscribe(msg_id, topic_name=topic_filter, qos=Q0))
        assert [m.return_code for m in frames(out)] == [code], topic_filter
        assert bool(of_type(out, SubscribeUpstream)) is (code is ReturnCode.ACCEPTED)
    out = d.rx(U1, Subscribe(20, TopicIdType.PREDEFINED, topic_id=1, qos=Q0))
    assert frames(out) == [Suback(0, 20, NOT_SUPPORTED)]  # sensors/n1/temp: publish-only
    out = d.rx(U1, Subscribe(21, TopicIdType.PREDEFINED, topic_id=3, qos=Q0))
    assert frames(out) == [Suback(3, 21, ReturnCode.ACCEPTED)]
    assert d.core.counters["subscribe_refused_access"] == 5
    assert set(d.session("n1").subscriptions) == {
        "cmd/n1/+/set",
        "cmd/n1/#",
        "broadcast/news",
        "cmd/n1/led",
    }


def test_wildcard_client_id_gets_nothing_from_a_template(mode: Mode) -> None:
    """ClientId "+" must not turn sensors/{client_id}/# into sensors/+/#."""
    d = driver(mode, POLICY)
    connect(d, U1, "+")
    assert d.rx(U1, Register(0, 1, "sensors/n2/temp")) == [
        SendFrame(U1, Regack(0, 1, NOT_SUPPORTED))
    ]
    assert frames(d.rx(U1, Subscribe(2, topic_name="broadcast/#", qos=Q0)))[0].return_code == 0


def test_node_matched_by_no_rule_may_use_nothing(mode: Mode) -> None:
    """Once rules exist, they grant; a node no rule names gets nothing."""
    policy = AccessPolicy(rules=(TopicRule("sensor-*", publish=("#",)),))
    d = driver(mode, policy)
    connect(d, U1, "other")
    assert d.rx(U1, Register(0, 1, "a/b")) == [SendFrame(U1, Regack(0, 1, NOT_SUPPORTED))]


def test_forbidden_will_topic_refuses_the_connect(mode: Mode) -> None:
    """A will is a publish: on a forbidden topic the CONNECT is refused with 0x03."""
    d = driver(mode, POLICY)
    assert frames(d.rx(U1, Connect("n1", 60, True))) == [WillTopicReq()]
    assert d.rx(U1, WillTopic("sensors/n2/status", Q1)) == [SendFrame(U1, Connack(NOT_SUPPORTED))]
    assert frames(d.rx(U1, Connect("n1", 60, True))) == [WillTopicReq()]
    assert frames(d.rx(U1, WillTopic("sensors/n1/status", Q1))) == [WillMsgReq()]
    out = d.rx(U1, WillMsg(b"gone"))
    if mode is Mode.TRANSPARENT:
        out = d.core.on_upstream_session("n1", True, 0, d.now)
    assert frames(out) == [Connack(ReturnCode.ACCEPTED)]
    out = d.rx(U1, WillTopicUpd("cmd/n1/x", Q1))
    assert frames(out) == [WillTopicResp(NOT_SUPPORTED)]


def test_qos_minus_one_is_checked_with_the_senders_client_id(mode: Mode) -> None:
    """QoS -1: a known sender by its ClientId; an anonymous one as ClientId ""."""
    policy = AccessPolicy(
        rules=(TopicRule("*", publish=("sensors/{client_id}/#", "public/#")),),
    )
    d = driver(mode, policy)
    assert d.uplinks(d.rx(U2, Publish(4, b"a", QM1, 0, TopicIdType.PREDEFINED)))  # public/x
    assert not d.rx(U2, Publish(1, b"a", QM1, 0, TopicIdType.PREDEFINED))  # templated: no
    connect(d, U1, "n1")
    out = d.rx(U1, Publish(1, b"b", QM1, 0, TopicIdType.PREDEFINED))
    assert [u.topic for u in of_type(out, PublishUpstream)] == ["sensors/n1/temp"]
    assert not d.rx(U1, Publish(2, b"b", QM1, 0, TopicIdType.PREDEFINED))
    assert d.core.counters["minus_one_refused_access"] == 2


def test_anonymous_qos_minus_one_needs_the_allow_list(mode: Mode) -> None:
    """With an allow-list, a QoS -1 sender without session is ClientId "": "*" may admit it."""
    d = driver(mode, ALLOW)
    assert not d.rx(U2, Publish(4, b"a", QM1, 0, TopicIdType.PREDEFINED))
    assert d.core.counters["minus_one_refused_access"] == 1
    open_udp = AccessPolicy(clients=(ClientPattern("*", transport="udp"),))
    d = driver(mode, open_udp)
    assert d.uplinks(d.rx(U2, Publish(4, b"a", QM1, 0, TopicIdType.PREDEFINED)))
    assert not d.rx(X1, Publish(4, b"a", QM1, 0, TopicIdType.PREDEFINED))

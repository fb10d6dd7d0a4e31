"""The pure client state machine, driven with explicit ``now``; frames checked byte for byte."""

from __future__ import annotations

import pytest

from firmware_sim.client import (
    Asleep,
    ClientState,
    Connected,
    ConnectRejected,
    Disconnected,
    Event,
    GatewayFound,
    Lost,
    MqttSnClient,
    Output,
    Pong,
    Published,
    Received,
    Registered,
    Retransmitted,
    Subscribed,
    TopicLearned,
    Unsubscribed,
    WakeDone,
    Will,
)
from gateway.errors import LocalProtocolError
from gateway.protocol.codec import decode, encode
from gateway.protocol.constants import QoS, ReturnCode, TopicIdType
from gateway.protocol.messages import Message

NODE1 = b"node1".hex()


def frames(outputs: list[Output]) -> list[str]:
    """The messages among ``outputs`` as spaced upper-case hex, like the spec's examples."""
    return [encode(o).hex(" ").upper() for o in outputs if isinstance(o, Message)]


def events(outputs: list[Output]) -> list[Event]:
    return [o for o in outputs if isinstance(o, Event)]


def gw(frame: str) -> Message:
    """A message from the gateway, given as hex."""
    return decode(bytes.fromhex(frame))


def connected(client_id: str = "node1", keepalive: int = 60, **kw: object) -> MqttSnClient:
    client = MqttSnClient(client_id, **kw)  # type: ignore[arg-type]
    client.connect(0.0, keepalive=keepalive)
    assert events(client.receive(gw("03 05 00"), 0.0)) == [Connected()]
    return client


# ---------------------------------------------------------------- connect


def test_connect_without_will_exact_frames() -> None:
    """CONNECT matches the spec example; CONNACK accepted makes the client ACTIVE."""
    client = MqttSnClient("node1")
    assert frames(client.connect(0.0, keepalive=60)) == ["0B 04 04 01 00 3C 6E 6F 64 65 31"]
    assert client.state is ClientState.CONNECTING
    assert client.receive(gw("03 05 00"), 0.2) == [Connected()]
    assert client.state is ClientState.ACTIVE


def test_connect_with_will_answers_prompts() -> None:
    """Will=1: WILLTOPICREQ -> WILLTOPIC (QoS/retain flags), WILLMSGREQ -> WILLMSG, CONNACK."""
    client = MqttSnClient("node1")
    will = Will("dead/node1", b"bye", QoS.AT_LEAST_ONCE, retain=True)
    out = client.connect(0.0, keepalive=30, clean_session=False, will=will)
    assert frames(out) == ["0B 04 08 01 00 1E 6E 6F 64 65 31"]
    assert frames(client.receive(gw("02 06"), 0.1)) == [
        "0D 07 30 " + b"dead/node1".hex(" ").upper()
    ]
    assert frames(client.receive(gw("02 08"), 0.2)) == ["05 09 62 79 65"]
    assert client.receive(gw("03 05 00"), 0.3) == [Connected()]


def test_connect_prompted_without_will_sends_empty_willtopic() -> None:
    """A gateway asking for a will we do not have gets the empty WILLTOPIC (delete)."""
    client = MqttSnClient("node1")
    client.connect(0.0)
    assert frames(client.receive(gw("02 06"), 0.1)) == ["02 07"]


def test_connect_rejected() -> None:
    """CONNACK with a return code reports it and leaves the client DISCONNECTED."""
    client = MqttSnClient("node1")
    client.connect(0.0)
    assert client.receive(gw("03 05 03"), 0.1) == [
        ConnectRejected(ReturnCode.REJECTED_NOT_SUPPORTED)
    ]
    assert client.state is ClientState.DISCONNECTED
    assert client.next_deadline() is None


def test_connect_retransmitted_then_lost() -> None:
    """An unanswered CONNECT is resent N_RETRY times, T_RETRY apart, then the client is LOST."""
    client = MqttSnClient("node1", t_retry=10.0, n_retry=2)
    client.connect(0.0)
    assert client.tick(9.9) == []
    out = client.tick(10.0)
    assert frames(out) == ["0B 04 04 01 00 3C 6E 6F 64 65 31"]
    assert isinstance(out[0], Retransmitted) and out[0].attempt == 2
    assert len(frames(client.tick(20.0))) == 1
    assert client.tick(30.0) == [Lost("no answer to CONNECT", ClientState.CONNECTING)]
    assert client.state is ClientState.LOST


def test_commands_need_a_connection() -> None:
    """Publishing or registering while disconnected is our bug: LocalProtocolError."""
    client = MqttSnClient("node1")
    with pytest.raises(LocalProtocolError):
        client.publish(1, b"x", 0.0)
    with pytest.raises(LocalProtocolError):
        client.register("a/b", 0.0)
    with pytest.raises(LocalProtocolError):
        connected().register("a/+", 0.0)


# ---------------------------------------------------------------- register / publish


def test_register_exact_frames() -> None:
    """REGISTER and its REGACK match the spec example; the id is remembered."""
    client = connected()
    msg_id, out = client.register("sensors/t", 1.0)
    assert msg_id == 1
    assert frames(out) == ["0F 0A 00 00 00 01 73 65 6E 73 6F 72 73 2F 74"]
    assert client.receive(gw("07 0B 00 01 00 01 00"), 1.1) == [Registered(1, "sensors/t", 1)]
    assert client.topic_id("sensors/t") == 1
    assert client.in_flight is None


def test_register_rejected_is_not_remembered() -> None:
    """A REGACK with a return code is reported and the name stays unknown."""
    client = connected()
    client.register("a/b", 1.0)
    out = client.receive(gw("07 0B 00 00 00 01 01"), 1.1)
    assert out == [Registered(1, "a/b", 0, ReturnCode.REJECTED_CONGESTION)]
    assert client.topic_id("a/b") is None


def test_publish_qos0_exact_frame() -> None:
    """QoS 0: MsgId 0, nothing in flight, no timer but the keep-alive."""
    client = connected()
    msg_id, out = client.publish(1, b"21.5", 5.0)
    assert msg_id == 0
    assert frames(out) == ["0B 0C 00 00 01 00 00 32 31 2E 35"]
    assert client.in_flight is None
    assert client.next_deadline() == 65.0


def test_publish_qos1_exact_frames() -> None:
    """QoS 1: the spec example, then PUBACK ends it."""
    client = connected()
    client.register("sensors/t", 0.0)
    client.receive(gw("07 0B 00 01 00 01 00"), 0.0)
    msg_id, out = client.publish(1, b"21.5", 1.0, qos=QoS.AT_LEAST_ONCE)
    assert msg_id == 2
    assert frames(out) == ["0B 0C 20 00 01 00 02 32 31 2E 35"]
    assert client.next_deadline() == 11.0
    assert client.receive(gw("07 0D 00 01 00 02 00"), 1.2) == [Published(2, 1)]
    assert client.in_flight is None


def test_publish_qos2_exact_frames() -> None:
    """QoS 2: PUBLISH -> PUBREC -> PUBREL -> PUBCOMP."""
    client = connected()
    msg_id, out = client.publish(1, b"x", 1.0, qos=QoS.EXACTLY_ONCE, retain=True)
    assert (msg_id, frames(out)) == (1, ["08 0C 50 00 01 00 01 78"])
    assert frames(client.receive(gw("04 0F 00 01"), 1.1)) == ["04 10 00 01"]
    assert client.in_flight == 1
    assert client.receive(gw("04 0E 00 01"), 1.2) == [Published(1, 1)]
    assert client.in_flight is None


def test_publish_qos_minus_one_without_connection() -> None:
    """QoS -1 with a short topic name goes out while disconnected (spec example)."""
    client = MqttSnClient("node1")
    msg_id, out = client.publish(
        0x7431, b"ON", 0.0, qos=QoS.MINUS_ONE, topic_id_type=TopicIdType.SHORT_NAME
    )
    assert (msg_id, frames(out)) == (0, ["09 0C 62 74 31 00 00 4F 4E"])
    assert client.next_deadline() is None


def test_publish_rejected_invalid_topic_forgets_the_id() -> None:
    """PUBACK 0x02 reports the rejection and drops the mapping so the caller re-REGISTERs."""
    client = connected()
    client.register("a/b", 0.0)
    client.receive(gw("07 0B 00 09 00 01 00"), 0.0)
    client.publish(9, b"x", 1.0, qos=QoS.AT_LEAST_ONCE)
    out = client.receive(gw("07 0D 00 09 00 02 02"), 1.1)
    assert out == [Published(2, 9, ReturnCode.REJECTED_INVALID_TOPIC_ID)]
    assert client.topic_id("a/b") is None


def test_one_request_in_flight_the_rest_queued() -> None:
    """Only one QoS 1/2 PUBLISH (or REGISTER...) is outstanding; each answer releases the next."""
    client = connected()
    sent = [client.publish(1, bytes([i]), 1.0, qos=QoS.AT_LEAST_ONCE) for i in range(3)]
    assert [msg_id for msg_id, _ in sent] == [1, 2, 3]
    assert [len(frames(out)) for _, out in sent] == [1, 0, 0]
    msg_id, out = client.register("late", 1.0)
    assert (msg_id, out, client.queued) == (4, [], 3)
    # QoS 0 is not held back.
    assert len(frames(client.publish(1, b"q0", 1.0)[1])) == 1
    out = client.receive(gw("07 0D 00 01 00 01 00"), 2.0)
    assert events(out) == [Published(1, 1)]
    assert frames(out) == ["08 0C 20 00 01 00 02 01"]
    assert client.next_deadline() == 12.0
    client.receive(gw("07 0D 00 01 00 02 00"), 3.0)
    out = client.receive(gw("07 0D 00 01 00 03 00"), 4.0)
    assert frames(out) == ["0A 0A 00 00 00 04 6C 61 74 65"]
    assert client.queued == 0


def test_unsolicited_ack_ignored(caplog: pytest.LogCaptureFixture) -> None:
    """An ack for nothing in flight changes nothing but a WARNING."""
    client = connected()
    assert client.receive(gw("07 0D 00 01 00 07 00"), 1.0) == []
    assert client.receive(gw("04 0E 00 07"), 1.0) == []
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING"]


def test_msg_id_wraps_and_skips_zero_and_in_use() -> None:
    """MsgIds run 1..65535, never 0, never one still outstanding."""
    client = connected()
    client.publish(1, b"a", 0.0, qos=QoS.AT_LEAST_ONCE)  # id 1, in flight
    client._next_msg_id = 0xFFFF  # jump to the end of the range
    ids = [client.publish(1, b"b", 0.0, qos=QoS.AT_LEAST_ONCE)[0] for _ in range(2)]
    assert ids == [0xFFFF, 2]


# ---------------------------------------------------------------- retransmission


def test_retransmission_with_dup_then_give_up() -> None:
    """T_RETRY resends with DUP and the same MsgId; after N_RETRY the client is LOST."""
    client = connected(t_retry=10.0, n_retry=3)
    client.publish(1, b"21.5", 0.0, qos=QoS.AT_LEAST_ONCE)
    client.publish(1, b"next", 0.0, qos=QoS.AT_LEAST_ONCE)
    assert client.tick(9.99) == []
    for attempt, now in ((2, 10.0), (3, 20.0), (4, 30.0)):
        out = client.tick(now)
        assert frames(out) == ["0B 0C A0 00 01 00 01 32 31 2E 35"]
        assert isinstance(out[0], Retransmitted) and out[0].attempt == attempt
    assert client.tick(40.0) == [Lost("no answer to PUBLISH 1", ClientState.ACTIVE)]
    assert client.state is ClientState.LOST
    assert (client.in_flight, client.queued, client.next_deadline()) == (None, 0, None)


def test_pubrel_retransmitted() -> None:
    """After PUBREC the retransmitted message is PUBREL (no DUP flag exists on it)."""
    client = connected()
    client.publish(1, b"x", 0.0, qos=QoS.EXACTLY_ONCE)
    client.receive(gw("04 0F 00 01"), 1.0)
    assert frames(client.tick(11.0)) == ["04 10 00 01"]


def test_subscribe_exact_frames_and_dup_retransmission() -> None:
    """SUBSCRIBE QoS 1 to a wildcard; the retransmission carries DUP; SUBACK id 0."""
    client = connected()
    msg_id, out = client.subscribe("sensors/#", 0.0, qos=QoS.AT_LEAST_ONCE)
    assert frames(out) == ["0E 12 20 00 01 73 65 6E 73 6F 72 73 2F 23"]
    assert frames(client.tick(10.0)) == ["0E 12 A0 00 01 73 65 6E 73 6F 72 73 2F 23"]
    out = client.receive(gw("08 13 20 00 00 00 01 00"), 10.5)
    assert out == [Subscribed(1, 0, QoS.AT_LEAST_ONCE)]
    msg_id, out = client.unsubscribe("sensors/#", 11.0)
    assert (msg_id, frames(out)) == (2, ["0E 14 00 00 02 73 65 6E 73 6F 72 73 2F 23"])
    assert client.receive(gw("04 15 00 02"), 11.1) == [Unsubscribed(2)]


# ---------------------------------------------------------------- keep-alive


def test_keepalive_pingreq_timing() -> None:
    """PINGREQ goes out one keep-alive period after the last message sent."""
    client = connected(keepalive=60)
    assert client.next_deadline() == 60.0
    client.publish(1, b"x", 30.0)
    assert client.next_deadline() == 90.0
    assert client.tick(89.0) == []
    assert frames(client.tick(90.0)) == ["02 16"]
    assert client.next_deadline() == 100.0  # now T_RETRY for the PINGRESP
    assert client.receive(gw("02 17"), 90.5) == [Pong()]
    assert client.next_deadline() == 150.0


def test_keepalive_unanswered_is_lost() -> None:
    """PINGREQ without PINGRESP N_RETRY times: LOST."""
    client = connected(keepalive=60, n_retry=1)
    client.tick(60.0)
    assert frames(client.tick(70.0)) == ["02 16"]
    assert client.tick(80.0) == [Lost("no answer to PINGREQ", ClientState.ACTIVE)]


def test_gateway_pingreq_answered() -> None:
    """The gateway may ping us; we answer PINGRESP."""
    assert frames(connected().receive(gw("02 16"), 1.0)) == ["02 17"]


# ---------------------------------------------------------------- sleep / wake


def test_sleep_wake_sequence() -> None:
    """Fig. 5: DISCONNECT(300), asleep; PINGREQ(ClientId), REGISTER + PUBLISH, PINGRESP."""
    client = connected()
    assert frames(client.sleep(300, 1.0)) == ["04 18 01 2C"]
    assert client.receive(gw("02 18"), 1.1) == [Asleep(300)]
    assert client.state is ClientState.ASLEEP
    assert client.next_deadline() is None
    assert frames(client.wake(200.0)) == ["07 16 " + b"node1".hex(" ").upper()]
    assert client.state is ClientState.AWAKE
    out = client.receive(gw("0B 0A 00 05 00 09 63 6D 64 2F 78"), 200.1)  # REGISTER 5 "cmd/x"
    assert frames(out) == ["07 0B 00 05 00 09 00"]
    assert events(out) == [TopicLearned("cmd/x", 5)]
    out = client.receive(gw("09 0C 20 00 05 00 0A 6F 6E"), 200.2)  # PUBLISH QoS 1 "on"
    assert events(out) == [Received("cmd/x", b"on", QoS.AT_LEAST_ONCE, False, 5)]
    assert frames(out) == ["07 0D 00 05 00 0A 00"]
    assert client.receive(gw("02 17"), 200.3) == [WakeDone(1)]
    assert client.state is ClientState.ASLEEP


def test_awake_timer_rearmed_then_back_to_sleep() -> None:
    """Awake: every message but PINGRESP re-arms T_RETRY; no PINGRESP at all -> asleep again."""
    client = connected(n_retry=1)
    client.sleep(60, 0.0)
    client.receive(gw("02 18"), 0.0)
    client.wake(100.0)
    client.receive(gw("0B 0A 00 05 00 09 63 6D 64 2F 78"), 105.0)
    assert client.next_deadline() == 115.0
    assert frames(client.tick(115.0)) == ["07 16 " + b"node1".hex(" ").upper()]
    assert client.tick(125.0) == [WakeDone(0, timed_out=True)]
    assert client.state is ClientState.ASLEEP


def test_sleep_refused_with_requests_in_flight() -> None:
    """Going to sleep with an unacknowledged request would lose it: refused."""
    client = connected()
    client.publish(1, b"x", 0.0, qos=QoS.AT_LEAST_ONCE)
    with pytest.raises(LocalProtocolError):
        client.sleep(60, 0.0)


def test_connect_from_asleep_keeps_registrations() -> None:
    """CONNECT with CleanSession=0 from ASLEEP keeps the topic table."""
    client = connected()
    client.register("a/b", 0.0)
    client.receive(gw("07 0B 00 03 00 01 00"), 0.0)
    client.sleep(60, 1.0)
    client.receive(gw("02 18"), 1.0)
    assert frames(client.connect(50.0, clean_session=False)) == ["0B 04 00 01 00 3C 6E 6F 64 65 31"]
    client.receive(gw("03 05 00"), 50.1)
    assert client.topic_id("a/b") == 3


# ---------------------------------------------------------------- PUBLISH from the gateway


def test_gateway_register_then_publish_qos2_with_dup() -> None:
    """REGISTER -> REGACK; QoS 2 PUBLISH delivered once even when retransmitted; PUBREL."""
    client = connected()
    client.receive(gw("09 0A 00 07 00 01 61 2F 62"), 1.0)  # REGISTER 7 "a/b"
    out = client.receive(gw("09 0C 40 00 07 00 02 68 69"), 1.1)
    assert events(out) == [Received("a/b", b"hi", QoS.EXACTLY_ONCE, False, 7)]
    assert frames(out) == ["04 0F 00 02"]
    assert client.receive(gw("09 0C C0 00 07 00 02 68 69"), 1.2) == [
        decode(bytes.fromhex("04 0F 00 02"))
    ]
    assert frames(client.receive(gw("04 10 00 02"), 1.3)) == ["04 0E 00 02"]


def test_gateway_publish_qos0_retained() -> None:
    """QoS 0 with retain: delivered, nothing sent back."""
    client = connected()
    client.receive(gw("09 0A 00 07 00 01 61 2F 62"), 1.0)
    out = client.receive(gw("09 0C 10 00 07 00 00 68 69"), 1.1)
    assert out == [Received("a/b", b"hi", QoS.AT_MOST_ONCE, True, 7)]


def test_gateway_publish_unknown_topic_rejected(caplog: pytest.LogCaptureFixture) -> None:
    """A PUBLISH on an id never registered: PUBACK 0x02, nothing delivered, a WARNING."""
    out = connected().receive(gw("09 0C 20 00 63 00 02 68 69"), 1.0)
    assert frames(out) == ["07 0D 00 63 00 02 02"]
    assert events(out) == []
    assert "unknown topic id 99" in caplog.text


def test_predefined_and_short_topics_resolved() -> None:
    """Predefined ids resolve through the table; short names are their two characters."""
    client = connected(predefined={20: "alarm/all"})
    out = client.receive(gw("09 0C 01 00 14 00 00 68 69"), 1.0)
    assert events(out) == [
        Received("alarm/all", b"hi", QoS.AT_MOST_ONCE, False, 20, TopicIdType.PREDEFINED)
    ]
    out = client.receive(gw("09 0C 02 74 31 00 00 68 69"), 1.0)
    assert events(out)[0] == Received(
        "t1", b"hi", QoS.AT_MOST_ONCE, False, 0x7431, TopicIdType.SHORT_NAME
    )


def test_subscribed_predefined_id_without_name_is_accepted() -> None:
    """A predefined id we subscribed to but cannot name is delivered with topic_name None."""
    client = connected()
    client.subscribe(33, 0.0)
    client.receive(gw("08 13 00 00 21 00 01 00"), 0.1)
    out = client.receive(gw("09 0C 01 00 21 00 00 68 69"), 1.0)
    assert events(out) == [
        Received(None, b"hi", QoS.AT_MOST_ONCE, False, 33, TopicIdType.PREDEFINED)
    ]


# ---------------------------------------------------------------- discovery / disconnect


def test_searchgw_backoff_and_gwinfo() -> None:
    """SEARCHGW repeats with doubling gaps until GWINFO; then DISCONNECTED with a gateway."""
    client = MqttSnClient("node1", t_searchgw=5.0)
    assert frames(client.search_gateway(0.0)) == ["03 01 00"]
    assert client.state is ClientState.SEARCHING
    assert client.next_deadline() == 5.0
    assert frames(client.tick(5.0)) == ["03 01 00"]
    assert client.next_deadline() == 15.0
    assert client.receive(gw("03 02 01"), 6.0) == [GatewayFound(1)]
    assert (client.state, client.gateway_id, client.next_deadline()) == (
        ClientState.DISCONNECTED,
        1,
        None,
    )


def test_searchgw_delay_and_heard_search() -> None:
    """While our delayed SEARCHGW waits, an identical one heard counts as ours."""
    client = MqttSnClient("node1", t_searchgw=5.0)
    assert client.search_gateway(0.0, radius=1, delay=2.0) == []
    client.receive(gw("03 01 02"), 0.5)  # another radius: not identical
    assert client.next_deadline() == 2.0
    client.receive(gw("03 01 01"), 1.0)
    assert client.next_deadline() == 6.0
    assert frames(client.tick(6.0)) == ["03 01 01"]
    assert client.next_deadline() == 16.0
    client.receive(gw("03 01 01"), 6.01)  # our own, looped back by multicast: no effect
    assert client.next_deadline() == 16.0


def test_advertise_records_gateway_until_n_adv_missed() -> None:
    """ADVERTISE feeds the gateway list; it expires after N_ADV silent periods."""
    client = MqttSnClient("node1", n_adv=2)
    assert client.receive(gw("05 00 03 03 84"), 0.0) == [GatewayFound(3)]
    assert client.receive(gw("05 00 03 03 84"), 900.0) == []
    assert [g.gw_id for g in client.known_gateways(2700.0)] == [3]
    assert client.known_gateways(2700.1) == []


def test_disconnect_and_gateway_disconnect() -> None:
    """Our DISCONNECT is acknowledged; an unsolicited one drops queued requests."""
    client = connected()
    assert frames(client.disconnect(1.0)) == ["02 18"]
    assert client.receive(gw("02 18"), 1.1) == [Disconnected()]
    client = connected()
    client.publish(1, b"x", 0.0, qos=QoS.AT_LEAST_ONCE)
    assert client.receive(gw("02 18"), 1.0) == [Disconnected(by_gateway=True)]
    assert (client.state, client.in_flight, client.next_deadline()) == (
        ClientState.DISCONNECTED,
        None,
        None,
    )

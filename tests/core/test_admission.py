"""Abuse resistance in the pure core: CONNECT rate per source, half-open cap, max_clients,
reaping of idle sessions, and no amplification towards an unknown source."""

from __future__ import annotations

from collections.abc import Hashable

import pytest

from gateway.core import Broadcast, SendFrame, SessionState
from gateway.core.access import AccessPolicy, ClientPattern
from gateway.core.admission import ConnectLimiter
from gateway.core.settings import CoreSettings, Mode
from gateway.protocol.codec import encode
from gateway.protocol.constants import MsgType, QoS, ReturnCode, TopicIdType
from gateway.protocol.messages import (
    Advertise,
    Connack,
    Connect,
    Disconnect,
    GwInfo,
    Message,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Regack,
    Register,
    SearchGw,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    WillMsg,
    WillMsgReq,
    WillMsgResp,
    WillMsgUpd,
    WillTopic,
    WillTopicReq,
    WillTopicResp,
    WillTopicUpd,
    short_name_to_id,
)
from tests.core.helpers import A1, A2, A3, Driver, frames

S = SessionState
CONGESTION = ReturnCode.REJECTED_CONGESTION


@pytest.fixture(params=[Mode.AGGREGATING, Mode.TRANSPARENT], ids=lambda m: m.value)
def mode(request: pytest.FixtureRequest) -> Mode:
    """Admission works the same in both modes."""
    return Mode(request.param)


def accept(d: Driver, client_id: str) -> list[Message]:
    """Transparent mode: the broker accepts the node's own connection."""
    if d.core.settings.mode is Mode.TRANSPARENT:
        return frames(d.core.on_upstream_session(client_id, True, 0, d.now))
    return []


# ---------------------------------------------------------------------------- token bucket


def test_token_bucket_burst_then_rate() -> None:
    """Burst 10 at once, then 5 per second; each source has its own bucket."""
    limiter = ConnectLimiter(5.0, 10)
    assert [limiter.allow("a", 0.0) for _ in range(11)] == [True] * 10 + [False]
    assert limiter.allow("b", 0.0)
    assert not limiter.allow("a", 0.1)
    assert limiter.allow("a", 0.3)  # 0.3 s refilled 1.5 tokens (0.5 spent on nothing)
    assert not limiter.allow("a", 0.3)
    assert [limiter.allow("a", 10.0) for _ in range(11)] == [True] * 10 + [False]


def test_token_bucket_table_is_bounded() -> None:
    """A flood of distinct (spoofed) sources never grows the table past its bound."""
    limiter = ConnectLimiter(5.0, 10, max_sources=100)
    for i in range(10_000):
        limiter.allow(("10.0.0.1", i), i * 1e-4)
        assert len(limiter) <= 100
    assert ConnectLimiter(0.0, 1).allow("x", 0.0)  # rate 0: off


def test_connect_flood_from_one_source_is_dropped_silently(mode: Mode) -> None:
    """Beyond its source's burst a CONNECT gets no answer at all, and is counted."""
    d = Driver(CoreSettings(mode=mode, connect_per_second=5.0, connect_burst=10))
    answered = [bool(d.rx(A1, Connect(f"n{i}", 60))) for i in range(15)]
    assert answered == [True] * 10 + [False] * 5
    assert d.core.counters["connect_rate_limited"] == 5
    assert d.rx(A2, Connect("other", 60))  # another source is not affected
    assert d.rx(A1, Connect("n99", 60), now=0.2)  # one token back after 0.2 s


# ---------------------------------------------------------------------------- half-open cap


def test_max_connecting_caps_half_open_sessions(mode: Mode) -> None:
    """Sessions stuck in CONNECTING (will prompt unanswered) are capped; beyond: congestion."""
    d = Driver(CoreSettings(mode=mode, max_connecting=2, t_retry=10.0, n_retry=3))
    assert frames(d.rx(A1, Connect("a", 60, True))) == [WillTopicReq()]
    assert frames(d.rx(A2, Connect("b", 60, True))) == [WillTopicReq()]
    assert d.rx(A3, Connect("c", 60, True)) == [SendFrame(A3, Connack(CONGESTION))]
    assert "c" not in d.core.sessions
    assert d.core.counters["connect_refused_max_connecting"] == 1
    # A retransmitted CONNECT of a half-open session is not a new one.
    assert frames(d.rx(A1, Connect("a", 60, True))) == [WillTopicReq()]
    # "a" finishes connecting: a slot frees up.
    d.rx(A1, WillTopic())
    accept(d, "a")
    assert d.state("a") is S.ACTIVE
    assert frames(d.rx(A3, Connect("c", 60, True))) == [WillTopicReq()]
    assert d.rx(A3, Connect("d", 60, True), now=1.0)[0].message == Connack(CONGESTION)  # type: ignore[attr-defined]
    # Half-open sessions are dropped after T_RETRY x (N_RETRY + 1); then others get in.
    d.run_until(41.0)
    assert "b" not in d.core.sessions and "c" not in d.core.sessions
    assert frames(d.rx(A3, Connect("d", 60, True))) == [WillTopicReq()]


def test_transparent_broker_wait_counts_as_half_open() -> None:
    """Transparent mode: a node waiting for its broker CONNACK holds a half-open slot."""
    d = Driver(CoreSettings(mode=Mode.TRANSPARENT, max_connecting=1))
    d.rx(A1, Connect("a", 60))
    assert d.state("a") is S.CONNECTING
    assert d.rx(A2, Connect("b", 60)) == [SendFrame(A2, Connack(CONGESTION))]
    accept(d, "a")
    assert d.rx(A2, Connect("b", 60))  # OpenUpstreamSession now


# ---------------------------------------------------------------------------- max_clients, reaping


def test_max_clients_congestion_and_reaping_frees_slots(mode: Mode) -> None:
    """Beyond max_clients: CONNACK congestion; idle sessions are reaped and free their slot."""
    d = Driver(CoreSettings(mode=mode, max_clients=2, session_expiry=100.0))
    for address, cid in ((A1, "a"), (A2, "b")):
        d.rx(address, Connect(cid, 10, False, False))  # persistent, keep-alive 10 s
        accept(d, cid)
    assert d.rx(A3, Connect("c", 10)) == [SendFrame(A3, Connack(CONGESTION))]
    assert d.core.counters["connect_refused_max_clients"] == 1
    assert d.rx(A1, Connect("a", 10, False, False))  # a known ClientId still connects
    accept(d, "a")
    # Both go silent: lost after 1.5 x keep-alive, kept as persistent sessions...
    d.run_until(20.0)
    assert d.state("a") is S.LOST and d.state("b") is S.LOST
    assert d.rx(A3, Connect("c", 10), now=20.0)[0].message == Connack(CONGESTION)  # type: ignore[attr-defined]
    # ...and forgotten after session_expiry: the slots are free again.
    d.run_until(200.0)
    assert d.core.sessions == {}
    assert d.core.counters["sessions_expired"] == 2
    d.rx(A3, Connect("c", 10))
    accept(d, "c")
    assert d.state("c") is S.ACTIVE


def test_disconnected_and_sleeping_sessions_are_reaped(mode: Mode) -> None:
    """A DISCONNECTed persistent session goes after session_expiry; an oversleeper is lost."""
    d = Driver(CoreSettings(mode=mode, session_expiry=50.0))
    d.rx(A1, Connect("gone", 60, False, False))
    accept(d, "gone")
    d.rx(A1, Disconnect())
    d.rx(A2, Connect("sleepy", 60, False, False))
    accept(d, "sleepy")
    d.rx(A2, Disconnect(10))
    d.run_until(16.0)  # 1.5 x the 10 s sleep
    assert d.state("gone") is S.DISCONNECTED and d.state("sleepy") is S.LOST
    d.run_until(100.0)
    assert d.core.sessions == {}


# ---------------------------------------------------------------------------- no amplification

KNOWN_AWAKE = "n1"
KNOWN_ASLEEP = "n2"
Q1, Q2, QM1 = QoS.AT_LEAST_ONCE, QoS.EXACTLY_ONCE, QoS.MINUS_ONE
SHORT = short_name_to_id("ab")

# What an unknown source may send, smallest forms first (every MsgType the core can receive;
# ENCAPSULATED is unwrapped by the runtime, whose reply carries the very same header).
UNKNOWN_SOURCE_SENDS: dict[MsgType, list[Message]] = {
    MsgType.ADVERTISE: [Advertise(9, 900)],
    MsgType.SEARCHGW: [SearchGw(0), SearchGw(3)],
    MsgType.GWINFO: [GwInfo(9)],
    MsgType.CONNECT: [Connect("x", 60), Connect("x", 60, True), Connect("x", 0, False, False)],
    MsgType.CONNACK: [Connack()],
    MsgType.WILLTOPICREQ: [WillTopicReq()],
    MsgType.WILLTOPIC: [WillTopic(), WillTopic("a")],
    MsgType.WILLMSGREQ: [WillMsgReq()],
    MsgType.WILLMSG: [WillMsg()],
    MsgType.REGISTER: [Register(0, 1, "a")],
    MsgType.REGACK: [Regack(1, 1)],
    MsgType.PUBLISH: [
        Publish(1, b"", QoS.AT_MOST_ONCE),
        Publish(1, b"", Q1, 1),
        Publish(1, b"", Q2, 1),
        Publish(1, b"", QM1, 0, TopicIdType.PREDEFINED),
        Publish(SHORT, b"", QM1, 0, TopicIdType.SHORT_NAME),
    ],
    MsgType.PUBACK: [Puback(1, 1)],
    MsgType.PUBCOMP: [Pubcomp(1)],
    MsgType.PUBREC: [Pubrec(1)],
    MsgType.PUBREL: [Pubrel(1)],
    MsgType.SUBSCRIBE: [Subscribe(1, topic_name="#"), Subscribe(1, TopicIdType.PREDEFINED, "", 1)],
    MsgType.SUBACK: [Suback(0, 1)],
    MsgType.UNSUBSCRIBE: [Unsubscribe(1, topic_name="a")],
    MsgType.UNSUBACK: [Unsuback(1)],
    MsgType.PINGREQ: [Pingreq(), Pingreq("x")],
    MsgType.PINGRESP: [Pingresp()],
    MsgType.DISCONNECT: [Disconnect(), Disconnect(60)],
    MsgType.WILLTOPICUPD: [WillTopicUpd(), WillTopicUpd("a")],
    MsgType.WILLTOPICRESP: [WillTopicResp()],
    MsgType.WILLMSGUPD: [WillMsgUpd()],
    MsgType.WILLMSGRESP: [WillMsgResp()],
}


def test_every_message_type_is_sampled() -> None:
    """The table below covers every MsgType (a new type must be added to it)."""
    assert set(UNKNOWN_SOURCE_SENDS) == set(MsgType) - {MsgType.ENCAPSULATED}


def busy_gateway(mode: Mode, policy: AccessPolicy | None = None) -> Driver:
    """A gateway with an active node and a sleeping one that has messages buffered."""
    settings = CoreSettings(mode=mode, predefined={1: "p/1"}, access=policy or AccessPolicy())
    d = Driver(settings)
    for address, cid in ((A1, KNOWN_AWAKE), (A2, KNOWN_ASLEEP)):
        d.rx(address, Connect(cid, 60, False, False))
        accept(d, cid)
        d.rx(address, Subscribe(1, topic_name="big/#", qos=Q1))
    d.rx(A2, Disconnect(600))
    for _ in range(5):
        d.broker("big/topic", b"x" * 200, 1)
    return d


def bytes_sent(actions: list[object], sender: Hashable) -> int:
    """Everything the gateway transmits in ``actions``; asserts it all goes to ``sender``."""
    total = 0
    for action in actions:
        if isinstance(action, SendFrame):
            assert action.address == sender, action
            total += len(encode(action.message))
        elif isinstance(action, Broadcast):
            assert action.via == sender, action  # GWINFO answers go back the way they came
            total += len(encode(action.message))
    return total


@pytest.mark.parametrize(
    "message",
    [m for samples in UNKNOWN_SOURCE_SENDS.values() for m in samples],
    ids=lambda m: f"{type(m).__name__}-{encode(m).hex()}",
)
def test_unknown_source_never_gets_more_bytes_than_it_sent(mode: Mode, message: Message) -> None:
    """No amplification: replies to an unknown source, now and later, fit in what it sent."""
    d = busy_gateway(mode)
    received = len(encode(message))
    sent = bytes_sent(d.rx(A3, message), A3)
    for _, actions in d.run_until(3600.0):
        sent += sum(
            len(encode(a.message)) for a in actions if isinstance(a, SendFrame) and a.address == A3
        )
    assert sent <= received, (message, sent, received)


def test_taking_over_a_known_client_id_needs_the_allow_list(mode: Mode) -> None:
    """A known ClientId from a new address takes the session over (§6.14: the address follows
    the node) and gets its buffered messages: more bytes than it sent. That is the protocol's
    trust model; binding ClientIds to addresses with [[access.clients]] closes it."""
    bound = AccessPolicy(
        clients=(
            ClientPattern(KNOWN_AWAKE, address=str(A1)),
            ClientPattern(KNOWN_ASLEEP, address=str(A2)),
        )
    )
    for message in (Connect(KNOWN_ASLEEP, 60, False, False), Pingreq(KNOWN_ASLEEP)):
        d = busy_gateway(mode)
        assert bytes_sent(d.rx(A3, message), A3) > len(encode(message))
        d = busy_gateway(mode, bound)
        assert bytes_sent(d.rx(A3, message), A3) <= len(encode(message))
        assert d.session(KNOWN_ASLEEP).address == A2


def test_flood_of_connects_from_unknown_sources_is_not_amplified(mode: Mode) -> None:
    """1000 CONNECTs from one source: replies total no more bytes than the requests."""
    d = busy_gateway(mode)
    received = sent = 0
    for i in range(1000):
        message = Connect(f"flood{i}", 60, bool(i % 2))
        received += len(encode(message))
        sent += bytes_sent(d.rx(A3, message, now=i * 0.01), A3)
    assert sent <= received
    assert d.core.counters["connect_rate_limited"] > 900

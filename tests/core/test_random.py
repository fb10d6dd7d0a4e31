"""Random valid and invalid input sequences: the core never raises and its invariants hold."""

from __future__ import annotations

import pickle
import random
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core import (
    Action,
    Broadcast,
    CloseUpstreamSession,
    GatewayCore,
    OpenUpstreamSession,
    PublishUpstream,
    SendFrame,
    SubscribeUpstream,
    UnsubscribeUpstream,
)
from gateway.core.settings import CoreSettings, Mode
from gateway.core.topics import valid_filter, valid_topic_name
from gateway.protocol.constants import QoS, ReturnCode, TopicIdType
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
    Subscribe,
    Unsubscribe,
    WillMsg,
    WillMsgUpd,
    WillTopic,
    WillTopicUpd,
    short_name_to_id,
)
from tests.core.helpers import Driver, frames

ADDRESSES = [("udp", "10.0.0.1", 1), ("udp", "10.0.0.2", 2), ("xbee", 3)]
CLIENT_IDS = ["sensor1", "sensor10", "n"]
TOPICS = ["a/b", "a/c", "s/x", "t1", "pre/one", "$SYS/x", "a"]
FILTERS = ["a/#", "a/b", "+/x", "#", "s/+", "a/#/b", "pre/one", "t1"]
SHORT_IDS = [short_name_to_id(n) for n in ("t1", "a#", "+/", "xy")] + [0x00FF, 0xC3A9]

SMALL = {
    "queue_per_client": 3,
    "queue_total": 6,
    "max_topics_per_client": 4,
    "max_subscriptions_per_client": 3,
    "max_clients": 3,
    "t_retry": 5.0,
    "n_retry": 2,
    "predefined": {1: "pre/one"},
    "session_expiry": 200.0,
    "retained_window": 3.0,
    "zero_keepalive": 40.0,
}

# Input that no well-behaved node would send at that moment.
ODD_MESSAGES: list[Message] = [
    Connack(),
    Pingresp(),
    Advertise(9, 60),
    GwInfo(9),
    WillTopic("x"),
    WillMsg(b"x"),
    Regack(3, 3, ReturnCode.REJECTED_INVALID_TOPIC_ID),
    Puback(1, 1, ReturnCode.REJECTED_INVALID_TOPIC_ID),
    Puback(1, 2, ReturnCode.REJECTED_CONGESTION),
    Pubrec(2),
    Pubcomp(1),
    Publish(9, b"", QoS.AT_LEAST_ONCE, 3),
    Publish(short_name_to_id("a#"), b"", QoS.MINUS_ONE, 0, TopicIdType.SHORT_NAME),
    Subscribe(1, TopicIdType.PREDEFINED, topic_id=4),
    Subscribe(1, TopicIdType.SHORT_NAME, topic_id=short_name_to_id("+#")),
    SearchGw(1),
    Disconnect(0),
]

small_ids = st.integers(0, 6)
msg_ids = st.integers(0, 5)
qos012 = st.sampled_from([QoS.AT_MOST_ONCE, QoS.AT_LEAST_ONCE, QoS.EXACTLY_ONCE])
codes = st.sampled_from(list(ReturnCode)[:4])
id_types = st.sampled_from(list(TopicIdType))


@st.composite
def publishes(draw: Any) -> Publish:
    """PUBLISH of any QoS and topic type, with ids that may or may not be known."""
    qos = draw(st.sampled_from(list(QoS)))
    id_type = draw(id_types)
    if qos is QoS.MINUS_ONE and id_type is TopicIdType.NORMAL:
        id_type = TopicIdType.PREDEFINED
    topic_id = draw(st.sampled_from(SHORT_IDS) if id_type is TopicIdType.SHORT_NAME else small_ids)
    msg_id = 0 if qos in (QoS.AT_MOST_ONCE, QoS.MINUS_ONE) else draw(msg_ids)
    return Publish(
        topic_id,
        draw(st.binary(max_size=3)),
        qos,
        msg_id,
        id_type,
        draw(st.booleans()),
        draw(st.booleans()),
    )


@st.composite
def subscriptions(draw: Any, kind: type) -> Message:
    """SUBSCRIBE or UNSUBSCRIBE by name, pre-defined id or short name."""
    id_type = draw(id_types)
    extra: dict[str, Any] = {}
    if kind is Subscribe:
        extra["qos"] = draw(qos012)
        extra["dup"] = draw(st.booleans())
    if id_type is TopicIdType.NORMAL:
        return kind(draw(msg_ids), id_type, topic_name=draw(st.sampled_from(FILTERS)), **extra)
    pool = st.sampled_from(SHORT_IDS) if id_type is TopicIdType.SHORT_NAME else small_ids
    return kind(draw(msg_ids), id_type, topic_id=draw(pool), **extra)


node_messages = st.one_of(
    st.builds(
        Connect,
        st.sampled_from(CLIENT_IDS),
        st.sampled_from([0, 4, 30]),
        st.booleans(),
        st.booleans(),
    ),
    st.builds(WillTopic, st.sampled_from(["", "w", "a/#"]), qos012, st.booleans()),
    st.builds(WillMsg, st.binary(max_size=3)),
    st.builds(Register, st.just(0), msg_ids, st.sampled_from([*TOPICS, "a/+", "b/#"])),
    st.builds(Regack, small_ids, msg_ids, codes),
    publishes(),
    st.builds(Puback, small_ids, msg_ids, codes),
    st.builds(Pubrec, msg_ids),
    st.builds(Pubrel, msg_ids),
    st.builds(Pubcomp, msg_ids),
    subscriptions(Subscribe),
    subscriptions(Unsubscribe),
    st.builds(Pingreq, st.sampled_from([None, *CLIENT_IDS, "sensor"])),
    st.builds(Disconnect, st.sampled_from([None, 0, 3, 20])),
    st.builds(WillTopicUpd, st.sampled_from(["", "w2", "x/+"]), qos012, st.booleans()),
    st.builds(WillMsgUpd, st.binary(max_size=3)),
    st.builds(SearchGw, st.integers(0, 3)),
    st.sampled_from([Advertise(9, 60), GwInfo(9), Pingresp(), Connack()]),
)

hellos = st.tuples(
    st.just("hello"),
    st.sampled_from(ADDRESSES),
    st.sampled_from(CLIENT_IDS),
    st.booleans(),
    st.booleans(),
    st.sampled_from([0, 4, 30]),
)
subscribes = st.tuples(
    st.just("rx"),
    st.sampled_from(ADDRESSES),
    st.builds(
        Subscribe,
        msg_ids,
        st.just(TopicIdType.NORMAL),
        st.sampled_from(FILTERS),
        st.just(0),
        qos012,
    ),
)
acks = st.tuples(
    st.just("rx"),
    st.sampled_from(ADDRESSES),
    st.one_of(
        st.builds(Puback, small_ids, st.integers(1, 4), st.just(ReturnCode.ACCEPTED)),
        st.builds(Regack, small_ids, st.integers(1, 4), st.just(ReturnCode.ACCEPTED)),
        st.builds(Pubrec, st.integers(1, 4)),
        st.builds(Pubcomp, st.integers(1, 4)),
    ),
)
sleeps = st.tuples(
    st.just("rx"),
    st.sampled_from(ADDRESSES),
    st.one_of(
        st.builds(Disconnect, st.sampled_from([5, 20])),
        st.builds(Pingreq, st.sampled_from(CLIENT_IDS)),
    ),
)
broker = st.tuples(
    st.just("broker"),
    st.sampled_from(TOPICS),
    st.integers(0, 2),
    st.booleans(),
    st.sampled_from([None, None, *CLIENT_IDS]),
)

# Weighted by repetition: enough CONNECTs, SUBSCRIBEs, broker traffic and acks that sequences
# reach the deep states (awake flushes, retransmissions, full buffers), plus arbitrary input.
steps = st.one_of(
    hellos,
    hellos,
    subscribes,
    broker,
    broker,
    broker,
    acks,
    acks,
    sleeps,
    st.tuples(st.just("rx"), st.sampled_from(ADDRESSES), node_messages),
    st.tuples(st.just("rx"), st.sampled_from(ADDRESSES), node_messages),
    st.tuples(st.just("rx"), st.sampled_from(ADDRESSES), node_messages),
    st.tuples(st.just("done"), st.integers(1, 12), st.booleans()),
    st.tuples(st.just("state"), st.booleans()),
    st.tuples(st.just("send_failed"), st.sampled_from(ADDRESSES)),
    st.tuples(
        st.just("upstream"),
        st.sampled_from(CLIENT_IDS),
        st.booleans(),
        st.sampled_from([0, 0, 3, 5]),
    ),
    st.tuples(st.just("restart")),
)
gap_values = st.sampled_from([0.0, 0.0, 0.1, 0.5, 1.0, 2.5, 6.0, 40.0])


def check_actions(core: GatewayCore, actions: list[Action]) -> None:
    """Every action is well-formed and nothing invalid ever goes upstream."""
    for action in actions:
        assert isinstance(action, Action), action
        match action:
            case SendFrame(message=message):
                assert isinstance(message, Message)
            case Broadcast():
                pass
            case PublishUpstream(topic=topic, qos=qos, token=token):
                assert valid_topic_name(topic), action
                assert qos in (0, 1, 2)
                assert (token is None) == (qos == 0), action
            case SubscribeUpstream(topic_filter=f) | UnsubscribeUpstream(topic_filter=f):
                assert valid_filter(f), action
                if core.settings.mode is Mode.AGGREGATING:
                    assert action.client_id is None
            case OpenUpstreamSession() | CloseUpstreamSession():
                assert core.settings.mode is Mode.TRANSPARENT
            case _:
                raise AssertionError(f"unknown action {action!r}")


def run(mode: Mode, script: list[tuple[Any, ...]], gaps: list[float]) -> None:
    d = Driver(CoreSettings(mode=mode, **SMALL))
    now = 0.0
    for step, gap in zip(script, gaps, strict=False):
        now += gap
        core = d.core
        match step:
            case ("rx", address, message):
                out = d.rx(address, message, now)
            case ("hello", address, cid, will, clean, duration):
                out = d.rx(address, Connect(cid, duration, will, clean), now)
                if will:
                    out += d.rx(address, WillTopic("w/" + cid), now)
                    out += d.rx(address, WillMsg(b"bye"), now)
            case ("broker", topic, qos, retain, cid):
                out = d.broker(topic, b"p", qos, retain, now, client_id=cid)
            case ("done", token, ok):
                out = d.done(token, ok, now)
            case ("state", up):
                out = core.on_broker_state(up, now)
            case ("send_failed", address):
                out = core.on_send_failed(address, now)
            case ("upstream", cid, ok, rc):
                out = core.on_upstream_session(cid, ok, rc, now)
            case ("restart",):
                state = pickle.loads(pickle.dumps(core.export_state()))
                d.core = GatewayCore(core.settings, state=state)
                out = []
        check_actions(d.core, out)
        d.check_invariants()
        deadline = d.core.next_deadline()
        if deadline is not None and deadline <= now:
            check_actions(d.core, d.tick(now))
            d.check_invariants()
    # Let every timer run out: sessions expire, nothing is left scheduled forever.
    for _, actions in d.run_until(now + 10_000.0):
        check_actions(d.core, actions)
        d.check_invariants()
    assert d.core.sessions == {}, d.core.sessions
    assert d.core.by_address == {}
    assert d.core.budget.used == 0
    assert len(d.core.index) == 0


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    st.sampled_from(list(Mode)),
    st.lists(steps, min_size=5, max_size=60),
    st.lists(gap_values, min_size=60, max_size=60),
)
def test_random_sequences_never_raise_and_keep_invariants(
    mode: Mode, script: list[tuple[Any, ...]], gaps: list[float]
) -> None:
    """Random inputs from several addresses, increasing time: no exception, invariants hold."""
    run(mode, script, gaps)


def _answer_inflight(session: Any) -> Message | None:
    """The acknowledgement a well-behaved node would give to what is in flight to it."""
    inflight = session.inflight
    if inflight is None:
        return None
    if inflight.kind == "register":
        return Regack(inflight.topic_id, inflight.msg_id)
    if inflight.kind == "pubrel":
        return Pubcomp(inflight.msg_id)
    if inflight.delivery.qos == 2:
        return Pubrec(inflight.msg_id)
    return Puback(inflight.topic_id, inflight.msg_id)


def _node_message(rnd: random.Random, d: Driver, address: Any, client_id: str) -> Message:
    """A message a node at ``address`` might plausibly send now (sometimes an odd one)."""
    core = d.core
    bound = core.by_address.get(address)
    session = core.sessions.get(bound) if bound is not None else None
    if rnd.random() < 0.08:
        return rnd.choice(ODD_MESSAGES)
    if session is None or session.state.name in ("DISCONNECTED", "LOST"):
        if rnd.random() < 0.15 and client_id in core.sessions:
            return Pingreq(client_id)
        return Connect(client_id, rnd.choice([0, 5, 30]), rnd.random() < 0.4, rnd.random() < 0.5)
    state = session.state.name
    if state == "CONNECTING":
        if session.will_stage == "topic":
            return WillTopic(rnd.choice(["w/" + session.client_id, "", "a/#"]))
        if session.will_stage == "msg":
            return WillMsg(b"bye")
        return Pingreq()
    if state == "ASLEEP":
        return rnd.choice(
            [
                Pingreq(session.client_id),
                Pingreq(session.client_id),
                Connect(session.client_id, 30, False, False),
                Disconnect(rnd.choice([None, 10])),
            ]
        )
    answer = _answer_inflight(session)
    if answer is not None and rnd.random() < 0.7:
        return answer
    ids = list(session.registry.by_id) or [1]
    choices: list[Message] = [
        Register(0, rnd.randint(1, 9), rnd.choice(TOPICS)),
        Publish(rnd.choice(ids), b"u", rnd.choice(list(QoS)[:3]), rnd.randint(1, 9)),
        Publish(1, b"m", QoS.MINUS_ONE, 0, TopicIdType.PREDEFINED),
        Subscribe(rnd.randint(1, 9), topic_name=rnd.choice(FILTERS), qos=rnd.choice(list(QoS)[:3])),
        Unsubscribe(rnd.randint(1, 9), topic_name=rnd.choice(FILTERS)),
        Pingreq(),
        Disconnect(rnd.choice([None, 5, 20, 20])),
        WillTopicUpd(rnd.choice(["", "w2"])),
        WillMsgUpd(b"m2"),
        Pubrel(rnd.randint(1, 9)),
    ]
    return rnd.choice(choices)


def random_walk(seed: int, mode: Mode, n_steps: int) -> Counter[str]:
    """A state-aware random walk over the core; returns which transitions it took."""
    rnd = random.Random(seed)
    d = Driver(CoreSettings(mode=mode, **SMALL))
    taken: Counter[str] = Counter()
    now = 0.0
    for _ in range(n_steps):
        now += rnd.choice([0.0, 0.0, 0.2, 1.0, 1.0, 3.0, 7.0, 25.0])
        core = d.core
        before = {cid: s.state for cid, s in core.sessions.items()}
        roll = rnd.random()
        if roll < 0.6:
            address = rnd.choice(ADDRESSES)
            client_id = rnd.choice(CLIENT_IDS)
            out = d.rx(address, _node_message(rnd, d, address, client_id), now)
        elif roll < 0.8:
            cid = rnd.choice([None, None, None, *CLIENT_IDS]) if mode is Mode.TRANSPARENT else None
            out = d.broker(
                rnd.choice(TOPICS), b"b", rnd.randint(0, 2), rnd.random() < 0.2, now, client_id=cid
            )
        elif roll < 0.88 and core._tokens:
            out = d.done(rnd.choice(list(core._tokens)), rnd.random() < 0.85, now)
            roll = -1.0  # marks a broker acknowledgement step
        elif roll < 0.93:
            pending = [s.client_id for s in core.sessions.values() if s.will_stage == "upstream"]
            cid = rnd.choice(pending) if pending else rnd.choice(CLIENT_IDS)
            out = core.on_upstream_session(cid, rnd.random() < 0.85, rnd.choice([3, 5]), now)
        elif roll < 0.96:
            out = core.on_send_failed(rnd.choice(ADDRESSES), now)
        elif roll < 0.98:
            out = core.on_broker_state(rnd.random() < 0.8, now)
        else:
            state = pickle.loads(pickle.dumps(core.export_state()))
            d.core = GatewayCore(core.settings, state=state)
            out = []
        check_actions(d.core, out)
        d.check_invariants()
        sent = frames(out)
        if any(isinstance(m, Pingresp) for m in sent) and any(
            isinstance(m, (Publish, Register)) for m in sent
        ):
            taken["buffer flushed on wake"] += 1
        if roll >= 0:
            # "Accepted" is said to a node only when the broker took its message [§6.6].
            assert not [m for m in frames(out) if isinstance(m, Puback) and not m.return_code]
        deadline = d.core.next_deadline()
        if deadline is not None and deadline <= now:
            check_actions(d.core, d.tick(now))
            d.check_invariants()
        for cid, session in d.core.sessions.items():
            if before.get(cid) is not session.state:
                taken[f"{before[cid].name if cid in before else 'NEW'}->{session.state.name}"] += 1
    for _, actions in d.run_until(now + 10_000.0):
        check_actions(d.core, actions)
        d.check_invariants()
    assert d.core.sessions == {}
    assert d.core.budget.used == 0
    return taken


def test_state_aware_random_walks() -> None:
    """Long plausible sessions (connect, subscribe, sleep, wake, acks, restarts) in both modes."""
    taken: Counter[str] = Counter()
    for seed in range(16):
        for mode in Mode:
            taken += random_walk(seed, mode, 250)
    # The walks must reach the deep states, or they prove little.
    for edge in (
        "ACTIVE->ASLEEP",
        "ASLEEP->AWAKE",
        "buffer flushed on wake",
        "ACTIVE->LOST",
        "ASLEEP->LOST",
        "CONNECTING->ACTIVE",
        "ACTIVE->DISCONNECTED",
    ):
        assert taken[edge] > 0, (edge, taken)

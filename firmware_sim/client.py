"""Pure MQTT-SN 1.2 client state machine: messages and ``now`` in, messages to send and events out.

No I/O, no clock: every method takes ``now`` (seconds, any monotonic origin) as its last
positional argument and returns a list of outputs in the order they happen. An output is either
a ``Message`` to transmit (``SearchGw`` and ``GwInfo`` are broadcasts with ``SearchGw.radius``;
everything else goes to the gateway) or an ``Event`` for the caller. Requests that expect an
answer (REGISTER, SUBSCRIBE, UNSUBSCRIBE, PUBLISH QoS 1/2) go through one FIFO with a single
request in flight [§6.5, §6.6, §6.9]; their methods return ``(msg_id, outputs)`` and the result
event carries the same ``msg_id``. Timers are deadlines: call ``tick(now)`` at ``next_deadline()``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import Enum
from typing import Final

from gateway.errors import LocalProtocolError
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
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    WillMsg,
    WillMsgReq,
    WillTopic,
    WillTopicReq,
    id_to_short_name,
    short_name_to_id,
)

__all__ = [
    "N_ADV",
    "N_RETRY",
    "T_RETRY",
    "T_SEARCHGW",
    "Asleep",
    "ClientState",
    "ConnectRejected",
    "Connected",
    "Disconnected",
    "Event",
    "GatewayFound",
    "GatewayInfo",
    "Lost",
    "MqttSnClient",
    "Output",
    "Pong",
    "Published",
    "Received",
    "Registered",
    "Retransmitted",
    "Subscribed",
    "TopicLearned",
    "Unsubscribed",
    "WakeDone",
    "Will",
]

_LOGGER = logging.getLogger(__name__)

# Timers and counters [§7.2, Table 30].
T_RETRY: Final = 10.0
N_RETRY: Final = 3
T_SEARCHGW: Final = 5.0
N_ADV: Final = 3
SEARCH_GAP_MAX: Final = 300.0


class ClientState(Enum):
    """Client states [Fig. 4] plus SEARCHING (gateway discovery) and CONNECTING (setup running)."""

    DISCONNECTED = "disconnected"
    SEARCHING = "searching"
    CONNECTING = "connecting"
    ACTIVE = "active"
    ASLEEP = "asleep"
    AWAKE = "awake"
    LOST = "lost"


@dataclass(frozen=True, slots=True)
class Will:
    """The last will the gateway publishes if this client is lost."""

    topic: str
    payload: bytes
    qos: QoS = QoS.AT_MOST_ONCE
    retain: bool = False


@dataclass(slots=True)
class GatewayInfo:
    """A gateway heard of by ADVERTISE or GWINFO; ``duration`` is its T_ADV (0 if unknown)."""

    gw_id: int
    gw_add: bytes
    last_seen: float
    duration: int = 0


class Event:
    """Base of everything the client reports besides messages to send."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class GatewayFound(Event):
    """A gateway answered SEARCHGW (GWINFO) or advertised itself (first ADVERTISE only)."""

    gw_id: int
    gw_add: bytes = b""


@dataclass(frozen=True, slots=True)
class Connected(Event):
    """CONNACK accepted: the client is ACTIVE."""


@dataclass(frozen=True, slots=True)
class ConnectRejected(Event):
    """CONNACK with a non-zero return code: the client is DISCONNECTED."""

    return_code: ReturnCode


@dataclass(frozen=True, slots=True)
class Registered(Event):
    """REGACK for our REGISTER ``msg_id``; ``topic_id`` is usable only if accepted."""

    msg_id: int
    topic_name: str
    topic_id: int
    return_code: ReturnCode = ReturnCode.ACCEPTED


@dataclass(frozen=True, slots=True)
class TopicLearned(Event):
    """The gateway REGISTERed ``topic_id`` for ``topic_name`` (we answered REGACK accepted)."""

    topic_name: str
    topic_id: int


@dataclass(frozen=True, slots=True)
class Published(Event):
    """Our PUBLISH ``msg_id`` ended: PUBACK (QoS 1), PUBCOMP (QoS 2) or a PUBACK error report."""

    msg_id: int
    topic_id: int
    return_code: ReturnCode = ReturnCode.ACCEPTED


@dataclass(frozen=True, slots=True)
class Subscribed(Event):
    """SUBACK for our SUBSCRIBE ``msg_id``."""

    msg_id: int
    topic_id: int
    granted_qos: QoS
    return_code: ReturnCode = ReturnCode.ACCEPTED


@dataclass(frozen=True, slots=True)
class Unsubscribed(Event):
    """UNSUBACK for our UNSUBSCRIBE ``msg_id``."""

    msg_id: int


@dataclass(frozen=True, slots=True)
class Received(Event):
    """An application message from the gateway; ``topic_name`` None = unnamed predefined id."""

    topic_name: str | None
    payload: bytes
    qos: QoS
    retain: bool
    topic_id: int
    topic_id_type: TopicIdType = TopicIdType.NORMAL


@dataclass(frozen=True, slots=True)
class Pong(Event):
    """PINGRESP while ACTIVE."""


@dataclass(frozen=True, slots=True)
class Asleep(Event):
    """The gateway acknowledged DISCONNECT with ``duration``: the client is ASLEEP."""

    duration: int


@dataclass(frozen=True, slots=True)
class WakeDone(Event):
    """The awake period ended: PINGRESP (or, if ``timed_out``, no PINGRESP); ASLEEP again."""

    received: int
    timed_out: bool = False


@dataclass(frozen=True, slots=True)
class Disconnected(Event):
    """DISCONNECTED: our DISCONNECT was acknowledged (or unanswered), or the gateway sent one."""

    by_gateway: bool = False


@dataclass(frozen=True, slots=True)
class Lost(Event):
    """N_RETRY retransmissions went unanswered in ``previous``: the client is LOST [§6.13]."""

    reason: str
    previous: ClientState


@dataclass(frozen=True, slots=True)
class Retransmitted(Event):
    """``message`` is being sent again (attempt 2 = first retransmission)."""

    message: Message
    attempt: int


Output = Message | Event
_Ack = Regack | Puback | Pubrec | Pubcomp | Suback | Unsuback


@dataclass(slots=True)
class _Pending:
    """An unacknowledged message with its retry deadline; ``released`` = QoS 2 after PUBREC."""

    message: Message
    msg_id: int = 0
    deadline: float = 0.0
    retries: int = 0
    released: bool = False


def _has_wildcard(name: str) -> bool:
    return "+" in name or "#" in name


class MqttSnClient:
    """One MQTT-SN client's protocol state; drive it with ``receive`` and ``tick``."""

    def __init__(
        self,
        client_id: str,
        *,
        predefined: Mapping[int, str] | None = None,
        t_retry: float = T_RETRY,
        n_retry: int = N_RETRY,
        t_searchgw: float = T_SEARCHGW,
        n_adv: int = N_ADV,
    ) -> None:
        self.client_id = client_id
        self.predefined: dict[int, str] = dict(predefined or {})
        self.t_retry = t_retry
        self.n_retry = n_retry
        self.t_searchgw = t_searchgw
        self.n_adv = n_adv
        self.keepalive = 0
        self.sleep_duration: int | None = None
        self.gateway_id: int | None = None
        self.gateways: dict[int, GatewayInfo] = {}
        self._state = ClientState.DISCONNECTED
        self._will: Will | None = None
        self._names: dict[int, str] = {}  # normal topic id -> name (REGACK, GW REGISTER, SUBACK)
        self._ids: dict[str, int] = {}
        self._subscribed_predefined: set[int] = set()
        self._qos2_in: set[int] = set()  # msg ids of QoS 2 PUBLISHes awaiting PUBREL
        self._queue: deque[_Pending] = deque()
        self._inflight: _Pending | None = None
        self._control: _Pending | None = None  # CONNECT/WILLTOPIC/WILLMSG, PINGREQ, DISCONNECT
        self._next_msg_id = 1
        self._last_sent = 0.0
        self._awake_received = 0
        self._search_at: float | None = None
        self._search_gap = t_searchgw
        self._search_radius = 0
        self._search_sent = False
        self._state_before_search = ClientState.DISCONNECTED

    def __repr__(self) -> str:
        inflight = self._inflight.msg_id if self._inflight else None
        return (
            f"<MqttSnClient {self.client_id!r} {self._state.name} inflight={inflight} "
            f"queued={len(self._queue)} topics={len(self._names)}>"
        )

    # ----------------------------------------------------------------- queries

    @property
    def state(self) -> ClientState:
        """The current state."""
        return self._state

    @property
    def in_flight(self) -> int | None:
        """MsgId of the request awaiting its answer, if any."""
        return self._inflight.msg_id if self._inflight else None

    @property
    def queued(self) -> int:
        """Requests waiting behind the one in flight."""
        return len(self._queue)

    def topic_id(self, topic_name: str) -> int | None:
        """The normal topic id registered for ``topic_name``, if known."""
        return self._ids.get(topic_name)

    def topic_name(self, topic_id: int, topic_id_type: TopicIdType) -> str | None:
        """Resolve a topic id of any type to its name, if known."""
        if topic_id_type is TopicIdType.NORMAL:
            return self._names.get(topic_id)
        if topic_id_type is TopicIdType.PREDEFINED:
            return self.predefined.get(topic_id)
        try:
            return id_to_short_name(topic_id)
        except UnicodeDecodeError:
            return None

    def known_gateways(self, now: float) -> list[GatewayInfo]:
        """Gateways not yet silent for N_ADV advertisement periods [§6.1]."""
        return [
            gw
            for gw in self.gateways.values()
            if gw.duration == 0 or now <= gw.last_seen + self.n_adv * gw.duration
        ]

    def next_deadline(self) -> float | None:
        """When ``tick`` must next be called, or None if no timer runs."""
        deadlines = [p.deadline for p in (self._inflight, self._control) if p is not None]
        if self._state is ClientState.SEARCHING and self._search_at is not None:
            deadlines.append(self._search_at)
        if self._state is ClientState.ACTIVE and self.keepalive and self._control is None:
            deadlines.append(self._last_sent + self.keepalive)
        return min(deadlines, default=None)

    # ----------------------------------------------------------------- commands

    def search_gateway(self, now: float, *, radius: int = 0, delay: float = 0.0) -> list[Output]:
        """SEARCHGW after ``delay`` (the caller's random 0..T_SEARCHGW), repeated with back-off."""
        if self._state not in (ClientState.DISCONNECTED, ClientState.LOST):
            raise LocalProtocolError(
                f"SEARCHGW only when disconnected or lost, not {self._state.name}"
            )
        self._state_before_search = self._state
        self._state = ClientState.SEARCHING
        self._search_radius = radius
        self._search_gap = self.t_searchgw
        self._search_sent = False
        self._search_at = now + delay
        return self.tick(now) if delay <= 0 else []

    def cancel_search(self, now: float) -> list[Output]:
        """Stop searching (the caller gave up); back to the state before ``search_gateway``."""
        if self._state is ClientState.SEARCHING:
            self._state = self._state_before_search
            self._search_at = None
        return []

    def connect(
        self,
        now: float,
        *,
        keepalive: int = 60,
        clean_session: bool = True,
        will: Will | None = None,
    ) -> list[Output]:
        """Send CONNECT; with a will, the gateway prompts for it [§6.2]."""
        if self._state in (ClientState.CONNECTING, ClientState.ACTIVE, ClientState.SEARCHING):
            raise LocalProtocolError(f"cannot CONNECT while {self._state.name}")
        self.keepalive = keepalive
        self._will = will
        if clean_session:
            # [§6.3] clean session drops subscriptions and registrations with the will data.
            self._names.clear()
            self._ids.clear()
            self._subscribed_predefined.clear()
            self._qos2_in.clear()
        self._state = ClientState.CONNECTING
        message = Connect(
            self.client_id, keepalive, will=will is not None, clean_session=clean_session
        )
        return self._send_control(message, now)

    def register(self, topic_name: str, now: float) -> tuple[int, list[Output]]:
        """Queue a REGISTER for ``topic_name``; the result is ``Registered(msg_id, ...)``."""
        if _has_wildcard(topic_name):
            raise LocalProtocolError(f"cannot REGISTER a wildcard topic {topic_name!r}")
        msg_id = self._allocate_msg_id()
        return msg_id, self._enqueue(Register(0, msg_id, topic_name), msg_id, now)

    def publish(
        self,
        topic_id: int,
        data: bytes,
        now: float,
        *,
        qos: QoS = QoS.AT_MOST_ONCE,
        topic_id_type: TopicIdType = TopicIdType.NORMAL,
        retain: bool = False,
    ) -> tuple[int, list[Output]]:
        """Publish: QoS 0/-1 go out at once (msg_id 0); QoS 1/2 queue behind the one in flight."""
        qos = QoS(qos)
        if qos is QoS.MINUS_ONE:
            # [§6.8] QoS -1 needs no connection at all.
            message = Publish(topic_id, data, qos, 0, topic_id_type, retain=retain)
            return 0, self._send(message, now)
        self._require_active("PUBLISH")
        if qos is QoS.AT_MOST_ONCE:
            return 0, self._send(Publish(topic_id, data, qos, 0, topic_id_type, retain=retain), now)
        msg_id = self._allocate_msg_id()
        message = Publish(topic_id, data, qos, msg_id, topic_id_type, retain=retain)
        return msg_id, self._enqueue(message, msg_id, now)

    def subscribe(
        self,
        topic: str | int,
        now: float,
        *,
        qos: QoS = QoS.AT_MOST_ONCE,
        topic_id_type: TopicIdType | None = None,
    ) -> tuple[int, list[Output]]:
        """Queue a SUBSCRIBE to a filter (str), short name (2-char str) or predefined id (int)."""
        msg_id = self._allocate_msg_id()
        id_type, name, topic_id = self._topic_ref(topic, topic_id_type)
        message = Subscribe(msg_id, id_type, name, topic_id, QoS(qos))
        return msg_id, self._enqueue(message, msg_id, now)

    def unsubscribe(
        self, topic: str | int, now: float, *, topic_id_type: TopicIdType | None = None
    ) -> tuple[int, list[Output]]:
        """Queue an UNSUBSCRIBE; the result is ``Unsubscribed(msg_id)``."""
        msg_id = self._allocate_msg_id()
        message = Unsubscribe(msg_id, *self._topic_ref(topic, topic_id_type))
        return msg_id, self._enqueue(message, msg_id, now)

    def ping(self, now: float) -> list[Output]:
        """Send PINGREQ now (the keep-alive does this by itself); answered by ``Pong``."""
        self._require_active("PINGREQ")
        if self._control is not None and isinstance(self._control.message, Pingreq):
            return []  # one PINGREQ outstanding answers both
        return self._send_control(Pingreq(), now)

    def sleep(self, duration: int, now: float) -> list[Output]:
        """DISCONNECT with ``duration``: ASLEEP once the gateway acknowledges [§6.14]."""
        if self._state not in (ClientState.ACTIVE, ClientState.AWAKE, ClientState.ASLEEP):
            raise LocalProtocolError(f"cannot sleep while {self._state.name}")
        if self._inflight is not None or self._queue:
            raise LocalProtocolError("cannot sleep with requests in flight; wait for their answers")
        self.sleep_duration = duration
        return self._send_control(Disconnect(duration), now)

    def wake(self, now: float) -> list[Output]:
        """PINGREQ with our ClientId: collect buffered messages until PINGRESP [§6.14]."""
        if self._state is not ClientState.ASLEEP:
            raise LocalProtocolError(f"wake only from ASLEEP, not {self._state.name}")
        self._state = ClientState.AWAKE
        self._awake_received = 0
        return self._send_control(Pingreq(self.client_id), now)

    def disconnect(self, now: float) -> list[Output]:
        """DISCONNECT without duration; DISCONNECTED when acknowledged (or after N_RETRY)."""
        if self._state in (ClientState.DISCONNECTED, ClientState.LOST, ClientState.SEARCHING):
            return []
        self.sleep_duration = None
        return self._send_control(Disconnect(), now)

    # ----------------------------------------------------------------- input

    def receive(self, message: Message, now: float) -> list[Output]:
        """Handle one message from the gateway (or a broadcast heard on the radio)."""
        out: list[Output] = []
        control = self._control if self._state is ClientState.AWAKE else None
        if control is not None and not isinstance(message, Pingresp):
            # [§6.14] the awake client re-arms its timer on every message but PINGRESP.
            control.deadline = now + self.t_retry
        match message:
            case Advertise(gw_id=gw_id, duration=duration):
                out += self._heard_gateway(gw_id, b"", duration, now)
            case GwInfo(gw_id=gw_id, gw_add=gw_add):
                out += self._heard_gateway(gw_id, gw_add, 0, now)
            case SearchGw(radius=radius) if self._waiting_to_search(radius):
                # [§6.1] an identical SEARCHGW heard while we wait counts as our own. Only
                # before our first one: multicast loops our own SEARCHGW back to us.
                self._searched(now)
            case WillTopicReq() if self._state is ClientState.CONNECTING:
                will = self._will
                if will is None:
                    out += self._send_control(WillTopic(), now)
                else:
                    reply = WillTopic(will.topic, QoS(will.qos), will.retain)
                    out += self._send_control(reply, now)
            case WillMsgReq() if self._state is ClientState.CONNECTING:
                payload = self._will.payload if self._will else b""
                out += self._send_control(WillMsg(payload), now)
            case Connack(return_code=rc) if self._state is ClientState.CONNECTING:
                self._control = None
                if rc is ReturnCode.ACCEPTED:
                    self._state = ClientState.ACTIVE
                    self._last_sent = now
                    out.append(Connected())
                    out += self._start_next(now)
                else:
                    self._state = ClientState.DISCONNECTED
                    out.append(ConnectRejected(rc))
            case Register(topic_id=topic_id, msg_id=msg_id, topic_name=name) if self._connected:
                self._learn(topic_id, name)
                out += self._send(Regack(topic_id, msg_id, ReturnCode.ACCEPTED), now)
                out.append(TopicLearned(name, topic_id))
            case Publish() if self._connected:
                out += self._on_publish(message, now)
            case Pubrel(msg_id=msg_id) if self._connected:
                self._qos2_in.discard(msg_id)
                out += self._send(Pubcomp(msg_id), now)
            case Pingreq() if self._connected:
                out += self._send(Pingresp(), now)
            case Pingresp():
                out += self._on_pingresp()
            case Disconnect():
                out += self._on_disconnect()
            case Regack() | Puback() | Pubrec() | Pubcomp() | Suback() | Unsuback():
                out += self._on_ack(message, now)
            case _:
                _LOGGER.debug("%s: ignoring %r in %s", self.client_id, message, self._state.name)
        return out

    def tick(self, now: float) -> list[Output]:
        """Fire every timer that is due: retransmissions, keep-alive PINGREQ, SEARCHGW."""
        out: list[Output] = []
        search_at = self._search_at if self._state is ClientState.SEARCHING else None
        if search_at is not None and now >= search_at:
            out.append(SearchGw(self._search_radius))
            self._search_sent = True
            self._searched(now)
        if self._control is not None and now >= self._control.deadline:
            out += self._retry_control(now)
        if self._inflight is not None and now >= self._inflight.deadline:
            out += self._retry_request(now)
        if (
            self._state is ClientState.ACTIVE
            and self.keepalive
            and self._control is None
            and now >= self._last_sent + self.keepalive
        ):
            # [§6.11] nothing sent for a keep-alive period: PINGREQ.
            out += self._send_control(Pingreq(), now)
        return out

    # ----------------------------------------------------------------- internals

    @property
    def _connected(self) -> bool:
        return self._state in (ClientState.ACTIVE, ClientState.AWAKE)

    def _require_active(self, what: str) -> None:
        if self._state is not ClientState.ACTIVE:
            raise LocalProtocolError(
                f"{what} needs an ACTIVE client, this one is {self._state.name}"
            )

    @staticmethod
    def _topic_ref(
        topic: str | int, topic_id_type: TopicIdType | None
    ) -> tuple[TopicIdType, str, int]:
        """(TopicIdType, topic name, topic id) for SUBSCRIBE/UNSUBSCRIBE."""
        if isinstance(topic, int):
            return topic_id_type or TopicIdType.PREDEFINED, "", topic
        if topic_id_type is TopicIdType.SHORT_NAME:
            return topic_id_type, "", short_name_to_id(topic)
        return TopicIdType.NORMAL, topic, 0

    def _allocate_msg_id(self) -> int:
        """Next MsgId in 1..65535 (0 is "not relevant" [§5.3.7]), skipping ids still in use."""
        in_use = {p.msg_id for p in self._queue}
        if self._inflight is not None:
            in_use.add(self._inflight.msg_id)
        while True:
            msg_id = self._next_msg_id
            self._next_msg_id = msg_id % 0xFFFF + 1
            if msg_id not in in_use:
                return msg_id

    def _send(self, message: Message, now: float) -> list[Output]:
        self._last_sent = now
        return [message]

    def _send_control(self, message: Message, now: float) -> list[Output]:
        self._control = _Pending(message, deadline=now + self.t_retry)
        return self._send(message, now)

    def _enqueue(self, message: Message, msg_id: int, now: float) -> list[Output]:
        self._require_active(type(message).__name__.upper())
        self._queue.append(_Pending(message, msg_id=msg_id))
        return self._start_next(now)

    def _start_next(self, now: float) -> list[Output]:
        if self._inflight is not None or not self._queue or self._state is not ClientState.ACTIVE:
            return []
        self._inflight = self._queue.popleft()
        self._inflight.deadline = now + self.t_retry
        return self._send(self._inflight.message, now)

    def _finish(self, event: Event, now: float) -> list[Output]:
        self._inflight = None
        return [event, *self._start_next(now)]

    def _retry_control(self, now: float) -> list[Output]:
        pending = self._control
        assert pending is not None
        if pending.retries < self.n_retry:
            pending.retries += 1
            pending.deadline = now + self.t_retry
            _LOGGER.info("%s: retransmitting %r", self.client_id, pending.message)
            return [
                Retransmitted(pending.message, pending.retries + 1),
                *self._send(pending.message, now),
            ]
        self._control = None
        if self._state is ClientState.AWAKE and isinstance(pending.message, Pingreq):
            # [§6.14] no PINGRESP after the retries: go back to sleep.
            self._state = ClientState.ASLEEP
            return [WakeDone(self._awake_received, timed_out=True)]
        if isinstance(pending.message, Disconnect) and pending.message.duration is None:
            self._state = ClientState.DISCONNECTED
            return [Disconnected()]
        return self._lose(f"no answer to {type(pending.message).__name__.upper()}")

    def _retry_request(self, now: float) -> list[Output]:
        pending = self._inflight
        assert pending is not None
        if pending.retries >= self.n_retry:
            return self._lose(
                f"no answer to {type(pending.message).__name__.upper()} {pending.msg_id}"
            )
        pending.retries += 1
        pending.deadline = now + self.t_retry
        message = pending.message
        if pending.released:
            message = Pubrel(pending.msg_id)
        elif isinstance(message, Publish | Subscribe):
            # [§6.13] retransmitted PUBLISH and SUBSCRIBE carry DUP.
            message = replace(message, dup=True)
        _LOGGER.info("%s: retransmitting %r", self.client_id, message)
        return [Retransmitted(message, pending.retries + 1), *self._send(message, now)]

    def _lose(self, reason: str) -> list[Output]:
        previous = self._state
        _LOGGER.info("%s: lost the gateway in %s: %s", self.client_id, previous.name, reason)
        self._state = ClientState.LOST
        self._inflight = None
        self._control = None
        self._queue.clear()
        return [Lost(reason, previous)]

    def _waiting_to_search(self, radius: int) -> bool:
        searching = self._state is ClientState.SEARCHING and not self._search_sent
        return searching and radius == self._search_radius

    def _searched(self, now: float) -> None:
        """A SEARCHGW went out (ours or an identical one): next one after a doubled gap."""
        self._search_at = now + self._search_gap
        self._search_gap = min(self._search_gap * 2, SEARCH_GAP_MAX)

    def _heard_gateway(self, gw_id: int, gw_add: bytes, duration: int, now: float) -> list[Output]:
        known = self.gateways.get(gw_id)
        self.gateways[gw_id] = GatewayInfo(
            gw_id, gw_add, now, duration or (known.duration if known else 0)
        )
        if self._state is ClientState.SEARCHING:
            self._state = self._state_before_search
            self._search_at = None
            self.gateway_id = gw_id
            return [GatewayFound(gw_id, gw_add)]
        return [] if known else [GatewayFound(gw_id, gw_add)]

    def _learn(self, topic_id: int, name: str) -> None:
        old = self._names.pop(topic_id, None)
        if old is not None:
            self._ids.pop(old, None)
        self._names[topic_id] = name
        self._ids[name] = topic_id

    def _forget(self, topic_id: int) -> None:
        name = self._names.pop(topic_id, None)
        if name is not None:
            self._ids.pop(name, None)

    def _on_publish(self, message: Publish, now: float) -> list[Output]:
        tid, ttype = message.topic_id, message.topic_id_type
        name = self.topic_name(tid, ttype)
        known = name is not None or (
            ttype is TopicIdType.PREDEFINED and tid in self._subscribed_predefined
        )
        if not known:
            # [§6.10] a PUBLISH with an id we do not know: reject it so the gateway re-REGISTERs.
            _LOGGER.warning(
                "%s: PUBLISH with unknown topic id %d (%s)", self.client_id, tid, ttype.name
            )
            return self._send(
                Puback(tid, message.msg_id, ReturnCode.REJECTED_INVALID_TOPIC_ID), now
            )
        received = Received(name, message.data, message.qos, message.retain, tid, ttype)
        if self._state is ClientState.AWAKE:
            self._awake_received += 1
        if message.qos is QoS.AT_LEAST_ONCE:
            return [received, *self._send(Puback(tid, message.msg_id, ReturnCode.ACCEPTED), now)]
        if message.qos is QoS.EXACTLY_ONCE:
            if message.msg_id in self._qos2_in:
                # A retransmission before PUBREL: deliver once, answer PUBREC again [§6.13].
                return self._send(Pubrec(message.msg_id), now)
            self._qos2_in.add(message.msg_id)
            return [received, *self._send(Pubrec(message.msg_id), now)]
        return [received]

    def _on_pingresp(self) -> list[Output]:
        pending = self._control
        if pending is None or not isinstance(pending.message, Pingreq):
            return []
        self._control = None
        if self._state is ClientState.AWAKE:
            # [§6.14] PINGRESP = nothing more buffered; back to sleep.
            self._state = ClientState.ASLEEP
            return [WakeDone(self._awake_received)]
        return [Pong()]

    def _on_disconnect(self) -> list[Output]:
        pending = self._control
        if pending is not None and isinstance(pending.message, Disconnect):
            self._control = None
            if pending.message.duration is not None:
                self._state = ClientState.ASLEEP
                return [Asleep(pending.message.duration)]
            self._state = ClientState.DISCONNECTED
            self._inflight = None
            self._queue.clear()
            return [Disconnected()]
        if self._state in (ClientState.DISCONNECTED, ClientState.LOST, ClientState.SEARCHING):
            return []
        _LOGGER.info("%s: the gateway disconnected us in %s", self.client_id, self._state.name)
        self._state = ClientState.DISCONNECTED
        self._control = self._inflight = None
        self._queue.clear()
        return [Disconnected(by_gateway=True)]

    def _on_ack(self, ack: _Ack, now: float) -> list[Output]:
        pending = self._inflight
        msg_id = ack.msg_id
        if pending is None or pending.msg_id != msg_id:
            return self._unsolicited(ack)
        request = pending.message
        match ack:
            case Regack(topic_id=tid, return_code=rc) if isinstance(request, Register):
                if rc is ReturnCode.ACCEPTED:
                    self._learn(tid, request.topic_name)
                return self._finish(Registered(msg_id, request.topic_name, tid, rc), now)
            case Puback(return_code=rc) if isinstance(request, Publish):
                if rc is ReturnCode.REJECTED_INVALID_TOPIC_ID:
                    self._forget(request.topic_id)
                return self._finish(Published(msg_id, request.topic_id, rc), now)
            case Pubrec() if isinstance(request, Publish) and request.qos is QoS.EXACTLY_ONCE:
                pending.released = True
                pending.retries = 0
                pending.deadline = now + self.t_retry
                return self._send(Pubrel(msg_id), now)
            case Pubcomp() if pending.released:
                assert isinstance(request, Publish)
                return self._finish(Published(msg_id, request.topic_id), now)
            case Suback(topic_id=tid, qos=granted, return_code=rc) if isinstance(
                request, Subscribe
            ):
                if rc is ReturnCode.ACCEPTED:
                    self._on_subscribed(request, tid)
                return self._finish(Subscribed(msg_id, tid, granted, rc), now)
            case Unsuback() if isinstance(request, Unsubscribe):
                return self._finish(Unsubscribed(msg_id), now)
        return self._unsolicited(ack)

    def _on_subscribed(self, request: Subscribe, topic_id: int) -> None:
        if request.topic_id_type is TopicIdType.PREDEFINED:
            self._subscribed_predefined.add(request.topic_id)
        elif (
            request.topic_id_type is TopicIdType.NORMAL
            and topic_id not in (0, 0xFFFF)
            and not _has_wildcard(request.topic_name)
        ):
            self._learn(topic_id, request.topic_name)

    def _unsolicited(self, ack: _Ack) -> list[Output]:
        if isinstance(ack, Puback) and ack.return_code is not ReturnCode.ACCEPTED:
            # [§6.6] a PUBACK error report for a QoS 0 PUBLISH.
            _LOGGER.warning("%s: PUBLISH rejected: %r", self.client_id, ack)
            if ack.return_code is ReturnCode.REJECTED_INVALID_TOPIC_ID:
                self._forget(ack.topic_id)
            return [Published(ack.msg_id, ack.topic_id, ack.return_code)]
        _LOGGER.warning("%s: unsolicited %r ignored", self.client_id, ack)
        return []

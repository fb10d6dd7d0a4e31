"""The gateway brain: MQTT-SN 1.2 gateway behaviour as a pure state machine.

Every input carries ``now`` (seconds, monotonic) and returns a list of actions; nothing here does
I/O or reads a clock. ``next_deadline()`` says when the runtime must call ``tick(now)``.

Everything that decides what a node is told lives here: sessions keyed by ClientId (matched
exactly), the will handshake, topic ids, QoS flows, buffering for sleepers, keep-alive and sleep
supervision, retransmission, ADVERTISE and GWINFO. The flows themselves are mixins, each in its own
module: CONNECT and the will in ``connect.py``, REGISTER / PUBLISH / SUBSCRIBE from nodes in
``uplink.py``, downlink delivery in ``delivery.py``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from gateway.core.access import AccessControl
from gateway.core.actions import (
    Action,
    Broadcast,
    CloseUpstreamSession,
    OpenUpstreamSession,
    PublishUpstream,
    SendFrame,
    SubscribeUpstream,
)
from gateway.core.admission import Admission
from gateway.core.connect import ConnectMixin
from gateway.core.delivery import DeliveryMixin
from gateway.core.delivery_queue import QueueBudget, discard_all
from gateway.core.session import (
    TRANSITIONS,
    ClientSession,
    Event,
    SessionState,
)
from gateway.core.settings import CoreSettings, Mode
from gateway.core.subscriptions import SubscriptionIndex
from gateway.core.timers import TimerHeap
from gateway.core.uplink import UplinkMixin
from gateway.protocol.constants import QoS, ReturnCode
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
    unchecked_builder,
)

__all__ = ["CoreState", "GatewayCore"]

_LOGGER = logging.getLogger(__name__)

S = SessionState
_CONNECTED = (S.ACTIVE, S.AWAKE)
_MAX_UPLINK_PENDING = 32  # QoS 1/2 from one node awaiting the broker (spec allows 1; be lenient)
# The QoS 1 PUBACK to a node, built without its validating constructor (ids came decoded).
_puback = unchecked_builder(Puback, ("topic_id", "msg_id", "return_code"))
_ACCEPTED = ReturnCode.ACCEPTED
# Enum members as module constants: ``QoS.AT_MOST_ONCE`` is a ~0.2 us lookup in Python 3.11.
_QOS_0 = QoS.AT_MOST_ONCE
_QOS_MINUS_ONE = QoS.MINUS_ONE


@dataclass(slots=True)
class CoreState:
    """Everything the core must keep across a restart, as plain data."""

    sessions: list[ClientSession] = field(default_factory=list)
    tokens: dict[int, tuple[str, int]] = field(default_factory=dict)
    next_token: int = 1


class GatewayCore(DeliveryMixin, ConnectMixin, UplinkMixin):
    """The I/O-free gateway engine (``receive`` / ``on_*`` / ``tick`` -> list of actions)."""

    def __init__(self, settings: CoreSettings | None = None, state: CoreState | None = None):
        self.settings = settings or CoreSettings()
        s = self.settings
        self.sessions: dict[str, ClientSession] = {}
        self.by_address: dict[Hashable, str] = {}
        self.index = SubscriptionIndex()
        self.budget = QueueBudget(per_client=s.queue_per_client, total=s.queue_total)
        self.counters: Counter[str] = Counter()
        self.broker_up = False
        self._timers = TimerHeap()
        self._tokens: dict[int, tuple[str, int]] = {}
        self._next_token = 1
        self._next_advertise: float | None = None
        self._gwinfo_last: dict[Hashable, float] = {}
        self._gwinfo_allowance = s.gwinfo_per_second
        self._gwinfo_checked = 0.0
        self._predefined_by_name = {name: tid for tid, name in s.predefined.items()}
        self._aggregating = s.mode is Mode.AGGREGATING
        template = s.uplink_topic_template
        self._topic_template = None if template == "{topic}" else template  # None: as named
        self._route_count = 0  # uplink routes made since the last full clear (uplink.py)
        self._reject_in_outage = s.outage_policy == "reject"
        # ClientIds whose kept state changed since the state file last took them (None: no
        # state file, nothing tracked). A QoS 0/-1 PUBLISH from a node never lands here.
        self.dirty: set[str] | None = None
        self._handlers: dict[type, Callable[[Hashable, Any, float, list[Action]], None]] = {
            Publish: self._on_publish,
            Puback: self._on_puback,
            Pingreq: self._on_pingreq,
            Connect: self._on_connect,
            WillTopic: self._on_willtopic,
            WillMsg: self._on_willmsg,
            Register: self._on_register,
            Regack: self._on_regack,
            Pubrec: self._on_pubrec,
            Pubrel: self._on_pubrel,
            Pubcomp: self._on_pubcomp,
            Subscribe: self._on_subscribe,
            Unsubscribe: self._on_unsubscribe,
            Disconnect: self._on_disconnect,
            WillTopicUpd: self._on_willtopicupd,
            WillMsgUpd: self._on_willmsgupd,
            SearchGw: self._on_searchgw,
        }
        if state is not None:
            self._load(state)
        self.access = AccessControl(s.access)  # [access]: allow-list and topic rules
        self.admission = Admission(s, self.access, self.sessions, self.counters)

    # ------------------------------------------------------------------ inputs

    def receive(self, address: Hashable, message: Message, now: float) -> list[Action]:
        """Handle one decoded frame from ``address``."""
        out: list[Action] = []
        handler = self._handlers.get(type(message))
        if handler is None:
            # ADVERTISE/GWINFO from other gateways or nodes, and gateway-only messages.
            self.counters[f"ignored_{type(message).__name__}"] += 1
            return out
        dirty = self.dirty
        if dirty is None or type(message) is Publish:
            # A node's PUBLISH marks its session itself, and only at QoS 2 (publish_fields).
            handler(address, message, now, out)
            return out
        handler(address, message, now, out)
        client_id = self.by_address.get(address)  # bound by CONNECT / PINGREQ(ClientId) too
        if client_id is not None:
            dirty.add(client_id)
        return out

    def on_publish_done(self, token: int, ok: bool, now: float) -> list[Action]:
        """The broker acknowledged (or we gave up on) the uplink publish with ``token``."""
        out: list[Action] = []
        entry = self._tokens.pop(token, None)
        if entry is None:
            return out
        client_id, msg_id = entry
        session = self.sessions.get(client_id)
        pending = session.uplink.get(msg_id) if session else None
        if session is None or pending is None or pending.token != token:
            return out
        if self.dirty is not None and (pending.qos == 2 or not ok):
            # A QoS 1 entry done needs no write: the node's row never held it, or the loader
            # drops it with the outbox row that outbox_done removes (store.py).
            self.dirty.add(client_id)
        if not ok:
            # Never tell a node "accepted" for what the broker did not take [§6.6: congestion].
            del session.uplink[msg_id]
            self.counters["uplink_refused_congestion"] += 1
            self._send(
                session, Puback(pending.topic_id, msg_id, ReturnCode.REJECTED_CONGESTION), out
            )
        elif pending.qos == 1:
            del session.uplink[msg_id]
            self._send(session, _puback(pending.topic_id, msg_id, _ACCEPTED), out)
        else:
            pending.acked = True
            self._send(session, Pubrec(msg_id), out)
        return out

    def on_broker_state(self, connected: bool, now: float) -> list[Action]:
        """The shared broker connection came up or went down; ADVERTISE only while up [§6.1]."""
        out: list[Action] = []
        self.broker_up = connected
        if connected and self.settings.t_adv > 0:
            self._next_advertise = now
            self._advertise(now, out)
        elif not connected:
            self._next_advertise = None
        return out

    def on_upstream_session(
        self, client_id: str, ok: bool, return_code: int, now: float
    ) -> list[Action]:
        """Transparent mode: the node's own broker connection answered its CONNECT."""
        out: list[Action] = []
        session = self.sessions.get(client_id)
        if session is None or session.state is not S.CONNECTING or session.will_stage != "upstream":
            return out
        if self.dirty is not None:
            self.dirty.add(client_id)
        session.will_stage = ""
        if ok:
            self._accept_connect(session, now, out)
            return out
        # Paho's mapping of MQTT refusals: server unavailable -> congestion, else not supported.
        code = (
            ReturnCode.REJECTED_CONGESTION
            if return_code in (3, 0x88, 0x89, 0x97)
            else (ReturnCode.REJECTED_NOT_SUPPORTED)
        )
        self._send(session, Connack(code), out)
        self._transition(session, Event.REFUSED)
        _LOGGER.warning(
            "broker refused %r (code %s); CONNACK %s", client_id, return_code, code.name
        )
        self._end_attempt(session, now, out)
        return out

    def on_send_failed(self, address: Hashable, now: float) -> list[Action]:
        """The transport could not deliver to ``address``: retry the in-flight message sooner."""
        session = self._session_at(address)
        if session is not None and session.inflight is not None:
            session.inflight.deadline = min(
                session.inflight.deadline, now + min(1.0, self.settings.t_retry)
            )
            self._timers.push(session.inflight.deadline, session.client_id, "retry")
        self.counters["send_failed"] += 1
        return []

    def tick(self, now: float) -> list[Action]:
        """Run every timer due at ``now``: retransmissions, supervision, ADVERTISE."""
        out: list[Action] = []
        for client_id, kind in self._timers.pop_due(now):
            session = self.sessions.get(client_id)
            if session is None:
                continue
            if self.dirty is not None:
                self.dirty.add(client_id)
            if kind == "retry":
                self._check_retry(session, now, out)
            else:
                self._check_supervision(session, now, out)
        if self._next_advertise is not None and now >= self._next_advertise:
            self._advertise(now, out)
        return out

    def next_deadline(self) -> float | None:
        """When ``tick`` must next be called (None: only when something arrives)."""
        earliest = self._timers.earliest()
        if self._next_advertise is not None and (
            earliest is None or self._next_advertise < earliest
        ):
            return self._next_advertise
        return earliest

    # ------------------------------------------------------------------ state

    def export_state(self) -> CoreState:
        """The core's state as plain data (for the state file)."""
        return CoreState(list(self.sessions.values()), dict(self._tokens), self._next_token)

    def _load(self, state: CoreState) -> None:
        self._tokens = dict(state.tokens)
        self._next_token = state.next_token
        for session in state.sessions:
            session.registry.predefined = self.settings.predefined
            self.sessions[session.client_id] = session
            self.by_address[session.address] = session.client_id
            for topic_filter, qos in session.subscriptions.items():
                self.index.add(topic_filter, session.client_id, qos)
            self.budget.used += len(session.queue)
            session.supervision_at = None
            self._schedule_supervision(session)
            if session.inflight is not None:
                self._timers.push(session.inflight.deadline, session.client_id, "retry")

    def resume_actions(self) -> list[Action]:
        """After loading a state: what the broker side must be asked for again.

        Aggregating: one SUBSCRIBE per filter. Transparent: each connected or sleeping node's
        own connection (its clean flag and will) and its subscriptions.
        """
        if self._aggregating:
            return [SubscribeUpstream(None, f, qos) for f, qos in self.index.filters()]
        out: list[Action] = []
        for session in self.sessions.values():
            if session.state in (S.ACTIVE, S.ASLEEP, S.AWAKE):
                will = self._will_of(session)
                keepalive = int(session.keepalive)
                cid = session.client_id
                out.append(OpenUpstreamSession(cid, session.clean_session, will, keepalive))
                out.extend(SubscribeUpstream(cid, f, q) for f, q in session.subscriptions.items())
        return out

    def upstream_subscriptions(self) -> list[tuple[str, int]]:
        """Aggregating mode: every filter the shared connection must hold (after a restart)."""
        return list(self.index.filters())

    def __repr__(self) -> str:
        states = Counter(s.state.name for s in self.sessions.values())
        return (
            f"<GatewayCore {self.settings.mode.value} sessions={dict(states)} "
            f"buffered={self.budget.used} broker_up={self.broker_up}>"
        )

    # ------------------------------------------------------------------ helpers

    def _session_at(self, address: Hashable) -> ClientSession | None:
        client_id = self.by_address.get(address)
        return self.sessions.get(client_id) if client_id is not None else None

    def _send(self, session: ClientSession, message: Message, out: list[Action]) -> None:
        if self.by_address.get(session.address) != session.client_id:
            # Fix: another ClientId has since CONNECTed (or woken) from this address, so the
            # node there is no longer this session's. Sending would hand it our topic ids and
            # data, which in its own per-client table may name other topics [§7.3]. The session
            # stays silent until it CONNECTs or wakes again, or its timers declare it lost.
            self.counters["send_suppressed_address_taken"] += 1
            return
        out.append(SendFrame(session.address, message))

    def _transition(self, session: ClientSession, event: Event) -> None:
        new = TRANSITIONS.get((session.state, event))
        if new is None:
            raise AssertionError(f"no transition from {session.state.name} on {event.name}")
        if new is not session.state:
            _LOGGER.debug(
                "%r: %s -> %s on %s", session.client_id, session.state.name, new.name, event.value
            )
            # A cached uplink route may hold what belonged to the old state (in transparent
            # mode, the node's broker connection): made again on the next PUBLISH.
            session.registry.routes.clear()
        session.state = new

    def _bind_address(self, session: ClientSession, address: Hashable) -> None:
        """Sessions are keyed by ClientId; the address follows the node [§6.14, DESIGN §3]."""
        if session.address != address:
            if self.by_address.get(session.address) == session.client_id:
                del self.by_address[session.address]
            session.address = address
        self.by_address[address] = session.client_id

    def _schedule_supervision(self, session: ClientSession) -> None:
        deadline = self._supervision_deadline(session)
        if session.supervision_at is None or deadline < session.supervision_at:
            session.supervision_at = deadline
            self._timers.push(deadline, session.client_id, "sup")

    def _supervision_deadline(self, session: ClientSession) -> float:
        s = self.settings
        if session.state is S.CONNECTING:
            return session.last_rx + s.t_retry * (s.n_retry + 1)
        if session.state is S.DISCONNECTED or session.state is S.LOST:
            return session.last_rx + s.session_expiry
        return session.supervision_deadline(s.keepalive_factor, s.sleep_factor)

    def _new_token(self, client_id: str, msg_id: int) -> int:
        token = self._next_token
        self._next_token += 1
        self._tokens[token] = (client_id, msg_id)
        return token

    def _uplink_topic(self, client_id: str, topic: str) -> str:
        template = self._topic_template
        if template is None:
            return topic
        return template.format(client_id=client_id, topic=topic)

    def _connected_session(
        self, address: Hashable, now: float, out: list[Action]
    ) -> ClientSession | None:
        """The ACTIVE/AWAKE session at ``address``; otherwise DISCONNECT the sender [§6.12]."""
        session = self._session_at(address)
        if session is None or session.state not in _CONNECTED:
            self.counters["unattributable"] += 1
            out.append(SendFrame(address, Disconnect()))
            return None
        session.last_rx = now
        return session

    # ------------------------------------------------------------------ ping, disconnect, sleep

    def _on_pingreq(self, address: Hashable, msg: Pingreq, now: float, out: list[Action]) -> None:
        if msg.client_id is not None:
            session = self.sessions.get(msg.client_id)  # exact ClientId match, never a prefix
            if session is None:
                # P9: an unknown ClientId gets no answer (it would let anyone probe sessions).
                self.counters["pingreq_unknown_client"] += 1
                return
            if not self.access.admits(session.client_id, address):
                # The allow-list binds this node to a transport/address: a PINGREQ from
                # elsewhere must not move its session (and buffered messages) there.
                self.counters["pingreq_refused_access"] += 1
                return
            self._bind_address(session, address)
        else:
            session = self._session_at(address)
            if session is None:
                self.counters["pingreq_unknown_address"] += 1
                return
        if session.state is S.DISCONNECTED or session.state is S.LOST:
            out.append(SendFrame(address, Disconnect()))  # the node must CONNECT again
            return
        session.last_rx = now
        if session.state is S.ASLEEP or session.state is S.AWAKE:
            if session.state is S.ASLEEP:
                _LOGGER.info("%r woke up with %d buffered", session.client_id, len(session.queue))
            self._transition(session, Event.WAKE)
            if session.inflight is None:
                self._pump(session, now, out)  # ends with PINGRESP once the buffer is empty
            return
        self._send(session, Pingresp(), out)

    def _on_disconnect(
        self, address: Hashable, msg: Disconnect, now: float, out: list[Action]
    ) -> None:
        session = self._session_at(address)
        if session is None or session.state is S.DISCONNECTED or session.state is S.LOST:
            out.append(SendFrame(address, Disconnect()))
            return
        session.last_rx = now
        if msg.duration is not None and session.state is not S.CONNECTING:
            # [§6.14] DISCONNECT with Duration: asleep; buffer everything for it.
            self._requeue_inflight(session)
            session.sleep_duration = float(msg.duration)
            self._transition(session, Event.SLEEP)
            session.supervision_at = None
            self._schedule_supervision(session)
            self._send(session, Disconnect(), out)
            _LOGGER.info("%r sleeps for %ss", session.client_id, msg.duration)
            return
        self._transition(session, Event.DISCONNECT)
        self._send(session, Disconnect(), out)
        _LOGGER.info("%r disconnected", session.client_id)
        if not self._aggregating:
            out.append(CloseUpstreamSession(session.client_id, fire_will=False))
        self._requeue_inflight(session)
        if session.clean_session:
            self._forget(session, out)
        else:
            session.supervision_at = None
            self._schedule_supervision(session)

    def _on_searchgw(self, address: Hashable, msg: SearchGw, now: float, out: list[Action]) -> None:
        # Anti-amplification: one GWINFO per source per interval and a global rate; GWINFO
        # (3 bytes) is never larger than the SEARCHGW (3 bytes) that asked for it.
        s = self.settings
        last = self._gwinfo_last.get(address)
        if last is not None and now - last < s.gwinfo_interval:
            self.counters["searchgw_rate_limited"] += 1
            return
        self._gwinfo_allowance = min(
            s.gwinfo_per_second,
            self._gwinfo_allowance + (now - self._gwinfo_checked) * s.gwinfo_per_second,
        )
        self._gwinfo_checked = now
        if self._gwinfo_allowance < 1.0:
            self.counters["searchgw_rate_limited"] += 1
            return
        self._gwinfo_allowance -= 1.0
        if len(self._gwinfo_last) > 10_000:
            self._gwinfo_last.clear()
        self._gwinfo_last[address] = now
        out.append(Broadcast(GwInfo(s.gw_id), msg.radius, via=address))

    def _advertise(self, now: float, out: list[Action]) -> None:
        duration = min(int(self.settings.t_adv), 0xFFFF)
        out.append(Broadcast(Advertise(self.settings.gw_id, duration)))
        self._next_advertise = now + self.settings.t_adv

    # ------------------------------------------------------------------ timers and loss

    def _check_supervision(self, session: ClientSession, now: float, out: list[Action]) -> None:
        session.supervision_at = None
        deadline = self._supervision_deadline(session)
        if deadline > now:
            self._schedule_supervision(session)
            return
        state = session.state
        if state is S.CONNECTING:
            _LOGGER.info("%r did not finish connecting; dropped", session.client_id)
            self._transition(session, Event.EXPIRED)
            if not self._aggregating and session.will_stage == "upstream":
                # Fix: the OpenUpstreamSession we asked for must not outlive the attempt.
                out.append(CloseUpstreamSession(session.client_id, fire_will=False))
            session.will_stage = ""
            self._end_attempt(session, now, out)
        elif state is S.DISCONNECTED or state is S.LOST:
            self.counters["sessions_expired"] += 1
            self._forget(session, out)
        else:
            reason = (
                "overslept its sleep duration" if state is not S.ACTIVE else "keep-alive expired"
            )
            self._lose(session, Event.EXPIRED, reason, now, out)

    def _lose(
        self, session: ClientSession, event: Event, reason: str, now: float, out: list[Action]
    ) -> None:
        """The node is lost: publish its will [§6.3], keep a persistent session for later."""
        self._transition(session, event)
        self.counters["clients_lost"] += 1
        _LOGGER.info("%r lost (%s); publishing its will", session.client_id, reason)
        self._requeue_inflight(session)
        if self._aggregating:
            will = self._will_of(session)
            if will is not None:
                token = self._new_token(session.client_id, 0) if will.qos else None
                out.append(
                    PublishUpstream(
                        session.client_id, will.topic, will.payload, will.qos, will.retain, token
                    )
                )
        else:
            out.append(CloseUpstreamSession(session.client_id, fire_will=True))
        if session.clean_session:
            self._forget(session, out)
        else:
            session.last_rx = now
            session.supervision_at = None
            self._schedule_supervision(session)

    def _end_attempt(self, session: ClientSession, now: float, out: list[Action]) -> None:
        """A CONNECT that did not complete: a clean session goes, a persistent one stays.

        Fix: this used to forget every session, so one unfinished re-CONNECT (CleanSession=0)
        threw away the node's subscriptions and the QoS 1/2 messages buffered for it, which the
        gateway had already acknowledged to the broker (DESIGN §4 "nothing acknowledged is lost").
        """
        if session.clean_session:
            self._forget(session, out)
            return
        session.last_rx = now
        session.supervision_at = None
        self._schedule_supervision(session)

    def _clean(self, session: ClientSession, out: list[Action]) -> None:
        """CleanSession=1: subscriptions, registrations, buffers and will data go [§6.3]."""
        for name in list(session.subscriptions):
            self._drop_subscription(session, name, out)
        session.registry.clear()
        discard_all(session.queue, self.budget, "clean_session")
        session.uplink.clear()
        session.inflight = None
        session.will = None

    def _forget(self, session: ClientSession, out: list[Action]) -> None:
        """Remove a session entirely (clean session ended, or a persistent one expired)."""
        if self.dirty is not None:
            self.dirty.add(session.client_id)  # its saved row goes too
        if self._aggregating:
            for name in list(session.subscriptions):
                self._drop_subscription(session, name, out)
        else:
            for name in list(session.subscriptions):
                self.index.remove(name, session.client_id)
        discard_all(session.queue, self.budget, "session_ended")
        if self.by_address.get(session.address) == session.client_id:
            del self.by_address[session.address]
        self.sessions.pop(session.client_id, None)

"""Connect: the CONNECT handshake, the will handshake and will updates (WILLTOPICUPD/WILLMSGUPD).

A mixin of ``GatewayCore`` (engine.py), kept apart because it is one flow: admission and ClientId
checks, creating or resuming the session by ClientId, WILLTOPICREQ / WILLMSGREQ, the node's own
upstream connection in transparent mode, and CONNACK.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Hashable

from gateway.bridge.base import Will
from gateway.core.access import AccessControl
from gateway.core.actions import Action, OpenUpstreamSession, SendFrame
from gateway.core.admission import Admission
from gateway.core.session import ClientSession, Event, SessionState, StoredWill
from gateway.core.settings import CoreSettings
from gateway.core.topics import TopicRegistry, mqtt_safe, valid_topic_level, valid_topic_name
from gateway.protocol.constants import ReturnCode
from gateway.protocol.messages import (
    Connack,
    Connect,
    Message,
    WillMsg,
    WillMsgReq,
    WillMsgResp,
    WillMsgUpd,
    WillTopic,
    WillTopicReq,
    WillTopicResp,
    WillTopicUpd,
)

__all__ = ["ConnectMixin"]

_LOGGER = logging.getLogger(__name__)

S = SessionState


class ConnectMixin:
    """CONNECT and will half of ``GatewayCore``."""

    settings: CoreSettings
    sessions: dict[str, ClientSession]
    counters: Counter[str]
    access: AccessControl
    admission: Admission
    _aggregating: bool
    _reject_in_outage: bool
    broker_up: bool

    # Provided by GatewayCore.
    def _session_at(self, address: Hashable) -> ClientSession | None: ...  # pragma: no cover
    def _send(
        self, session: ClientSession, message: Message, out: list[Action]
    ) -> None: ...  # pragma: no cover
    def _transition(self, session: ClientSession, event: Event) -> None: ...  # pragma: no cover
    def _bind_address(
        self, session: ClientSession, address: Hashable
    ) -> None: ...  # pragma: no cover
    def _schedule_supervision(self, session: ClientSession) -> None: ...  # pragma: no cover
    def _uplink_topic(self, client_id: str, topic: str) -> str:
        raise NotImplementedError  # pragma: no cover

    def _connected_session(
        self, address: Hashable, now: float, out: list[Action]
    ) -> ClientSession | None: ...  # pragma: no cover
    def _requeue_inflight(self, session: ClientSession) -> None: ...  # pragma: no cover
    def _pump(
        self, session: ClientSession, now: float, out: list[Action]
    ) -> None: ...  # pragma: no cover
    def _clean(self, session: ClientSession, out: list[Action]) -> None: ...  # pragma: no cover
    def _end_attempt(
        self, session: ClientSession, now: float, out: list[Action]
    ) -> None: ...  # pragma: no cover

    # ------------------------------------------------------------------ connect and will

    def _on_connect(self, address: Hashable, msg: Connect, now: float, out: list[Action]) -> None:
        verdict = self.admission.check_connect(address, msg.client_id, now)
        if verdict is not ReturnCode.ACCEPTED:
            if verdict is not None:  # None: over its source's rate, dropped unanswered
                out.append(SendFrame(address, Connack(verdict)))
            return
        if not mqtt_safe(msg.client_id) or (
            "{client_id}" in self.settings.uplink_topic_template
            and not valid_topic_level(msg.client_id)
        ):
            # The ClientId travels upstream (MQTT 5 user property, ClientId, topic template):
            # Fix: the ClientId goes into every upstream topic; "+", "#" or NUL there would be
            # an invalid PUBLISH and the broker would close the (shared) connection.
            self.counters["connect_refused_client_id"] += 1
            out.append(SendFrame(address, Connack(ReturnCode.REJECTED_NOT_SUPPORTED)))
            return
        if self._reject_in_outage and not self.broker_up and self._aggregating:
            # [mqttsn] outage-policy = "reject": back off for T_WAIT [§6.6] while the broker
            # is away (transparent mode: the node's own broker connection answers instead).
            self.counters["connect_refused_outage"] += 1
            out.append(SendFrame(address, Connack(ReturnCode.REJECTED_CONGESTION)))
            return
        session = self.sessions.get(msg.client_id)
        if session is None:
            if len(self.sessions) >= self.settings.max_clients:
                self.counters["connect_refused_max_clients"] += 1
                _LOGGER.warning(
                    "CONNECT from %r at %s refused: max_clients reached", msg.client_id, address
                )
                out.append(SendFrame(address, Connack(ReturnCode.REJECTED_CONGESTION)))
                return
            registry = TopicRegistry(self.settings.predefined, self.settings.max_topics_per_client)
            session = ClientSession(msg.client_id, address, registry)
            self.sessions[msg.client_id] = session
        previous = session.state
        self._bind_address(session, address)
        # CONNECT from asleep/awake with CleanSession=0 continues the session (P10): ids and the
        # upstream connection stay; any other CONNECT is a new connection whose topic ids must be
        # registered again before use (P3).
        resume = previous in (S.ASLEEP, S.AWAKE) and not msg.clean_session
        self._requeue_inflight(session)
        if msg.clean_session:
            self._clean(session, out)
        elif not resume:
            session.registry.clear()
        session.keepalive = float(msg.duration) if msg.duration else self.settings.zero_keepalive
        session.clean_session = msg.clean_session
        session.last_rx = now
        session.supervision_at = None
        self._transition(session, Event.CONNECT)
        self._schedule_supervision(session)
        if msg.will:
            session.will_stage = "topic"
            self._send(session, WillTopicReq(), out)
            return
        self._finish_connect(session, now, out, renew_upstream=not resume)

    def _finish_connect(
        self, session: ClientSession, now: float, out: list[Action], renew_upstream: bool
    ) -> None:
        if not self._aggregating and renew_upstream:
            session.will_stage = "upstream"
            out.append(
                OpenUpstreamSession(
                    session.client_id,
                    session.clean_session,
                    self._will_of(session),
                    int(session.keepalive),
                )
            )
            return
        session.will_stage = ""
        self._accept_connect(session, now, out)

    def _accept_connect(self, session: ClientSession, now: float, out: list[Action]) -> None:
        self._send(session, Connack(ReturnCode.ACCEPTED), out)
        self._transition(session, Event.CONNECTED)
        session.last_rx = now
        self._schedule_supervision(session)
        _LOGGER.info(
            "%r connected from %s (keep-alive %ss, clean=%s)",
            session.client_id,
            session.address,
            int(session.keepalive),
            session.clean_session,
        )
        self._pump(session, now, out)

    def _will_of(self, session: ClientSession) -> Will | None:
        will = session.will
        if will is None or not will.topic:
            return None
        return Will(
            self._uplink_topic(session.client_id, will.topic), will.message, will.qos, will.retain
        )

    def _on_willtopic(
        self, address: Hashable, msg: WillTopic, now: float, out: list[Action]
    ) -> None:
        session = self._session_at(address)
        if session is None or session.state is not S.CONNECTING:
            return
        session.last_rx = now
        if session.will_stage == "msg":  # our WILLMSGREQ was lost; the node repeats WILLTOPIC
            self._send(session, WillMsgReq(), out)
            return
        if session.will_stage != "topic":
            return
        if not msg.will_topic:
            # Empty WILLTOPIC deletes the will; no WILLMSGREQ follows (P11).
            session.will = None
            self._finish_connect(session, now, out, renew_upstream=True)
            return
        if not valid_topic_name(msg.will_topic) or not self.access.may_publish(
            session.client_id, msg.will_topic
        ):
            # Fix: a will on "a/#" can never be published (upstream it is an invalid PUBLISH
            # or CONNECT); refuse the connection rather than arm it [§5.3.10: not supported].
            self.counters["connect_refused_will_topic"] += 1
            session.will_stage = ""
            self._send(session, Connack(ReturnCode.REJECTED_NOT_SUPPORTED), out)
            self._transition(session, Event.REFUSED)
            self._end_attempt(session, now, out)
            return
        session.will = StoredWill(msg.will_topic, b"", int(msg.qos), msg.retain)
        session.will_stage = "msg"
        self._send(session, WillMsgReq(), out)

    def _on_willmsg(self, address: Hashable, msg: WillMsg, now: float, out: list[Action]) -> None:
        session = self._session_at(address)
        if session is None or session.state is not S.CONNECTING or session.will_stage != "msg":
            return
        assert session.will is not None
        session.will.message = msg.will_msg
        session.last_rx = now
        self._finish_connect(session, now, out, renew_upstream=True)

    def _on_willtopicupd(
        self, address: Hashable, msg: WillTopicUpd, now: float, out: list[Action]
    ) -> None:
        session = self._connected_session(address, now, out)
        if session is None:
            return
        if not msg.will_topic:
            session.will = None  # empty WILLTOPICUPD deletes topic and message [§6.4]
        elif not valid_topic_name(msg.will_topic) or not self.access.may_publish(
            session.client_id, msg.will_topic
        ):
            # Fix: never arm a will that cannot be published (see _on_willtopic).
            self._send(session, WillTopicResp(ReturnCode.REJECTED_NOT_SUPPORTED), out)
            return
        else:
            message = session.will.message if session.will else b""
            session.will = StoredWill(msg.will_topic, message, int(msg.qos), msg.retain)
        self._refresh_upstream_will(session, out)
        self._send(session, WillTopicResp(ReturnCode.ACCEPTED), out)

    def _on_willmsgupd(
        self, address: Hashable, msg: WillMsgUpd, now: float, out: list[Action]
    ) -> None:
        session = self._connected_session(address, now, out)
        if session is None:
            return
        if session.will is None:
            session.will = StoredWill("", msg.will_msg)  # a message waiting for its topic
        else:
            session.will.message = msg.will_msg
        self._refresh_upstream_will(session, out)
        self._send(session, WillMsgResp(ReturnCode.ACCEPTED), out)

    def _refresh_upstream_will(self, session: ClientSession, out: list[Action]) -> None:
        # A live MQTT connection cannot change its will: the bridge reconnects the node's
        # connection, keeping the broker session (clean_session False) [§6.4, reference §5.5].
        if not self._aggregating:
            out.append(
                OpenUpstreamSession(
                    session.client_id, False, self._will_of(session), int(session.keepalive)
                )
            )

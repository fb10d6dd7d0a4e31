"""Uplink requests: REGISTER, PUBLISH (QoS -1..2), PUBREL, SUBSCRIBE and UNSUBSCRIBE from nodes.

A mixin of ``GatewayCore`` (engine.py), kept apart because it is the node -> gateway half of the
flow: topic registration, uplink publishes to the broker (at most one in the broker's hands per
message id, duplicates answered, never published twice), and the subscription table with its
upstream SUBSCRIBE / UNSUBSCRIBE (shared in aggregating mode, per node in transparent mode).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from gateway.core.access import AccessControl
from gateway.core.actions import (
    Action,
    PublishUpstream,
    SendFrame,
    SubscribeUpstream,
    UnsubscribeUpstream,
)
from gateway.core.session import ClientSession, SessionState, UplinkPending
from gateway.core.settings import CoreSettings
from gateway.core.subscriptions import SubscriptionIndex
from gateway.core.topics import TopicRegistry, is_wildcard, valid_filter, valid_topic_name
from gateway.protocol.constants import QoS, ReturnCode, TopicIdType
from gateway.protocol.messages import (
    Disconnect,
    Message,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Regack,
    Register,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    id_to_short_name,
)

__all__ = ["UplinkMixin"]

S = SessionState
_CONNECTED = (S.ACTIVE, S.AWAKE)
_MAX_UPLINK_PENDING = 32  # QoS 1/2 from one node awaiting the broker (spec allows 1; be lenient)
# Enum members as module constants: ``QoS.AT_MOST_ONCE`` is a ~0.2 us lookup in Python 3.11.
_QOS_0 = QoS.AT_MOST_ONCE
_QOS_MINUS_ONE = QoS.MINUS_ONE
_QOS_2 = QoS.EXACTLY_ONCE
_NORMAL = TopicIdType.NORMAL
# Cached QoS 0 routes (see qos0_route), ~750 bytes each: per node, and in all (~37 MB).
_MAX_ROUTES = 64
_MAX_ROUTES_TOTAL = 50_000
_R = TypeVar("_R")


class UplinkMixin:
    """Node -> broker half of ``GatewayCore`` (and the subscriptions that drive the other half)."""

    settings: CoreSettings
    sessions: dict[str, ClientSession]
    by_address: dict[Hashable, str]
    index: SubscriptionIndex
    counters: Counter[str]
    access: AccessControl
    _aggregating: bool
    _topic_template: str | None
    _route_count: int
    _reject_in_outage: bool
    dirty: set[str] | None
    broker_up: bool

    # Provided by GatewayCore.
    def _send(
        self, session: ClientSession, message: Message, out: list[Action]
    ) -> None: ...  # pragma: no cover
    def _uplink_topic(self, client_id: str, topic: str) -> str:
        raise NotImplementedError  # pragma: no cover

    def _new_token(self, client_id: str, msg_id: int) -> int:
        raise NotImplementedError  # pragma: no cover

    def _connected_session(
        self, address: Hashable, now: float, out: list[Action]
    ) -> ClientSession | None: ...  # pragma: no cover

    # ------------------------------------------------------------------ topics and publish

    def _on_register(self, address: Hashable, msg: Register, now: float, out: list[Action]) -> None:
        session = self._connected_session(address, now, out)
        if session is None:
            return
        if not valid_topic_name(msg.topic_name):
            self._send(session, Regack(0, msg.msg_id, ReturnCode.REJECTED_NOT_SUPPORTED), out)
            return
        if not self.access.may_publish(session.client_id, msg.topic_name):
            # [access.rules]: "not supported", never "invalid topic id" (the node would
            # REGISTER again forever).
            self.counters["register_refused_access"] += 1
            self._send(session, Regack(0, msg.msg_id, ReturnCode.REJECTED_NOT_SUPPORTED), out)
            return
        topic_id = session.registry.register(msg.topic_name)
        if topic_id is None:
            self.counters["register_refused_limit"] += 1
            self._send(session, Regack(0, msg.msg_id, ReturnCode.REJECTED_CONGESTION), out)
            return
        self._send(session, Regack(topic_id, msg.msg_id, ReturnCode.ACCEPTED), out)

    def publish_fields(
        self,
        address: Hashable,
        qos: QoS,
        topic_id_type: TopicIdType,
        retain: bool,
        topic_id: int,
        msg_id: int,
        data: bytes,
        now: float,
    ) -> PublishUpstream | None:
        """Accept a node's PUBLISH given as fields, or None (nothing changed) for any other case.

        The uplink hot path (the runtime calls it with ``codec.peek_publish``'s fields, no
        ``Publish`` built) and the accepting half of ``_on_publish``: a connected session, a
        known topic it may publish to, and for QoS 1/2 a new MsgId within the bound. Whatever
        needs an answer to the node, or is QoS -1, is left to ``_on_publish``.
        """
        found = self._uplink_topic_of(address, topic_id_type, topic_id)
        if found is None or qos is _QOS_MINUS_ONE:
            return None
        session, topic = found
        client_id = session.client_id
        if qos is _QOS_0:
            session.last_rx = now
            return PublishUpstream(client_id, topic, data, 0, retain)
        uplink = session.uplink
        if msg_id in uplink or len(uplink) >= _MAX_UPLINK_PENDING:
            return None
        if self._reject_in_outage and not self.broker_up:
            return None
        session.last_rx = now
        token = self._new_token(client_id, msg_id)
        uplink[msg_id] = UplinkPending(msg_id, topic_id, int(qos), token=token)
        if self.dirty is not None and qos is _QOS_2:
            # QoS 1 needs no row of its own: the state file saves the node's row with the
            # entry only if the broker has not acknowledged it within an interval (store.py).
            self.dirty.add(client_id)
        return PublishUpstream(client_id, topic, data, int(qos), retain, token)

    def qos0_route(self, address: Hashable, key: bytes, now: float) -> Any:
        """The route cached for a QoS 0 PUBLISH from ``address``, or None: the uplink hot path.

        ``key`` is the frame's MsgType, Flags and TopicId bytes. A route is what
        ``add_qos0_route`` made when the core accepted such a PUBLISH before; a hit is the same
        decision as ``publish_fields`` makes for QoS 0, with the same effect (``last_rx``: any
        message restarts the keep-alive timer [§6.11]):
        the session is looked up and must be connected, and its topic table drops its routes
        on every change (the access rules and the topic template are fixed at start).
        """
        client_id = self.by_address.get(address)
        if client_id is None:
            return None
        session = self.sessions.get(client_id)
        if session is None or session.state not in _CONNECTED:
            return None
        route = session.registry.routes.get(key)
        if route is not None:
            session.last_rx = now
        return route

    def add_qos0_route(
        self,
        address: Hashable,
        key: bytes,
        topic_id_type: TopicIdType,
        topic_id: int,
        now: float,
        make: Callable[[str, str], _R],
    ) -> _R | None:
        """Accept a QoS 0 PUBLISH without retain as ``publish_fields`` does; cache its route.

        ``make(client_id, topic)`` builds the route (the runtime: the bridge's publisher for
        that topic), kept under ``key`` (see ``qos0_route``). None: not accepted, nothing
        changed, and the caller takes the general path.
        """
        found = self._uplink_topic_of(address, topic_id_type, topic_id)
        if found is None:
            return None
        session, topic = found
        session.last_rx = now
        route = make(session.client_id, topic)
        self._cache_route(session, key, route)
        return route

    def qos1_route(self, address: Hashable, key: bytes, msg_id: int, now: float) -> Any:
        """``(route, token)`` for a QoS 1 PUBLISH on a cached route, or None: the hot path.

        As ``qos0_route``, and then what ``publish_fields`` does for QoS 1: a MsgId not in
        flight (else a retransmission, answered there, never published twice [§6.13]), within
        the bound, no outage refusal; the pending entry and its token. None
        changes nothing: the caller takes the general path, which answers every other case.
        """
        # The lookup is written out as in qos0_route, not shared: a call and a tuple less per
        # message on the hot path.
        client_id = self.by_address.get(address)
        if client_id is None:
            return None
        session = self.sessions.get(client_id)
        if session is None or session.state not in _CONNECTED:
            return None
        route = session.registry.routes.get(key)
        if route is None:
            return None
        uplink = session.uplink
        if msg_id in uplink or len(uplink) >= _MAX_UPLINK_PENDING:
            return None
        if self._reject_in_outage and not self.broker_up:
            return None
        session.last_rx = now
        token = self._new_token(client_id, msg_id)
        uplink[msg_id] = UplinkPending(msg_id, key[2] << 8 | key[3], 1, token=token)
        return route, token

    def add_qos1_route(
        self,
        address: Hashable,
        key: bytes,
        topic_id_type: TopicIdType,
        topic_id: int,
        make: Callable[[str, str], _R],
    ) -> None:
        """After ``publish_fields`` accepted a QoS 1 PUBLISH (no retain): cache its route.

        The route is ``(make(client_id, topic), client_id, topic)``; ``qos1_route`` takes it.
        """
        found = self._uplink_topic_of(address, topic_id_type, topic_id)
        if found is not None:
            session, topic = found
            client_id = session.client_id
            self._cache_route(session, key, (make(client_id, topic), client_id, topic))

    def _cache_route(self, session: ClientSession, key: bytes, route: Any) -> None:
        routes = session.registry.routes
        if len(routes) >= _MAX_ROUTES:
            routes.clear()  # bounded: a node trying many (short) topic ids
        self._route_count += 1
        if self._route_count > _MAX_ROUTES_TOTAL:  # and in all: made again as they are used
            for other in self.sessions.values():
                other.registry.routes.clear()
            self._route_count = 1
        routes[key] = route

    def _uplink_topic_of(
        self, address: Hashable, topic_id_type: TopicIdType, topic_id: int
    ) -> tuple[ClientSession, str] | None:
        """The connected session at ``address`` and the broker topic it may publish to, or None."""
        client_id = self.by_address.get(address)
        if client_id is None:
            return None
        session = self.sessions.get(client_id)
        if session is None or session.state not in _CONNECTED:
            return None
        registry = session.registry
        if topic_id_type is _NORMAL:
            topic = registry.by_id.get(topic_id)
        else:
            topic = registry.resolve(topic_id_type, topic_id)
        if topic is None:
            return None
        access = self.access
        if access.restricted_topics and not access.may_publish(client_id, topic):
            return None
        if self._topic_template is not None:
            topic = self._uplink_topic(client_id, topic)
        return session, topic

    def _on_publish(self, address: Hashable, msg: Publish, now: float, out: list[Action]) -> None:
        accepted = self.publish_fields(
            address, msg.qos, msg.topic_id_type, msg.retain, msg.topic_id, msg.msg_id, msg.data, now
        )
        if accepted is not None:
            out.append(accepted)
            return
        # Not accepted as it is: say why to the node, or drop and count.
        client_id = self.by_address.get(address)
        session = self.sessions.get(client_id) if client_id is not None else None
        qos = msg.qos
        if qos is _QOS_MINUS_ONE:
            if session is None and not self.access.admits("", address):
                self.counters["minus_one_refused_access"] += 1  # anonymous: ClientId ""
                return
            self._publish_minus_one(session, msg, out)
            return
        if session is None or session.state not in _CONNECTED:
            self.counters["unattributable"] += 1
            out.append(SendFrame(address, Disconnect()))
            return
        session.last_rx = now
        topic = session.registry.resolve(msg.topic_id_type, msg.topic_id)
        if topic is None:
            # Any QoS, even 0: the node must learn its id is unknown (P25) [§6.6].
            self.counters["publish_invalid_topic_id"] += 1
            self._send(
                session, Puback(msg.topic_id, msg.msg_id, ReturnCode.REJECTED_INVALID_TOPIC_ID), out
            )
            return
        if not self.access.may_publish(session.client_id, topic):
            # [access.rules], any QoS and any kind of topic id (a gateway-registered id too).
            self.counters["publish_refused_access"] += 1
            self._send(
                session, Puback(msg.topic_id, msg.msg_id, ReturnCode.REJECTED_NOT_SUPPORTED), out
            )
            return
        pending = session.uplink.get(msg.msg_id)
        if pending is not None:
            # A retransmission (DUP) of what the broker is still taking, or a QoS 2 the broker
            # already took: never publish twice; repeat the PUBREC if we sent one [§6.13].
            self.counters["uplink_duplicate"] += 1
            if pending.acked:
                self._send(session, Pubrec(msg.msg_id), out)
            return
        # Congestion [§6.6]: too many in the broker's hands, or the broker away and the
        # outage policy "reject": the node waits T_WAIT and sends it again.
        if len(session.uplink) < _MAX_UPLINK_PENDING:
            self.counters["uplink_refused_outage"] += 1
        self._send(session, Puback(msg.topic_id, msg.msg_id, ReturnCode.REJECTED_CONGESTION), out)

    def _publish_minus_one(
        self, session: ClientSession | None, msg: Publish, out: list[Action]
    ) -> None:
        # QoS -1 needs no connection; only pre-defined ids and short names [§6.8].
        if msg.topic_id_type is TopicIdType.PREDEFINED:
            topic = self.settings.predefined.get(msg.topic_id)
        else:
            # Fix: the registry's resolve validates the short name (no wildcard, no NUL).
            topic = TopicRegistry.resolve_short(msg.topic_id)
        if topic is None:
            self.counters["minus_one_unknown_topic"] += 1  # nothing can be reported back
            return
        client_id = session.client_id if session is not None else None
        if not self.access.may_publish(client_id or "", topic):
            self.counters["minus_one_refused_access"] += 1
            return
        upstream_topic = self._uplink_topic(client_id, topic) if client_id else topic
        out.append(
            PublishUpstream(
                client_id,
                upstream_topic,
                msg.data,
                0,
                msg.retain,
            )
        )

    def _on_pubrel(self, address: Hashable, msg: Pubrel, now: float, out: list[Action]) -> None:
        session = self._connected_session(address, now, out)
        if session is None:
            return
        pending = session.uplink.get(msg.msg_id)
        if pending is not None and not pending.acked:
            return  # PUBREL before our PUBREC: the broker has not taken it yet
        session.uplink.pop(msg.msg_id, None)
        self._send(session, Pubcomp(msg.msg_id), out)  # idempotent for a repeated PUBREL

    # ------------------------------------------------------------------ subscribe

    def _on_subscribe(
        self, address: Hashable, msg: Subscribe, now: float, out: list[Action]
    ) -> None:
        session = self._connected_session(address, now, out)
        if session is None:
            return
        name, reply_id, code = self._subscription_target(
            session, msg.topic_id_type, msg.topic_name, msg.topic_id
        )
        if (
            name is not None
            and name not in session.subscriptions
            and (len(session.subscriptions) >= self.settings.max_subscriptions_per_client)
        ):
            code = ReturnCode.REJECTED_CONGESTION
        if (
            code is ReturnCode.ACCEPTED
            and name is not None
            and not self.access.may_subscribe(session.client_id, name)
        ):
            self.counters["subscribe_refused_access"] += 1  # no allowed pattern covers it
            code = ReturnCode.REJECTED_NOT_SUPPORTED
        if name is None or code is not ReturnCode.ACCEPTED:
            self._send(session, Suback(0, msg.msg_id, code, QoS.AT_MOST_ONCE), out)
            return
        if msg.topic_id_type is TopicIdType.NORMAL and not is_wildcard(name):
            registered = session.registry.register(name)
            if registered is None:
                self._send(
                    session,
                    Suback(0, msg.msg_id, ReturnCode.REJECTED_CONGESTION, QoS.AT_MOST_ONCE),
                    out,
                )
                return
            reply_id = registered
        granted = int(msg.qos)
        session.subscriptions[name] = granted
        session.retained_until[name] = now + self.settings.retained_window
        _, max_qos = self.index.add(name, session.client_id, granted)
        # SUBACK first, then the upstream SUBSCRIBE, whose retained messages follow (P8).
        self._send(session, Suback(reply_id, msg.msg_id, ReturnCode.ACCEPTED, QoS(granted)), out)
        if self._aggregating:
            # Always re-sent, even when already held: the broker then re-sends retained messages.
            out.append(SubscribeUpstream(None, name, max_qos))
        else:
            out.append(SubscribeUpstream(session.client_id, name, granted))

    def _subscription_target(
        self, session: ClientSession, topic_id_type: TopicIdType, topic_name: str, topic_id: int
    ) -> tuple[str | None, int, ReturnCode]:
        """(filter, TopicId for SUBACK, return code) for a SUBSCRIBE/UNSUBSCRIBE."""
        if topic_id_type is TopicIdType.NORMAL:
            if not valid_filter(topic_name):
                return None, 0, ReturnCode.REJECTED_NOT_SUPPORTED
            return topic_name, 0, ReturnCode.ACCEPTED  # wildcard: TopicId 0 (P1)
        if topic_id_type is TopicIdType.PREDEFINED:
            name = self.settings.predefined.get(topic_id)
            if name is None:
                return None, 0, ReturnCode.REJECTED_INVALID_TOPIC_ID
            return name, topic_id, ReturnCode.ACCEPTED
        try:
            name = id_to_short_name(topic_id)
        except UnicodeDecodeError:
            return None, 0, ReturnCode.REJECTED_INVALID_TOPIC_ID
        if not valid_filter(name):
            # Fix: "a#" or NUL would be an invalid upstream SUBSCRIBE, which an MQTT 3.1.1
            # broker answers by closing the connection (every node's, in aggregating mode).
            return None, 0, ReturnCode.REJECTED_INVALID_TOPIC_ID
        return name, 0, ReturnCode.ACCEPTED

    def _on_unsubscribe(
        self, address: Hashable, msg: Unsubscribe, now: float, out: list[Action]
    ) -> None:
        session = self._connected_session(address, now, out)
        if session is None:
            return
        name, _, _ = self._subscription_target(
            session, msg.topic_id_type, msg.topic_name, msg.topic_id
        )
        if name is not None and name in session.subscriptions:
            self._drop_subscription(session, name, out)
        self._send(session, Unsuback(msg.msg_id), out)  # answered even when nothing matched

    def _drop_subscription(self, session: ClientSession, name: str, out: list[Action]) -> None:
        del session.subscriptions[name]
        session.retained_until.pop(name, None)
        last = self.index.remove(name, session.client_id)
        if self._aggregating:
            if last:
                out.append(UnsubscribeUpstream(None, name))
        else:
            out.append(UnsubscribeUpstream(session.client_id, name))

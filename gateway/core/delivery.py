"""Downlink: broker messages to nodes, REGISTER before PUBLISH, one QoS 1/2 in flight, retries.

A mixin of ``GatewayCore`` (engine.py), kept apart because it is the other half of the flow:
fan-out by subscription, per-node queues (bounded; they are also the sleeping-node buffer), the
gateway-originated REGISTER / PUBLISH / PUBREL with T_RETRY and N_RETRY, and the wake-up flush
that ends with PINGRESP.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Hashable
from typing import TYPE_CHECKING

from gateway.core.actions import Action
from gateway.core.delivery_queue import Delivery, QueueBudget, enqueue, take
from gateway.core.session import ClientSession, Event, OutboundInflight, SessionState
from gateway.core.settings import CoreSettings
from gateway.core.subscriptions import SubscriptionIndex
from gateway.protocol.constants import QoS, ReturnCode, TopicIdType
from gateway.protocol.messages import (
    Message,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Regack,
    Register,
    unchecked_builder,
)

if TYPE_CHECKING:
    from gateway.core.timers import TimerHeap

__all__ = ["DeliveryMixin"]

_LOGGER = logging.getLogger(__name__)

S = SessionState
_PERSISTENT_QUEUE = (S.ASLEEP, S.AWAKE, S.CONNECTING, S.DISCONNECTED, S.LOST)
# Downlink PUBLISH without its validating constructor: every field comes from the gateway's own
# tables (ids 1..0xFFFE, msg ids 1..0xFFFF, QoS 0..2), the fan-out hot path.
_publish = unchecked_builder(
    Publish, ("topic_id", "data", "qos", "msg_id", "topic_id_type", "dup", "retain")
)
_QOS = (QoS.AT_MOST_ONCE, QoS.AT_LEAST_ONCE, QoS.EXACTLY_ONCE)
# Enum members as module constants: ``S.ACTIVE`` is a ~0.2 us lookup in Python 3.11.
_ACTIVE = S.ACTIVE
_AWAKE = S.AWAKE
_NORMAL = TopicIdType.NORMAL


class DeliveryMixin:
    """Broker -> node half of ``GatewayCore``."""

    settings: CoreSettings
    sessions: dict[str, ClientSession]
    index: SubscriptionIndex
    budget: QueueBudget
    counters: Counter[str]
    _timers: TimerHeap
    _predefined_by_name: dict[str, int]
    _aggregating: bool
    dirty: set[str] | None
    _last_qos0: tuple[Delivery, int, TopicIdType, Publish] | None = None

    # Provided by GatewayCore.
    def _session_at(self, address: Hashable) -> ClientSession | None: ...  # pragma: no cover
    def _send(
        self, session: ClientSession, message: Message, out: list[Action]
    ) -> None: ...  # pragma: no cover
    def _transition(self, session: ClientSession, event: Event) -> None: ...  # pragma: no cover
    def _schedule_supervision(self, session: ClientSession) -> None: ...  # pragma: no cover
    def _lose(
        self, session: ClientSession, event: Event, reason: str, now: float, out: list[Action]
    ) -> None: ...  # pragma: no cover

    # ------------------------------------------------------------------ fan-out

    def on_broker_message(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        now: float,
        client_id: str | None = None,
        filters: frozenset[str] | None = None,
    ) -> list[Action]:
        """A PUBLISH from the broker; ``client_id`` set in transparent mode (that node's link).

        ``filters`` names the subscriptions this copy was sent for (MQTT 5 Subscription
        Identifiers). A broker may send one copy per matching subscription; each node then
        takes only the copy labelled with its own first matching filter, so overlapping
        filters never deliver a message twice. None (MQTT 3.1.1): every copy goes to every
        matching node, as the broker cannot say which subscription a copy is for.
        """
        out: list[Action] = []
        if client_id is not None:
            session = self.sessions.get(client_id)
            if session is not None:
                mine = [(f, q) for f, cid, q in self.index.matches(topic) if cid == client_id]
                if filters is not None and mine and min(f for f, _ in mine) not in filters:
                    return out  # the node's connection also gets the copy for its first filter
                granted = max((q for _, q in mine), default=qos)
                self._deliver(
                    session, Delivery(topic, payload, min(qos, granted), retain), now, out
                )
            return out
        matched: dict[str, list[tuple[str, int]]] = {}
        for topic_filter, cid, granted in self.index.matches(topic):
            subs = matched.get(cid)
            if subs is None:
                matched[cid] = [(topic_filter, granted)]
            else:
                subs.append((topic_filter, granted))
        # One Delivery per effective QoS, shared by the nodes (it is immutable): with the QoS 0
        # PUBLISH reuse in _send_delivery, a fan-out builds and encodes once, not once per node.
        shared: list[Delivery | None] = [None, None, None]
        for cid, subs in matched.items():
            session = self.sessions.get(cid)
            if session is None:
                continue
            if retain:
                # A retained PUBLISH answers a fresh SUBSCRIBE; route it only to the nodes that
                # just subscribed to that filter, not to everyone already holding it.
                if not any(
                    session.retained_until.get(f, 0.0) >= now and (filters is None or f in filters)
                    for f, _ in subs
                ):
                    continue
            elif (
                filters is not None
                and (subs[0][0] if len(subs) == 1 else min(f for f, _ in subs)) not in filters
            ):
                continue  # another copy, labelled with this node's own filter, delivers it
            granted = subs[0][1] if len(subs) == 1 else max(g for _, g in subs)
            effective = qos if qos < granted else granted
            delivery = shared[effective]
            if delivery is None:
                delivery = shared[effective] = Delivery(topic, payload, effective, retain)
            self._deliver(session, delivery, now, out)
        return out

    def _deliver(
        self, session: ClientSession, delivery: Delivery, now: float, out: list[Action]
    ) -> None:
        state = session.state
        if (state is _ACTIVE or state is _AWAKE) and session.inflight is None and not session.queue:
            self._send_delivery(session, delivery, now, out)
            if state is _AWAKE:
                self._pump(session, now, out)
            if self.dirty is not None and (session.inflight is not None or state is S.AWAKE):
                self.dirty.add(session.client_id)  # a QoS 0 sent at once changes nothing kept
            return
        if state in _PERSISTENT_QUEUE or session.inflight is not None or session.queue:
            if self.dirty is not None:
                self.dirty.add(session.client_id)
            if state in (S.DISCONNECTED, S.LOST) and delivery.qos == 0:
                self.budget.count_drop("offline_qos0")
                return
            if not enqueue(session.queue, delivery, self.budget):
                _LOGGER.info(
                    "buffer full for %r: refused a message on %s", session.client_id, delivery.topic
                )

    # ------------------------------------------------------------------ sending

    def _pump(self, session: ClientSession, now: float, out: list[Action]) -> None:
        """Send queued deliveries while nothing is in flight; an awake node then gets PINGRESP."""
        while (
            session.inflight is None
            and session.queue
            and (session.state is S.ACTIVE or session.state is S.AWAKE)
        ):
            self._send_delivery(session, take(session.queue, self.budget), now, out)
        if session.state is S.AWAKE and session.inflight is None and not session.queue:
            # [§6.14] buffer empty: PINGRESP, and the node is asleep again; timer restarts.
            self._send(session, Pingresp(), out)
            self._transition(session, Event.FLUSHED)
            session.last_rx = now
            session.supervision_at = None
            self._schedule_supervision(session)

    def _send_delivery(
        self, session: ClientSession, delivery: Delivery, now: float, out: list[Action]
    ) -> None:
        topic = delivery.topic
        # Fix: an id the node already knows (from its SUBACK or REGISTER) comes first. Checking
        # pre-defined names first broke a SUBSCRIBE by the name of a pre-defined topic: SUBACK
        # gave a normal id, then every PUBLISH came with the pre-defined one [§6.9 SUBACK].
        registered = session.registry.id_for(topic)
        predefined = self._predefined_by_name.get(topic)
        if registered is not None:
            topic_id, id_type = registered, _NORMAL
        elif predefined is not None:
            topic_id, id_type = predefined, TopicIdType.PREDEFINED
        elif len(topic) == 2 and len(topic.encode()) == 2:
            topic_id, id_type = (ord(topic[0]) << 8) | ord(topic[1]), TopicIdType.SHORT_NAME
        else:
            # [§6.10] REGISTER first and hold the PUBLISH until the REGACK (P2).
            new_id = session.registry.register(topic)
            if new_id is None:
                self.budget.count_drop("topic_ids_exhausted")
                return
            msg_id = session.allocate_msg_id()
            self._start_inflight(
                session, OutboundInflight("register", msg_id, new_id, 0, delivery), now
            )
            self._send(session, Register(new_id, msg_id, topic), out)
            return
        if delivery.qos == 0:
            # The same delivery to the next node of a fan-out, under the same topic id, is the
            # same PUBLISH: one object, so the runtime encodes it once too.
            last = self._last_qos0
            if (
                last is not None
                and last[0] is delivery
                and last[1] == topic_id
                and last[2] is id_type
            ):
                message = last[3]
            else:
                message = _publish(
                    topic_id, delivery.payload, _QOS[0], 0, id_type, False, delivery.retain
                )
                self._last_qos0 = (delivery, topic_id, id_type, message)
            self._send(session, message, out)
            return
        msg_id = session.allocate_msg_id()
        self._start_inflight(
            session, OutboundInflight("publish", msg_id, topic_id, int(id_type), delivery), now
        )
        self._send(
            session,
            _publish(
                topic_id,
                delivery.payload,
                _QOS[delivery.qos],
                msg_id,
                id_type,
                False,
                delivery.retain,
            ),
            out,
        )

    def _start_inflight(
        self, session: ClientSession, inflight: OutboundInflight, now: float
    ) -> None:
        inflight.deadline = now + self.settings.t_retry
        session.inflight = inflight
        self._timers.push(inflight.deadline, session.client_id, "retry")

    def _requeue_inflight(self, session: ClientSession) -> None:
        """Put an unacknowledged delivery back at the head of the queue (node went away)."""
        inflight = session.inflight
        session.inflight = None
        if inflight is None or inflight.kind == "pubrel":
            return  # after PUBREC the node has the message; nothing to deliver again
        if inflight.kind == "register":
            # Fix: the node never acknowledged this id; keeping it registered meant the next
            # attempt (after a wake-up or a resumed CONNECT) sent a PUBLISH with an id the node
            # does not know instead of REGISTERing first [§6.10, P2].
            session.registry.forget(inflight.topic_id)
        session.queue.appendleft(inflight.delivery)
        self.budget.used += 1

    def _finish_inflight(self, session: ClientSession, now: float, out: list[Action]) -> None:
        session.inflight = None
        self._pump(session, now, out)

    # ------------------------------------------------------------------ acknowledgements

    def _inflight_for(
        self, address: Hashable, kind: str, msg_id: int, now: float
    ) -> tuple[ClientSession, OutboundInflight] | None:
        session = self._session_at(address)
        if session is None:
            return None
        session.last_rx = now
        inflight = session.inflight
        if inflight is None or inflight.kind != kind or inflight.msg_id != msg_id:
            # Unsolicited or late acknowledgement: counted and ignored (STYLE rule 9).
            self.counters[f"unexpected_ack_{kind}"] += 1
            return None
        return session, inflight

    def _on_regack(self, address: Hashable, msg: Regack, now: float, out: list[Action]) -> None:
        found = self._inflight_for(address, "register", msg.msg_id, now)
        if found is None:
            return
        session, inflight = found
        session.inflight = None
        if msg.return_code is ReturnCode.ACCEPTED:
            self._send_delivery(session, inflight.delivery, now, out)
        else:
            # The node refused the topic: forget it and drop this delivery [§6.10].
            session.registry.forget(inflight.topic_id)
            self.budget.count_drop("register_rejected")
        self._pump(session, now, out)

    def _on_puback(self, address: Hashable, msg: Puback, now: float, out: list[Action]) -> None:
        found = self._inflight_for(address, "publish", msg.msg_id, now)
        if found is None:
            return
        session, inflight = found
        if (
            msg.return_code is ReturnCode.REJECTED_INVALID_TOPIC_ID
            and inflight.topic_id_type == TopicIdType.NORMAL
        ):
            # The node lost our id (e.g. it rebooted): register again, then re-send (EMQX does).
            session.registry.forget(inflight.topic_id)
            session.queue.appendleft(inflight.delivery)
            self.budget.used += 1
        elif msg.return_code is not ReturnCode.ACCEPTED:
            self.budget.count_drop("rejected_by_node")
        self._finish_inflight(session, now, out)

    def _on_pubrec(self, address: Hashable, msg: Pubrec, now: float, out: list[Action]) -> None:
        session = self._session_at(address)
        if (
            session is not None
            and session.inflight is not None
            and session.inflight.kind == "pubrel"
            and session.inflight.msg_id == msg.msg_id
        ):
            self._send(session, Pubrel(msg.msg_id), out)  # our PUBREL was lost
            return
        found = self._inflight_for(address, "publish", msg.msg_id, now)
        if found is None:
            return
        session, inflight = found
        inflight.kind = "pubrel"
        inflight.retries = 0
        self._start_inflight(session, inflight, now)
        self._send(session, Pubrel(msg.msg_id), out)

    def _on_pubcomp(self, address: Hashable, msg: Pubcomp, now: float, out: list[Action]) -> None:
        found = self._inflight_for(address, "pubrel", msg.msg_id, now)
        if found is None:
            return
        self._finish_inflight(found[0], now, out)

    # ------------------------------------------------------------------ retransmission

    def _check_retry(self, session: ClientSession, now: float, out: list[Action]) -> None:
        inflight = session.inflight
        if inflight is None or inflight.deadline > now:
            if inflight is not None:
                self._timers.push(inflight.deadline, session.client_id, "retry")
            return
        if inflight.retries >= self.settings.n_retry:
            self._lose(
                session,
                Event.RETRY_EXHAUSTED,
                f"{inflight.kind} unanswered after {inflight.retries} retries",
                now,
                out,
            )
            return
        inflight.retries += 1
        self.counters["retransmissions"] += 1
        inflight.deadline = now + self.settings.t_retry
        self._timers.push(inflight.deadline, session.client_id, "retry")
        _LOGGER.info(
            "%r: retransmitting %s (msg id %d, try %d)",
            session.client_id,
            inflight.kind,
            inflight.msg_id,
            inflight.retries,
        )
        delivery = inflight.delivery
        if inflight.kind == "register":
            self._send(session, Register(inflight.topic_id, inflight.msg_id, delivery.topic), out)
        elif inflight.kind == "pubrel":
            self._send(session, Pubrel(inflight.msg_id), out)
        else:
            # [§6.13] retransmitted PUBLISH: DUP set, same MsgId.
            self._send(
                session,
                Publish(
                    inflight.topic_id,
                    delivery.payload,
                    QoS(delivery.qos),
                    inflight.msg_id,
                    TopicIdType(inflight.topic_id_type),
                    True,
                    delivery.retain,
                ),
                out,
            )

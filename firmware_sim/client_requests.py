"""Requests: REGISTER, PUBLISH, SUBSCRIBE, UNSUBSCRIBE and their answers; PUBLISH from the gateway.

A mixin of ``MqttSnClient`` (client.py), kept apart because it is one flow: requests that expect
an answer go through one FIFO with a single request in flight [§6.5, §6.6, §6.9], each retried
N_RETRY times; their answers resolve it; and the topic-id tables those answers (and the gateway's
REGISTER and PUBLISH) fill in.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, replace

from firmware_sim.client_events import (
    ClientState,
    Event,
    Output,
    Published,
    Received,
    Registered,
    Retransmitted,
    Subscribed,
    Unsubscribed,
)
from gateway.errors import LocalProtocolError
from gateway.protocol.constants import QoS, ReturnCode, TopicIdType
from gateway.protocol.messages import (
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
    short_name_to_id,
)

__all__ = ["Pending", "RequestsMixin"]

_LOGGER = logging.getLogger(__name__)

_Ack = Regack | Puback | Pubrec | Pubcomp | Suback | Unsuback


@dataclass(slots=True)
class Pending:
    """An unacknowledged message with its retry deadline; ``released`` = QoS 2 after PUBREC."""

    message: Message
    msg_id: int = 0
    deadline: float = 0.0
    retries: int = 0
    released: bool = False


def _has_wildcard(name: str) -> bool:
    return "+" in name or "#" in name


class RequestsMixin:
    """Request half of ``MqttSnClient``: the request FIFO, its answers and the topic ids."""

    client_id: str
    predefined: dict[int, str]
    t_retry: float
    n_retry: int
    _state: ClientState
    _names: dict[int, str]
    _ids: dict[str, int]
    _subscribed_predefined: set[int]
    _qos2_in: set[int]
    _queue: deque[Pending]
    _inflight: Pending | None
    _next_msg_id: int
    _awake_received: int

    # Provided by MqttSnClient.
    def _require_active(self, what: str) -> None: ...  # pragma: no cover
    def _send(self, message: Message, now: float) -> list[Output]:
        raise NotImplementedError  # pragma: no cover

    def _lose(self, reason: str) -> list[Output]:
        raise NotImplementedError  # pragma: no cover

    # ----------------------------------------------------------------- queries

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

    # ----------------------------------------------------------------- commands

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

    # ----------------------------------------------------------------- internals

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

    def _enqueue(self, message: Message, msg_id: int, now: float) -> list[Output]:
        self._require_active(type(message).__name__.upper())
        self._queue.append(Pending(message, msg_id=msg_id))
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

"""What the pure MQTT-SN client reports: its states and the events it hands its caller.

Kept apart from ``MqttSnClient`` (client.py) so that its mixins (client_discovery.py,
client_requests.py) can use them too; ``firmware_sim.client`` re-exports every public name.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from gateway.protocol.constants import QoS, ReturnCode, TopicIdType
from gateway.protocol.messages import Message

__all__ = [
    "Asleep",
    "ClientState",
    "ConnectRejected",
    "Connected",
    "Disconnected",
    "Event",
    "GatewayFound",
    "Lost",
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
]


class ClientState(Enum):
    """Client states [Fig. 4] plus SEARCHING (gateway discovery) and CONNECTING (setup running)."""

    DISCONNECTED = "disconnected"
    SEARCHING = "searching"
    CONNECTING = "connecting"
    ACTIVE = "active"
    ASLEEP = "asleep"
    AWAKE = "awake"
    LOST = "lost"


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

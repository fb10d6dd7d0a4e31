"""One node's session: its state, the transition table, and everything kept between connections.

The whole session is plain data (dataclasses, dicts, deques of frozen values) so it can be
saved and loaded; nothing in it refers to I/O.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

from gateway.core.delivery_queue import Delivery
from gateway.core.topics import TopicRegistry

__all__ = [
    "TRANSITIONS",
    "ClientSession",
    "Event",
    "OutboundInflight",
    "SessionState",
    "StoredWill",
    "UplinkPending",
]


class SessionState(enum.Enum):
    """Client states as the gateway sees them [§6.14, Fig. 4], plus the will-prompting phase."""

    CONNECTING = "connecting"  # CONNECT seen, will being prompted or broker CONNACK awaited
    ACTIVE = "active"
    ASLEEP = "asleep"
    AWAKE = "awake"
    DISCONNECTED = "disconnected"
    LOST = "lost"


class Event(enum.Enum):
    """What moves a session between states."""

    CONNECT = "CONNECT"  # handshake starts (will prompting / upstream CONNECT)
    CONNECTED = "CONNECTED"  # CONNACK accepted sent
    DISCONNECT = "DISCONNECT"
    SLEEP = "DISCONNECT(duration)"
    WAKE = "PINGREQ(ClientId)"
    FLUSHED = "buffer flushed, PINGRESP"
    EXPIRED = "keep-alive or sleep timer expired"
    RETRY_EXHAUSTED = "N_RETRY retransmissions unanswered"
    REFUSED = "CONNACK rejected"


S = SessionState
# (state, event) -> next state. A pair missing here is not allowed (the engine answers it as a
# protocol error). The table is the documentation: see tests/core/test_transitions.py.
TRANSITIONS: dict[tuple[SessionState, Event], SessionState] = {
    (S.DISCONNECTED, Event.CONNECT): S.CONNECTING,
    (S.LOST, Event.CONNECT): S.CONNECTING,
    (S.ACTIVE, Event.CONNECT): S.CONNECTING,  # a second CONNECT re-runs the connect (P10)
    (S.ASLEEP, Event.CONNECT): S.CONNECTING,
    (S.AWAKE, Event.CONNECT): S.CONNECTING,
    (S.CONNECTING, Event.CONNECT): S.CONNECTING,  # retransmitted CONNECT during will prompting
    (S.CONNECTING, Event.CONNECTED): S.ACTIVE,
    (S.CONNECTING, Event.REFUSED): S.DISCONNECTED,
    (S.CONNECTING, Event.EXPIRED): S.DISCONNECTED,
    (S.CONNECTING, Event.DISCONNECT): S.DISCONNECTED,
    (S.ACTIVE, Event.DISCONNECT): S.DISCONNECTED,
    (S.ACTIVE, Event.SLEEP): S.ASLEEP,
    (S.ACTIVE, Event.EXPIRED): S.LOST,
    (S.ACTIVE, Event.RETRY_EXHAUSTED): S.LOST,
    (S.ASLEEP, Event.WAKE): S.AWAKE,
    (S.ASLEEP, Event.DISCONNECT): S.DISCONNECTED,
    (S.ASLEEP, Event.SLEEP): S.ASLEEP,
    (S.ASLEEP, Event.EXPIRED): S.LOST,
    (S.AWAKE, Event.WAKE): S.AWAKE,  # retransmitted PINGREQ while being flushed
    (S.AWAKE, Event.FLUSHED): S.ASLEEP,
    (S.AWAKE, Event.DISCONNECT): S.DISCONNECTED,
    (S.AWAKE, Event.SLEEP): S.ASLEEP,
    (S.AWAKE, Event.EXPIRED): S.LOST,
    (S.AWAKE, Event.RETRY_EXHAUSTED): S.LOST,
    (S.DISCONNECTED, Event.EXPIRED): S.DISCONNECTED,  # persistent session forgotten
    (S.LOST, Event.EXPIRED): S.LOST,
}


@dataclass(slots=True)
class StoredWill:
    """Will topic and message as the node gave them (kept across connections [§6.3])."""

    topic: str
    message: bytes = b""
    qos: int = 0
    retain: bool = False


@dataclass(slots=True)
class OutboundInflight:
    """The one gateway-originated message a node has not acknowledged yet [§6.10, §6.13].

    ``kind`` is "register", "publish" or "pubrel"; ``delivery`` is what the REGISTER prepares
    or the PUBLISH carries, so it can be re-queued if the node goes away.
    """

    kind: str
    msg_id: int
    topic_id: int
    topic_id_type: int
    delivery: Delivery
    retries: int = 0
    deadline: float = 0.0


@dataclass(slots=True)
class UplinkPending:
    """A QoS 1/2 PUBLISH from the node, waiting for the broker's acknowledgement."""

    msg_id: int
    topic_id: int
    qos: int
    acked: bool = False  # QoS 2: PUBREC sent, waiting for the node's PUBREL
    # Fix: the token this entry waits for. Without it a late broker ack for an older publish
    # (before a clean re-CONNECT, or a will's token with MsgId 0) acked a newer one that reused
    # the MsgId, i.e. PUBACK for what the broker had not taken yet.
    token: int = 0


@dataclass(slots=True)
class ClientSession:
    """Everything the gateway keeps for one ClientId."""

    client_id: str
    address: Hashable
    registry: TopicRegistry
    state: SessionState = SessionState.DISCONNECTED
    keepalive: float = 60.0
    clean_session: bool = True
    will: StoredWill | None = None
    will_stage: str = ""  # "topic" / "msg" while prompting, else ""
    sleep_duration: float = 0.0
    last_rx: float = 0.0
    subscriptions: dict[str, int] = field(default_factory=dict)  # filter -> granted QoS
    retained_until: dict[str, float] = field(default_factory=dict)  # filter -> window end
    queue: deque[Delivery] = field(default_factory=deque)
    inflight: OutboundInflight | None = None
    uplink: dict[int, UplinkPending] = field(default_factory=dict)  # msg_id -> pending
    next_msg_id: int = 1
    supervision_at: float | None = None  # deadline currently in the timer heap

    def allocate_msg_id(self) -> int:
        """Next gateway-side MsgId, 1..0xFFFF, never 0 [§5.3.9]."""
        msg_id = self.next_msg_id
        self.next_msg_id = msg_id + 1 if msg_id < 0xFFFF else 1
        return msg_id

    def supervision_deadline(self, keepalive_factor: float, sleep_factor: float) -> float:
        """When the node counts as lost (or, disconnected, is forgotten) if it stays silent."""
        if self.state is SessionState.ASLEEP or self.state is SessionState.AWAKE:
            return self.last_rx + self.sleep_duration * sleep_factor
        return self.last_rx + self.keepalive * keepalive_factor

    def __repr__(self) -> str:
        return (
            f"<ClientSession {self.client_id!r} {self.state.name} at {self.address!r} "
            f"subs={len(self.subscriptions)} topics={len(self.registry)} "
            f"queued={len(self.queue)} inflight={self.inflight.kind if self.inflight else None}>"
        )

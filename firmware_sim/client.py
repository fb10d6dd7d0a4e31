"""Pure MQTT-SN 1.2 client state machine: messages and ``now`` in, messages to send and events out.

No I/O, no clock: every method takes ``now`` (seconds, any monotonic origin) as its last
positional argument and returns a list of outputs in the order they happen. An output is either
a ``Message`` to transmit (``SearchGw`` and ``GwInfo`` are broadcasts with ``SearchGw.radius``;
everything else goes to the gateway) or an ``Event`` for the caller. Requests that expect an
answer (REGISTER, SUBSCRIBE, UNSUBSCRIBE, PUBLISH QoS 1/2) go through one FIFO with a single
request in flight [§6.5, §6.6, §6.9]; their methods return ``(msg_id, outputs)`` and the result
event carries the same ``msg_id``. Timers are deadlines: call ``tick(now)`` at ``next_deadline()``.

This module holds the connection and sleep state machine (CONNECT and the will, keep-alive,
sleep and wake, DISCONNECT, losing the gateway), the timers and the dispatch of input. The flows
are mixins, each in its own module: gateway discovery in ``client_discovery.py``, the requests
and their answers in ``client_requests.py``; states and events are in ``client_events.py``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from firmware_sim.client_discovery import SEARCH_GAP_MAX as SEARCH_GAP_MAX  # re-exported
from firmware_sim.client_discovery import DiscoveryMixin, GatewayInfo
from firmware_sim.client_events import (
    Asleep,
    ClientState,
    Connected,
    ConnectRejected,
    Disconnected,
    Event,
    GatewayFound,
    Lost,
    Output,
    Pong,
    Published,
    Received,
    Registered,
    Retransmitted,
    Subscribed,
    TopicLearned,
    Unsubscribed,
    WakeDone,
)
from firmware_sim.client_requests import Pending, RequestsMixin
from gateway.errors import LocalProtocolError
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
    Suback,
    Unsuback,
    WillMsg,
    WillMsgReq,
    WillTopic,
    WillTopicReq,
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


@dataclass(frozen=True, slots=True)
class Will:
    """The last will the gateway publishes if this client is lost."""

    topic: str
    payload: bytes
    qos: QoS = QoS.AT_MOST_ONCE
    retain: bool = False


class MqttSnClient(DiscoveryMixin, RequestsMixin):
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
        self._queue: deque[Pending] = deque()
        self._inflight: Pending | None = None
        self._control: Pending | None = None  # CONNECT/WILLTOPIC/WILLMSG, PINGREQ, DISCONNECT
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

    def next_deadline(self) -> float | None:
        """When ``tick`` must next be called, or None if no timer runs."""
        deadlines = [p.deadline for p in (self._inflight, self._control) if p is not None]
        if self._state is ClientState.SEARCHING and self._search_at is not None:
            deadlines.append(self._search_at)
        if self._state is ClientState.ACTIVE and self.keepalive and self._control is None:
            deadlines.append(self._last_sent + self.keepalive)
        return min(deadlines, default=None)

    # ----------------------------------------------------------------- commands

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

    def _send(self, message: Message, now: float) -> list[Output]:
        self._last_sent = now
        return [message]

    def _send_control(self, message: Message, now: float) -> list[Output]:
        self._control = Pending(message, deadline=now + self.t_retry)
        return self._send(message, now)

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

    def _lose(self, reason: str) -> list[Output]:
        previous = self._state
        _LOGGER.info("%s: lost the gateway in %s: %s", self.client_id, previous.name, reason)
        self._state = ClientState.LOST
        self._inflight = None
        self._control = None
        self._queue.clear()
        return [Lost(reason, previous)]

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

"""SimNode: an asyncio sensor node driving the pure MQTT-SN client over any ``NodeLink``.

One task per node runs the client's timers (retransmission, keep-alive, SEARCHGW back-off) and
writes queued frames in order; received frames arrive through the link's callback. Each request
awaits a future resolved by the client's result event, bounded by a timeout.

    async with SimNode("node1", UdpNodeLink(("127.0.0.1", 1884))) as node:
        await node.connect(keepalive=60)
        await node.publish("sensors/node1/temp", b"21.5", qos=1)

This module holds the node's lifecycle, its request API and its power state; the link handling
(frames both ways, the node's task, events to their waiters) is a mixin in ``node_io.py``, the
duty cycle (sleep, wake, periodic publishing) one in ``node_duty_cycle.py``, and the errors are
in ``node_errors.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Self

from firmware_sim.battery import Battery, PowerState
from firmware_sim.client import (
    N_RETRY,
    T_RETRY,
    ClientState,
    ConnectRejected,
    Event,
    GatewayFound,
    MqttSnClient,
    Published,
    Received,
    Registered,
    Subscribed,
    Will,
)
from firmware_sim.link import NodeLink
from firmware_sim.node_duty_cycle import DutyCycleMixin, PeriodicReport
from firmware_sim.node_duty_cycle import Payload as Payload  # re-exported
from firmware_sim.node_errors import (
    BatteryEmpty,
    ConnectRefused,
    GatewayLostError,
    RequestRejected,
    RequestTimeout,
    SimNodeError,
)
from firmware_sim.node_io import NodeCounters, NodeIoMixin, quiet_future
from gateway.errors import LocalProtocolError, TransportError
from gateway.protocol.constants import QoS, ReturnCode, TopicIdType
from gateway.protocol.messages import Message, short_name_to_id

__all__ = [
    "BatteryEmpty",
    "ConnectRefused",
    "GatewayLostError",
    "NodeCounters",
    "PeriodicReport",
    "RequestRejected",
    "RequestTimeout",
    "SimNode",
    "SimNodeError",
]

_LOGGER = logging.getLogger(__name__)


# NodeIoMixin first: DutyCycleMixin only declares the NodeIoMixin methods it calls.
class SimNode(NodeIoMixin, DutyCycleMixin):
    """An MQTT-SN sensor node: discover, connect, register, publish, subscribe, sleep and wake."""

    def __init__(
        self,
        client_id: str,
        link: NodeLink,
        *,
        predefined: Mapping[int, str] | None = None,
        battery: Battery | None = None,
        t_retry: float = T_RETRY,
        n_retry: int = N_RETRY,
        timeout: float | None = None,
        inbox_size: int = 1000,
    ) -> None:
        self.client = MqttSnClient(
            client_id, predefined=predefined, t_retry=t_retry, n_retry=n_retry
        )
        self.link = link
        self.battery = battery
        # Long enough for the client to give up by itself first (then the error says why).
        self.timeout = timeout if timeout is not None else t_retry * (n_retry + 1) + 1.0
        self.counters = NodeCounters()
        self._inbox: asyncio.Queue[Received | None] = asyncio.Queue(inbox_size)
        self._outbox: deque[tuple[Message, asyncio.Future[None] | None]] = deque()
        self._requests: dict[int, asyncio.Future[Event]] = {}
        self._waiters: dict[str, asyncio.Future[Event]] = {}
        self._wakeup = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None
        self._link_open = False
        self._dead: str | None = None
        self._woken: list[Received] | None = None
        self._power = PowerState.AWAKE
        self._power_since = 0.0
        self._connect_args: tuple[int, Will | None] = (60, None)

    def __repr__(self) -> str:
        c, client = self.counters, self.client
        state = "DEAD" if self._dead else client.state.name
        battery = f" battery={self.battery.level:.2f}%" if self.battery else ""
        return (
            f"<SimNode {client.client_id!r} {state} inflight={client.in_flight} "
            f"queued={client.queued} sent={c.sent} received={c.received} "
            f"retransmitted={c.retransmitted} published={c.published} acked={c.acked}{battery}>"
        )

    @property
    def client_id(self) -> str:
        """The MQTT-SN ClientId."""
        return self.client.client_id

    @property
    def state(self) -> ClientState:
        """The client's protocol state."""
        return self.client.state

    @property
    def alive(self) -> bool:
        """False once the battery is empty or the node is closed."""
        return self._dead is None

    # ----------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Self:
        if self._timer is not None or self._dead is not None:
            raise RuntimeError(f"{self!r} is not re-entrant and cannot be reused")
        await self.link.open(self._on_frame)
        self._link_open = True
        self._power_since = self._now()
        self._timer = asyncio.create_task(self._run(), name=f"simnode[{self.client_id}].timers")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            connected = (ClientState.ACTIVE, ClientState.AWAKE, ClientState.ASLEEP)
            if self._dead is None and self.client.state in connected and exc is None:
                try:
                    await self.disconnect(limit=min(self.timeout, 2.0))
                except (SimNodeError, TransportError) as err:
                    _LOGGER.info("%s: no DISCONNECT acknowledgement on close: %s", self, err)
        finally:
            await self._shutdown("node closed")

    async def _shutdown(self, reason: str) -> None:
        self._account()
        if self._dead is None:
            self._dead = reason
        self._fail_all(SimNodeError(f"{self.client_id}: {reason}"))
        if self._timer is not None and self._timer is not asyncio.current_task():
            self._timer.cancel()
            try:
                await self._timer
            except asyncio.CancelledError:
                pass
        await self._close_link()

    # ----------------------------------------------------------------- API

    async def search_gateway(
        self,
        radius: int = 0,
        timeout: float = 30.0,  # noqa: ASYNC109 - expiry must also stop the SEARCHGW repeats
        *,
        delay: float = 0.0,
    ) -> int:
        """Broadcast SEARCHGW (repeating with back-off) until a gateway answers; its GwId."""
        self._check_alive()
        future = self._waiter("search")
        self._dispatch(self.client.search_gateway(self._now(), radius=radius, delay=delay))
        try:
            event = await self._await(future, timeout, "GWINFO")
        except RequestTimeout:
            self.client.cancel_search(self._now())
            raise
        assert isinstance(event, GatewayFound)
        return event.gw_id

    async def connect(
        self,
        keepalive: int = 60,
        clean_session: bool = True,
        will: Will | tuple[str, bytes, int, bool] | None = None,
    ) -> None:
        """CONNECT (answering the will prompts); raises ConnectRefused or GatewayLostError."""
        self._check_alive()
        if will is not None and not isinstance(will, Will):
            topic, payload, qos, retain = will
            will = Will(topic, bytes(payload), QoS(qos), retain)
        await self._power_up()
        self._connect_args = (keepalive, will)
        future = self._waiter("connect")
        now = self._now()
        self._dispatch(
            self.client.connect(now, keepalive=keepalive, clean_session=clean_session, will=will)
        )
        event = await self._await(future, None, "CONNACK")
        if isinstance(event, ConnectRejected):
            raise ConnectRefused(self.client_id, event.return_code)
        _LOGGER.info("%s: connected (keep-alive %d s)", self.client_id, keepalive)

    async def register(self, topic: str) -> int:
        """The topic id for ``topic``, REGISTERing it unless already known."""
        self._check_alive()
        known = self.client.topic_id(topic)
        if known is not None:
            return known
        msg_id, outputs = self.client.register(topic, self._now())
        event = await self._request(msg_id, outputs, "REGACK")
        assert isinstance(event, Registered)
        if event.return_code is not ReturnCode.ACCEPTED:
            self.counters.rejected += 1
            raise RequestRejected(f"REGISTER {topic!r}", event.return_code)
        return event.topic_id

    async def publish(
        self,
        topic: str | int,
        payload: bytes | str,
        qos: int = 0,
        *,
        topic_id_type: TopicIdType | None = None,
        retain: bool = False,
    ) -> None:
        """PUBLISH; QoS 1/2 return once acknowledged (RequestRejected carries a PUBACK error).

        ``topic``: a name (registered on demand; a predefined name uses its id), a 2-character
        name with ``topic_id_type=SHORT_NAME``, or an int (predefined id unless it is a
        registered normal id or ``topic_id_type`` says otherwise).
        """
        self._check_alive()
        qos = QoS(qos)
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        topic_id, id_type = await self._topic(topic, topic_id_type, qos)
        if qos is QoS.MINUS_ONE:
            await self._power_up()
        msg_id, outputs = self.client.publish(
            topic_id, data, self._now(), qos=qos, topic_id_type=id_type, retain=retain
        )
        self.counters.published += 1
        if msg_id == 0:
            done: asyncio.Future[None] = quiet_future()
            self._dispatch(outputs, done)
            await done
            return
        try:
            event = await self._request(msg_id, outputs, "PUBACK")
        except SimNodeError:
            self.counters.failed += 1
            raise
        assert isinstance(event, Published)
        if event.return_code is not ReturnCode.ACCEPTED:
            self.counters.rejected += 1
            raise RequestRejected(f"PUBLISH to {topic!r}", event.return_code)
        self.counters.acked += 1

    async def subscribe(
        self,
        topic: str | int,
        qos: int = 0,
        *,
        topic_id_type: TopicIdType | None = None,
    ) -> tuple[int, QoS]:
        """SUBSCRIBE to a filter, a predefined id (int) or a short name; (topic id, granted QoS)."""
        self._check_alive()
        msg_id, outputs = self.client.subscribe(
            topic, self._now(), qos=QoS(qos), topic_id_type=topic_id_type
        )
        event = await self._request(msg_id, outputs, "SUBACK")
        assert isinstance(event, Subscribed)
        if event.return_code is not ReturnCode.ACCEPTED:
            self.counters.rejected += 1
            raise RequestRejected(f"SUBSCRIBE {topic!r}", event.return_code)
        return event.topic_id, event.granted_qos

    async def unsubscribe(
        self, topic: str | int, *, topic_id_type: TopicIdType | None = None
    ) -> None:
        """UNSUBSCRIBE; returns on UNSUBACK."""
        self._check_alive()
        msg_id, outputs = self.client.unsubscribe(topic, self._now(), topic_id_type=topic_id_type)
        await self._request(msg_id, outputs, "UNSUBACK")

    async def ping(self) -> float:
        """PINGREQ; the round-trip time in seconds."""
        self._check_alive()
        start = self._now()
        future = self._waiter("ping", reuse=True)
        self._dispatch(self.client.ping(start))
        await self._await(future, None, "PINGRESP")
        return self._now() - start

    async def disconnect(self, *, limit: float | None = None) -> None:
        """DISCONNECT; returns when the gateway acknowledges (or the retries run out)."""
        self._check_alive()
        if self.client.state in (ClientState.DISCONNECTED, ClientState.LOST):
            return
        await self._power_up()
        future = self._waiter("disconnect")
        self._dispatch(self.client.disconnect(self._now()))
        await self._await(future, limit, "DISCONNECT")

    async def messages(self) -> AsyncIterator[Received]:
        """Every PUBLISH received from the gateway, until the node closes."""
        while (message := await self._inbox.get()) is not None:
            yield message

    # ----------------------------------------------------------------- internals

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _check_alive(self) -> None:
        if self._timer is None:
            raise RuntimeError(f"use 'async with SimNode(...)' before talking to {self.client_id}")
        if self._dead is not None:
            if self.battery is not None and self.battery.empty:
                raise BatteryEmpty(f"{self.client_id}: battery empty")
            raise SimNodeError(f"{self.client_id}: {self._dead}")

    async def _topic(
        self, topic: str | int, id_type: TopicIdType | None, qos: QoS
    ) -> tuple[int, TopicIdType]:
        predefined = self.client.predefined
        if isinstance(topic, int):
            if id_type is None:
                registered = topic not in predefined and self.client.topic_name(
                    topic, TopicIdType.NORMAL
                )
                id_type = TopicIdType.NORMAL if registered else TopicIdType.PREDEFINED
            return topic, id_type
        if id_type is TopicIdType.SHORT_NAME:
            return short_name_to_id(topic), id_type
        by_name = {name: tid for tid, name in predefined.items()}
        if id_type in (None, TopicIdType.PREDEFINED) and topic in by_name:
            return by_name[topic], TopicIdType.PREDEFINED
        if id_type is TopicIdType.PREDEFINED or qos is QoS.MINUS_ONE:
            raise LocalProtocolError(
                f"{topic!r} is not a predefined topic of {self.client_id}; QoS -1 needs a"
                " predefined id or a short name (topic_id_type=SHORT_NAME)"
            )
        return await self.register(topic), TopicIdType.NORMAL

    async def _power_up(self) -> None:
        if self._power is PowerState.SLEEP:
            await self.link.wake_radio()
            self._set_power(PowerState.AWAKE)

    def _set_power(self, state: PowerState) -> None:
        self._account()
        if self._power is not PowerState.OFF:
            self._power = state

    def _account(self) -> None:
        """Charge the battery for the time spent in the current power state."""
        now = self._now()
        if self.battery is not None and self._power is not PowerState.OFF:
            self.battery.drain(self._power, max(now - self._power_since, 0.0))
            if self.battery.empty and self._dead is None:
                self._die()
        self._power_since = now

    def _die(self) -> None:
        _LOGGER.info("%s: battery empty, node stops", self.client_id)
        self._dead = "battery empty"
        self._power = PowerState.OFF
        self._fail_all(BatteryEmpty(f"{self.client_id}: battery empty"))
        self._wakeup.set()

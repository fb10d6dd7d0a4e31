"""SimNode: an asyncio sensor node driving the pure MQTT-SN client over any ``NodeLink``.

One task per node runs the client's timers (retransmission, keep-alive, SEARCHGW back-off) and
writes queued frames in order; received frames arrive through the link's callback. Each request
awaits a future resolved by the client's result event, bounded by a timeout.

    async with SimNode("node1", UdpNodeLink(("127.0.0.1", 1884))) as node:
        await node.connect(keepalive=60)
        await node.publish("sensors/node1/temp", b"21.5", qos=1)
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from firmware_sim.battery import Battery, PowerState
from firmware_sim.client import (
    N_RETRY,
    T_RETRY,
    Asleep,
    ClientState,
    Connected,
    ConnectRejected,
    Disconnected,
    Event,
    GatewayFound,
    Lost,
    MqttSnClient,
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
    Will,
)
from firmware_sim.link import NodeLink
from gateway.errors import GatewayError, LocalProtocolError, RemoteProtocolError, TransportError
from gateway.protocol.codec import decode, encode
from gateway.protocol.constants import QoS, ReturnCode, TopicIdType
from gateway.protocol.messages import GwInfo, Message, SearchGw, short_name_to_id

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

Payload = bytes | str | Callable[[int], bytes] | None


class SimNodeError(GatewayError):
    """A simulated node could not do what it was asked."""


class ConnectRefused(SimNodeError):
    """CONNACK carried a non-zero return code."""

    def __init__(self, client_id: str, return_code: ReturnCode) -> None:
        super().__init__(f"{client_id}: CONNECT refused by the gateway: {return_code.name}")
        self.return_code = return_code


class RequestRejected(SimNodeError):
    """REGACK, PUBACK or SUBACK carried a non-zero return code."""

    def __init__(self, what: str, return_code: ReturnCode) -> None:
        super().__init__(f"{what} rejected by the gateway: {return_code.name}")
        self.what = what
        self.return_code = return_code


class GatewayLostError(SimNodeError):
    """The gateway stopped answering (N_RETRY retransmissions) or disconnected us."""


class RequestTimeout(SimNodeError, TimeoutError):
    """No answer within the node's timeout."""


class BatteryEmpty(SimNodeError):
    """The node's battery is empty: it does nothing any more."""


@dataclass(slots=True)
class NodeCounters:
    """Live counters of one node."""

    sent: int = 0  # frames written to the link
    received: int = 0  # frames heard from the link
    retransmitted: int = 0
    published: int = 0  # our PUBLISHes sent (any QoS)
    acked: int = 0  # our QoS 1/2 PUBLISHes acknowledged
    rejected: int = 0  # our requests answered with a non-zero return code
    failed: int = 0  # our QoS 1/2 PUBLISHes never acknowledged
    delivered: int = 0  # PUBLISHes received from the gateway
    dropped: int = 0  # received PUBLISHes dropped because nobody read messages()
    decode_errors: int = 0
    send_errors: int = 0
    lost: int = 0  # times the gateway was declared lost


@dataclass(frozen=True, slots=True)
class PeriodicReport:
    """What ``run_periodic`` did."""

    published: int
    acked: int
    failed: int
    stopped: str


class SimNode:
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

    async def _close_link(self) -> None:
        if self._link_open:
            self._link_open = False
            await self.link.close()
        if self._inbox.full():
            self._inbox.get_nowait()
        self._inbox.put_nowait(None)

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
            done: asyncio.Future[None] = _future()
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

    async def sleep(self, duration: float) -> None:
        """DISCONNECT with ``duration`` (rounded up to whole seconds), then power the radio down."""
        self._check_alive()
        future = self._waiter("sleep")
        self._dispatch(self.client.sleep(math.ceil(duration), self._now()))
        await self._await(future, None, "DISCONNECT")
        await self.link.sleep_radio()
        self._set_power(PowerState.SLEEP)
        _LOGGER.info("%s: asleep for %d s", self.client_id, math.ceil(duration))

    async def wake(self) -> list[Received]:
        """Radio up, PINGREQ with our ClientId; the messages delivered until PINGRESP."""
        self._check_alive()
        await self._power_up()
        future = self._waiter("wake")
        self._woken = []
        try:
            self._dispatch(self.client.wake(self._now()))
            event = await self._await(future, None, "PINGRESP")
            woken = self._woken
        finally:
            self._woken = None
        await self.link.sleep_radio()
        self._set_power(PowerState.SLEEP)
        assert isinstance(event, WakeDone)
        if event.timed_out:
            raise RequestTimeout(f"{self.client_id}: no PINGRESP after waking; asleep again")
        _LOGGER.info("%s: woke and collected %d messages", self.client_id, len(woken))
        return woken

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

    async def run_periodic(
        self,
        topic: str | int,
        interval: float,
        qos: int = 0,
        count: int | None = None,
        sleep_between: float | None = None,
        *,
        payload: Payload = None,
        topic_id_type: TopicIdType | None = None,
        collect: bool = False,
    ) -> PeriodicReport:
        """Publish every ``interval`` s, ``count`` times (None: until cancelled or battery empty).

        With ``sleep_between`` the node sleeps between publishes (DISCONNECT announcing that
        many seconds), then reconnects with CleanSession=0 to publish; ``collect`` first wakes
        with PINGREQ to collect what the gateway buffered.
        """
        published = acked = failed = i = 0
        stopped = "count reached"
        while count is None or i < count:
            if not self.alive:
                stopped = self._dead or "dead"
                break
            try:
                if QoS(qos) is not QoS.MINUS_ONE:
                    await self._ensure_active(collect)
                data = _payload(payload, i, self.battery)
                await self.publish(topic, data, qos, topic_id_type=topic_id_type)
                published += 1
                acked += QoS(qos) in (QoS.AT_LEAST_ONCE, QoS.EXACTLY_ONCE)
            except BatteryEmpty:
                stopped = "battery empty"
                break
            except (SimNodeError, LocalProtocolError, TransportError) as exc:
                failed += 1
                _LOGGER.info("%s: periodic publish %d failed: %s", self.client_id, i, exc)
            i += 1
            if count is not None and i >= count:
                break
            if sleep_between is not None and self.client.state is ClientState.ACTIVE:
                try:
                    await self.sleep(sleep_between)
                except SimNodeError as exc:
                    _LOGGER.info("%s: could not go to sleep: %s", self.client_id, exc)
            await asyncio.sleep(interval)
        return PeriodicReport(published, acked, failed, stopped)

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

    async def _ensure_active(self, collect: bool) -> None:
        state = self.client.state
        if state is ClientState.ACTIVE:
            return
        if state is ClientState.ASLEEP and collect:
            await self.wake()
        keepalive, _ = self._connect_args
        # CleanSession=0 keeps subscriptions, registrations and the stored will [§6.3].
        await self.connect(keepalive, clean_session=False)

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

    def _waiter(self, kind: str, *, reuse: bool = False) -> asyncio.Future[Event]:
        old = self._waiters.get(kind)
        if old is not None and not old.done():
            if reuse:
                return old
            old.set_exception(SimNodeError(f"{self.client_id}: {kind} superseded"))
        future: asyncio.Future[Event] = _future()
        self._waiters[kind] = future
        return future

    async def _request(self, msg_id: int, outputs: list[Output], answer: str) -> Event:
        future: asyncio.Future[Event] = _future()
        self._requests[msg_id] = future
        self._dispatch(outputs)
        try:
            return await self._await(future, None, answer)
        finally:
            self._requests.pop(msg_id, None)

    async def _await(
        self, future: asyncio.Future[Event], limit: float | None, answer: str
    ) -> Event:
        try:
            async with asyncio.timeout(limit if limit is not None else self.timeout):
                # Shielded: a PINGREQ's future may have several waiters; one timing out must
                # not cancel it for the others.
                return await asyncio.shield(future)
        except TimeoutError:
            raise RequestTimeout(f"{self.client_id}: no {answer} in time") from None

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

    def _fail_all(self, exc: Exception) -> None:
        futures: list[asyncio.Future[Any]] = [*self._requests.values(), *self._waiters.values()]
        futures += [done for _, done in self._outbox if done is not None]
        for future in futures:
            if not future.done():
                future.set_exception(exc)
        self._requests.clear()
        self._waiters.clear()

    def _resolve(self, kind: str, event: Event) -> None:
        future = self._waiters.pop(kind, None)
        if future is not None and not future.done():
            future.set_result(event)

    def _dispatch(self, outputs: list[Output], done: asyncio.Future[None] | None = None) -> None:
        """Queue the messages for the timer task, act on the events."""
        last = max((i for i, out in enumerate(outputs) if isinstance(out, Message)), default=-1)
        for i, out in enumerate(outputs):
            if isinstance(out, Message):
                self._outbox.append((out, done if i == last else None))
            else:
                self._on_event(out)
        if last < 0 and done is not None and not done.done():
            done.set_result(None)
        self._wakeup.set()

    def _on_event(self, event: Event) -> None:
        match event:
            case Connected() | ConnectRejected():
                self._resolve("connect", event)
            case Registered(msg_id=m) | Subscribed(msg_id=m) | Unsubscribed(msg_id=m):
                self._resolve_request(m, event)
            case Published(msg_id=m):
                if m == 0:
                    self.counters.rejected += 1
                self._resolve_request(m, event)
            case Received():
                self._deliver(event)
            case Pong():
                self._resolve("ping", event)
            case Asleep():
                self._resolve("sleep", event)
            case WakeDone():
                self._resolve("wake", event)
            case GatewayFound():
                self._resolve("search", event)
            case Retransmitted():
                self.counters.retransmitted += 1
            case TopicLearned(topic_name=name, topic_id=tid):
                _LOGGER.debug("%s: gateway registered %d = %r", self.client_id, tid, name)
            case Disconnected(by_gateway=by_gateway):
                self._resolve("disconnect", event)
                self._fail_all(GatewayLostError(f"{self.client_id}: disconnected by the gateway"))
                if by_gateway:
                    _LOGGER.info("%s: disconnected by the gateway", self.client_id)
            case Lost(reason=reason):
                self.counters.lost += 1
                self._resolve("disconnect", event)
                self._fail_all(GatewayLostError(f"{self.client_id}: gateway lost: {reason}"))

    def _resolve_request(self, msg_id: int, event: Event) -> None:
        future = self._requests.pop(msg_id, None)
        if future is not None and not future.done():
            future.set_result(event)

    def _deliver(self, message: Received) -> None:
        self.counters.delivered += 1
        if self._woken is not None:
            self._woken.append(message)
        if self._inbox.full():
            self._inbox.get_nowait()
            self.counters.dropped += 1
        self._inbox.put_nowait(message)

    def _on_frame(self, frame: bytes) -> None:
        """The link's callback: one frame from the gateway (or a broadcast)."""
        if self._dead is not None:
            return
        self.counters.received += 1
        self._account()
        try:
            message = decode(frame)
        except RemoteProtocolError as exc:
            self.counters.decode_errors += 1
            _LOGGER.warning("%s: undecodable frame %s: %s", self.client_id, frame[:16].hex(), exc)
            return
        _LOGGER.debug("%s: <- %r", self.client_id, message)
        self._dispatch(self.client.receive(message, self._now()))

    async def _transmit(self, message: Message) -> None:
        try:
            frame = encode(message)
            if isinstance(message, SearchGw):
                await self.link.broadcast(frame, message.radius)
            elif isinstance(message, GwInfo):
                await self.link.broadcast(frame)
            else:
                await self.link.send(frame)
        except (OSError, TransportError, LocalProtocolError) as exc:
            self.counters.send_errors += 1
            _LOGGER.warning("%s: cannot send %r: %s", self.client_id, message, exc)
            return
        _LOGGER.debug("%s: -> %r", self.client_id, message)
        self.counters.sent += 1
        if self.battery is not None:
            self._account()
            self.battery.on_tx(len(frame))
            if self.battery.empty and self._dead is None:
                self._die()

    async def _run(self) -> None:
        """The node's one task: write queued frames in order and fire the client's timers."""
        while self._dead is None:
            self._wakeup.clear()
            while self._outbox and self._dead is None:
                message, done = self._outbox.popleft()
                await self._transmit(message)
                if done is not None and not done.done():
                    done.set_result(None)
            if self._dead is not None:
                break
            now = self._now()
            deadline = self.client.next_deadline()
            if deadline is not None and deadline <= now:
                self._dispatch(self.client.tick(now))
                continue
            if self._outbox:
                continue
            if self.battery is not None and self._power is not PowerState.OFF:
                # Wake up when the battery runs out, so an idle node still stops.
                lifetime = self.battery.lifetime_s(self._power) - (now - self._power_since)
                if math.isfinite(lifetime):
                    empty_at = now + max(lifetime, 0.0)
                    deadline = empty_at if deadline is None else min(deadline, empty_at)
            try:
                async with asyncio.timeout_at(deadline):
                    await self._wakeup.wait()
            except TimeoutError:
                self._account()
        await self._close_link()


def _future() -> asyncio.Future[Any]:
    """A future whose exception counts as retrieved even if its waiter already gave up."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.add_done_callback(lambda f: f.cancelled() or f.exception())
    return future


def _payload(payload: Payload, seq: int, battery: Battery | None) -> bytes:
    if payload is None:
        level = f',"battery":{battery.level:.2f}' if battery is not None else ""
        return f'{{"seq":{seq}{level}}}'.encode()
    if callable(payload):
        return payload(seq)
    return payload.encode() if isinstance(payload, str) else payload

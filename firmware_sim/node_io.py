"""SimNode's link handling: frames in from the link, frames out in order, events to the waiters.

A mixin of ``SimNode`` (node.py), kept apart because it is the node's plumbing: the link's
callback feeds each frame to the client; the node's one task writes queued frames in order and
fires the client's timers; the client's events resolve the futures that requests wait on.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from firmware_sim.battery import Battery, PowerState
from firmware_sim.client import (
    Asleep,
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
)
from firmware_sim.link import NodeLink
from firmware_sim.node_errors import GatewayLostError, RequestTimeout, SimNodeError
from gateway.errors import LocalProtocolError, RemoteProtocolError, TransportError
from gateway.protocol.codec import decode, encode
from gateway.protocol.messages import GwInfo, Message, SearchGw

__all__ = ["NodeCounters", "NodeIoMixin", "quiet_future"]

_LOGGER = logging.getLogger(__name__)


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


class NodeIoMixin:
    """Link half of ``SimNode``: frames both ways, the node's task, events to their waiters."""

    client: MqttSnClient
    link: NodeLink
    battery: Battery | None
    timeout: float
    counters: NodeCounters
    _inbox: asyncio.Queue[Received | None]
    _outbox: deque[tuple[Message, asyncio.Future[None] | None]]
    _requests: dict[int, asyncio.Future[Event]]
    _waiters: dict[str, asyncio.Future[Event]]
    _wakeup: asyncio.Event
    _link_open: bool
    _dead: str | None
    _woken: list[Received] | None
    _power: PowerState
    _power_since: float

    # Provided by SimNode.
    @property
    def client_id(self) -> str:
        raise NotImplementedError  # pragma: no cover

    def _now(self) -> float:
        raise NotImplementedError  # pragma: no cover

    def _account(self) -> None: ...  # pragma: no cover
    def _die(self) -> None: ...  # pragma: no cover

    # ----------------------------------------------------------------- internals

    async def _close_link(self) -> None:
        if self._link_open:
            self._link_open = False
            await self.link.close()
        if self._inbox.full():
            self._inbox.get_nowait()
        self._inbox.put_nowait(None)

    def _waiter(self, kind: str, *, reuse: bool = False) -> asyncio.Future[Event]:
        old = self._waiters.get(kind)
        if old is not None and not old.done():
            if reuse:
                return old
            old.set_exception(SimNodeError(f"{self.client_id}: {kind} superseded"))
        future: asyncio.Future[Event] = quiet_future()
        self._waiters[kind] = future
        return future

    async def _request(self, msg_id: int, outputs: list[Output], answer: str) -> Event:
        future: asyncio.Future[Event] = quiet_future()
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


def quiet_future() -> asyncio.Future[Any]:
    """A future whose exception counts as retrieved even if its waiter already gave up."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.add_done_callback(lambda f: f.cancelled() or f.exception())
    return future

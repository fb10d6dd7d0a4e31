"""One reconnecting broker connection: outbox, subscriptions and backoff; the wire is a subclass's.

Two subclasses speak the wire, chosen by ``BrokerSettings.protocol`` in ``open_connection``:

* ``"5"`` -> ``Mqtt5Connection`` (mqtt5_connection.py): our own ``asyncio.Protocol`` on the
  ``mqtt5`` sans-I/O codec. It is the hot path: batched writes, no per-message futures.
* ``"3.1.1"`` -> ``PahoConnection`` (paho_connection.py): paho-mqtt driven by the asyncio loop,
  because the ``mqtt5`` codec speaks MQTT 5 only.

Shared here: the bounded outbox for QoS 1/2 publishes while they cannot be sent (FIFO, so order
is kept) and the wanted subscriptions and their restoration after a reconnect. The connect loop
with its jittered exponential backoff and the log policy for refusals (bad credentials: one
ERROR and a long wait) is a mixin of its own (connect_loop.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.bridge.backoff import Backoff
from gateway.bridge.base import Will
from gateway.bridge.connect_loop import ConnectLoopMixin, ConnectRefused
from gateway.bridge.url import BrokerSettings

__all__ = [
    "Backoff",
    "BrokerConnection",
    "ConnectRefused",
    "ConnectionHandler",
    "ConnectionStats",
    "OutboxBudget",
    "open_connection",
]

_LOGGER = logging.getLogger(__name__)

#: Filters per SUBSCRIBE / UNSUBSCRIBE packet when restoring subscriptions.
_SUBSCRIBE_CHUNK = 64
_DROP_WARN_INTERVAL = 10.0  # seconds between two "dropped QoS 0" warnings

Props = list[tuple[str, str]]
#: An outbox entry: topic, payload, qos, retain, token, MQTT 5 user properties.
Outgoing = tuple[str, bytes, int, bool, "int | None", "Props | None"]


class ConnectionHandler(Protocol):
    """What a connection reports to its owner (an Upstream)."""

    def on_message(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        filters: frozenset[str] | None = None,
    ) -> None:
        """A PUBLISH arrived from the broker."""

    def on_publish_done(self, token: int, ok: bool) -> None:
        """The publish with ``token`` was acknowledged (ok) or given up."""

    def on_state(self, connected: bool, return_code: int) -> None:
        """Up after CONNACK (0), refused (CONNACK code), or lost (0 or DISCONNECT reason)."""


@dataclass(slots=True)
class ConnectionStats:
    """Counters of one connection."""

    connects: int = 0
    acked: int = 0
    failed: int = 0
    dropped_qos0: int = 0
    outbox_rejected: int = 0
    resent: int = 0
    received: int = 0


class OutboxBudget:
    """An outbox limit shared by many connections (transparent mode): ``used`` of ``limit``."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def __repr__(self) -> str:
        return f"<OutboxBudget {self.used}/{self.limit}>"


class BrokerConnection(ConnectLoopMixin, ABC):
    """A reconnecting MQTT connection with a bounded QoS 1/2 outbox; see the module docstring.

    All public methods but ``close`` are synchronous and never block. Outcomes of QoS 1/2
    publishes are reported through ``handler.on_publish_done(token)`` (token None: not reported).
    """

    def __init__(
        self,
        settings: BrokerSettings,
        client_id: str,
        handler: ConnectionHandler,
        *,
        will: Will | None = None,
        clean_start: bool = True,
        keepalive: int | None = None,
        session_expiry: int = 0,
        give_up_on_refusal: bool = False,
        quiet: bool = False,
        budget: OutboxBudget | None = None,
        connect_gate: asyncio.Semaphore | None = None,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self.handler = handler
        self.stats = ConnectionStats()
        self._drop_warned_at = -_DROP_WARN_INTERVAL  # see _drop_qos0
        self._drops_reported = 0
        self.finished = False
        #: Why the last connection attempt failed (None after a successful connect).
        self.last_error: str | None = None
        self._will = will
        self._clean_next = clean_start
        self._keepalive = settings.keepalive if keepalive is None else keepalive
        self._session_expiry = session_expiry
        self._give_up_on_refusal = give_up_on_refusal
        self._info = logging.DEBUG if quiet else logging.INFO
        self._budget = budget or OutboxBudget(settings.outbox_limit)
        self._connect_gate = connect_gate
        self._outbox: deque[Outgoing] = deque()
        self._subscriptions: dict[str, int] = {}
        self._at_broker: dict[str, int] = {}
        self._up = False
        self._ever_up = False
        self._closing = False
        self._quiet_reconnect = False
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._first_attempt: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- public -----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True between CONNACK and the loss of the connection."""
        return self._up

    @property
    def outbox_size(self) -> int:
        """QoS 1/2 publishes waiting to be sent."""
        return len(self._outbox)

    @property
    @abstractmethod
    def inflight(self) -> int:
        """QoS 1/2 publishes sent and not yet completed."""

    def start(self, after: asyncio.Future[Any] | None = None) -> asyncio.Future[None]:
        """Start connecting (after ``after`` completes); the future resolves after one attempt."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._first_attempt = self._loop.create_future()
        self._task = self._loop.create_task(self._run(after), name=f"mqtt[{self.client_id}].run")
        return self._first_attempt

    async def close(self, *, fire_will: bool = False, grace: float = 5.0) -> None:
        """Flush (for up to ``grace`` seconds), then disconnect.

        ``fire_will`` makes the broker publish the will: MQTT 5 sends DISCONNECT 0x04
        "disconnect with will message", MQTT 3.1.1 closes TCP without DISCONNECT.
        """
        if self._closing:
            if self._task is not None:
                await asyncio.wait({self._task})
            return
        if self._up and (self._outbox or self.inflight):
            # Polled: an event would cost a check on every acknowledgement (the hot path).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    while self._up and (self._outbox or self.inflight):  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
        self._closing = True
        if self._up:
            self._disconnect(fire_will)
        elif self._task is not None:
            self._task.cancel()  # connecting or waiting to retry: nothing to say to the broker
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=grace)
            if not self._task.done():
                self._task.cancel()
                await asyncio.wait({self._task})
        self._give_up_all()
        self.finished = True

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        token: int | None,
        props: Props | None = None,
    ) -> None:
        """Send now, hold in the outbox (QoS 1/2), or drop and count (QoS 0 while down)."""
        if qos == 0:
            if self._up and self._writable():
                self._send_publish(topic, payload, 0, retain, None, props)
            else:
                self._drop_qos0()
            return
        if self._up and not self._outbox and self._can_send():
            self._send_publish(topic, payload, qos, retain, token, props)
            return
        budget = self._budget
        if budget.used < budget.limit and not self._closing:
            budget.used += 1
            self._outbox.append((topic, payload, qos, retain, token, props))
            return
        self.stats.outbox_rejected += 1
        if token is not None:
            _LOGGER.debug("%s: outbox full (%d), publish %d refused", self, budget.limit, token)
            # Reported in the next loop iteration, so the caller is never re-entered.
            self._call_soon(self._report, token, False)

    def subscribe(self, topic_filter: str, qos: int) -> None:
        """Subscribe (sent at once when up, even if already subscribed: the broker then re-sends
        retained messages); remembered and restored after a reconnect."""
        self._subscriptions[topic_filter] = qos
        if self._up:
            self._at_broker[topic_filter] = qos
            self._send_subscribe([(topic_filter, qos)])

    def unsubscribe(self, topic_filter: str) -> None:
        """Unsubscribe and forget the filter."""
        self._subscriptions.pop(topic_filter, None)
        if self._up and self._at_broker.pop(topic_filter, None) is not None:
            self._send_unsubscribe([topic_filter])

    def reopen(self, *, will: Will | None, clean_start: bool, session_expiry: int | None) -> None:
        """Reconnect at once with a new will; the session continues unless ``clean_start``."""
        self._will = will
        if session_expiry is not None:
            self._session_expiry = session_expiry
        if clean_start:
            self._clean_next = True
            self._subscriptions.clear()
            self._at_broker.clear()
        self._quiet_reconnect = True
        if self._up:
            # A normal DISCONNECT, so the broker discards the old will instead of publishing it.
            self._disconnect(False)
        if self._wake is not None:
            self._wake.set()

    def __repr__(self) -> str:
        state = "up" if self._up else ("closed" if self.finished else "down")
        if self.last_error and not self._up:
            state += f" ({self.last_error})"
        return (
            f"<{type(self).__name__} {self.client_id!r} {self.settings.url} {state}"
            f" outbox={len(self._outbox)} inflight={self.inflight}"
            f" subscriptions={len(self._subscriptions)}>"
        )

    # -- for subclasses -----------------------------------------------------------------------

    @abstractmethod
    async def _connect(self, clean_start: bool) -> bool:
        """Open TCP(+TLS), send CONNECT with ``self._will``, await CONNACK; return session present.

        Raises ConnectRefused, OSError, ssl.SSLError or TimeoutError."""

    @abstractmethod
    async def _wait_lost(self) -> int:
        """Return when the connection is gone: 0, or the broker's DISCONNECT reason code."""

    @abstractmethod
    def _session_started(self, session_present: bool) -> None:
        """After CONNACK: set quotas, re-send what was in flight (with DUP)."""

    @abstractmethod
    def _can_send(self) -> bool:
        """A QoS 1/2 publish may go on the wire now (in-flight quota, write buffer)."""

    @abstractmethod
    def _writable(self) -> bool:
        """A QoS 0 publish may be written now (write buffer below its high-water mark)."""

    @abstractmethod
    def _send_publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        token: int | None,
        props: Props | None,
    ) -> None:
        """Put one PUBLISH on the wire (only called while up)."""

    @abstractmethod
    def _send_subscribe(self, filters: list[tuple[str, int]]) -> None:
        """Send SUBSCRIBE (only called while up)."""

    @abstractmethod
    def _send_unsubscribe(self, filters: list[str]) -> None:
        """Send UNSUBSCRIBE (only called while up)."""

    @abstractmethod
    def _disconnect(self, fire_will: bool) -> None:
        """End the connection: DISCONNECT (normal, or 0x04 on MQTT 5) or a bare TCP close."""

    @abstractmethod
    def _take_inflight_tokens(self) -> list[int | None]:
        """Forget everything in flight; return the tokens not yet reported."""

    async def drain(self) -> None:
        """Let the loop write, then wait until the write buffer is below its high-water mark."""
        await asyncio.sleep(0)
        while self._up and not self._writable():  # noqa: ASYNC110 - polled, see close()
            await asyncio.sleep(0.001)

    def _drop_qos0(self) -> None:
        """Count a QoS 0 PUBLISH dropped (broker away, or not taking writes fast enough).

        Said in a WARNING at the first drop and then at most every 10 s with the count since,
        so that an operator sees a broker that cannot keep up (QoS 0 has no other signal).
        """
        stats = self.stats
        stats.dropped_qos0 += 1
        now = time.monotonic()
        if now - self._drop_warned_at >= _DROP_WARN_INTERVAL:
            _LOGGER.warning(
                "%s: dropped %d QoS 0 PUBLISH(es) since the last report: broker %s %s (QoS 0 is "
                "never held; publish at QoS 1 what must arrive, and %s)",
                self.client_id,
                stats.dropped_qos0 - self._drops_reported,
                self.settings.url,
                "not taking writes fast enough" if self._up else "not connected",
                "check the broker's load" if self._up else "see the connection log above",
            )
            self._drop_warned_at = now
            self._drops_reported = stats.dropped_qos0

    def qos0_publisher(self, topic: str, props: Props | None) -> Callable[[bytes], None]:
        """A function that publishes a payload to ``topic`` at QoS 0, no retain (hot path)."""
        return functools.partial(self.publish, topic, qos=0, retain=False, token=None, props=props)

    def qos1_publisher(self, topic: str, props: Props | None) -> Callable[[bytes, int], None]:
        """A function that publishes ``(payload, token)`` to ``topic`` at QoS 1, no retain."""
        publish = self.publish

        def publish_qos1(payload: bytes, token: int) -> None:
            publish(topic, payload, 1, False, token, props)

        return publish_qos1

    def _pump(self) -> None:
        """Move outbox entries to the wire while the quota allows, in order."""
        outbox = self._outbox
        budget = self._budget
        while outbox and self._up and self._can_send():
            topic, payload, qos, retain, token, props = outbox.popleft()
            budget.used -= 1
            self._send_publish(topic, payload, qos, retain, token, props)

    def _report(self, token: int | None, ok: bool) -> None:
        """Tell the handler how a publish ended (errors in the handler are ours, logged)."""
        if token is None:
            return
        if ok:
            self.stats.acked += 1
        else:
            self.stats.failed += 1
        try:
            self.handler.on_publish_done(token, ok)
        except Exception:
            _LOGGER.exception("%s: on_publish_done(%d) failed", self, token)

    def _deliver(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        filters: frozenset[str] | None = None,
    ) -> None:
        """Hand a broker PUBLISH to the handler (with its matched filters, when known)."""
        self.stats.received += 1
        try:
            if filters is None:
                self.handler.on_message(topic, payload, qos, retain)
            else:
                self.handler.on_message(topic, payload, qos, retain, filters)
        except Exception:
            _LOGGER.exception("%s: on_message(%r) failed", self, topic)

    def _call_soon(self, callback: Callable[..., object], *args: object) -> None:
        if self._loop is not None:
            self._loop.call_soon(callback, *args)
        else:
            callback(*args)

    def _connected(self, session_present: bool) -> None:
        self.stats.connects += 1
        self._clean_next = False
        self._up = True
        self._ever_up = True
        _LOGGER.log(
            self._info,
            "%s: connected to %s (MQTT %s, session present: %s)",
            self.client_id,
            self.settings.url,
            self.settings.protocol,
            session_present,
        )
        self._session_started(session_present)
        if not session_present:
            self._at_broker.clear()
        add = [(f, q) for f, q in self._subscriptions.items() if self._at_broker.get(f) != q]
        remove = [f for f in self._at_broker if f not in self._subscriptions]
        for i in range(0, len(add), _SUBSCRIBE_CHUNK):
            chunk = add[i : i + _SUBSCRIBE_CHUNK]
            self._at_broker.update(chunk)
            self._send_subscribe(chunk)
        for i in range(0, len(remove), _SUBSCRIBE_CHUNK):
            chunk_names = remove[i : i + _SUBSCRIBE_CHUNK]
            for name in chunk_names:
                del self._at_broker[name]
            self._send_unsubscribe(chunk_names)
        self._pump()
        self._notify(True, 0)

    def _give_up_all(self) -> None:
        """At close: report every publish that will never be acknowledged."""
        tokens = self._take_inflight_tokens()
        tokens.extend(entry[4] for entry in self._outbox)
        self._budget.used -= len(self._outbox)
        self._outbox.clear()
        for token in tokens:
            self._report(token, False)


def open_connection(
    settings: BrokerSettings,
    client_id: str,
    handler: ConnectionHandler,
    **options: object,
) -> BrokerConnection:
    """A connection of the kind ``settings.protocol`` asks for (see the module docstring)."""
    if settings.protocol == "5":
        from gateway.bridge.mqtt5_connection import Mqtt5Connection

        return Mqtt5Connection(settings, client_id, handler, **options)
    from gateway.bridge.paho_connection import PahoConnection

    return PahoConnection(settings, client_id, handler, **options)

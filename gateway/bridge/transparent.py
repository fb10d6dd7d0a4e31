"""Transparent mode: one broker connection per node, carrying its ClientId, will and clean flag.

Each session is a ``BrokerConnection`` on the event loop (no select() limit, so thousands of
nodes work); broker messages are reported with the node's ClientId. ``open_session`` for a
ClientId that is already open is a will update (or a reconnect of the node): the connection is
closed with a normal DISCONNECT (so the broker drops the old will) and opened again with the new
will and Clean Start off, so the broker session and its subscriptions continue; subscriptions
the broker lost are restored from what this connection subscribed.

The gateway keeps one connection of its own (an AggregatingUpstream without the client-id
property): it carries the gateway's retained status and whatever comes with ``client_id`` None,
such as QoS -1 publishes from nodes that never connected (MQTT-SN 1.2 §6.8).

A session whose very first CONNECT is refused is closed at once (on_connection(id, False, code))
so the core can reject the node. An MQTT 5 broker's DISCONNECT "session taken over" (the node
moved to another gateway) also ends the session instead of fighting over the ClientId.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

from gateway.bridge.aggregating import DEFAULT_STATUS_TOPIC, AggregatingUpstream
from gateway.bridge.base import AckGate, Upstream, UpstreamEvents, Will
from gateway.bridge.connection import BrokerConnection, OutboxBudget, open_connection
from gateway.bridge.url import BrokerSettings

__all__ = ["TransparentUpstream"]

_LOGGER = logging.getLogger(__name__)


class _Session:
    """Routes one connection's reports to the upstream events with the node's ClientId."""

    __slots__ = ("client_id", "connection", "upstream")

    def __init__(self, upstream: TransparentUpstream, client_id: str) -> None:
        self.upstream = upstream
        self.client_id = client_id
        self.connection: BrokerConnection | None = None

    @property
    def ack_gate(self) -> AckGate | None:
        """The upstream's durability gate for acknowledgements (see Upstream.ack_gate)."""
        return self.upstream.ack_gate

    def on_message(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        filters: frozenset[str] | None = None,
    ) -> None:
        self.upstream._events_or_raise().on_broker_message(
            self.client_id, topic, payload, qos, retain, filters
        )

    def on_publish_done(self, token: int, ok: bool) -> None:
        self.upstream._events_or_raise().on_publish_done(token, ok)

    def on_state(self, connected: bool, return_code: int) -> None:
        self.upstream._session_state(self, connected, return_code)


class TransparentUpstream(Upstream):
    """One broker connection per node; see the module docstring.

    Args:
        settings: the broker; ``client_id_prefix`` is prepended to each node's ClientId.
        gateway_id: this gateway's id (default: host name), for its own connection and status.
        status_topic: retained status topic of the gateway's own connection (None: no status).
        client_id: client id of the gateway's own connection (see AggregatingUpstream).
        outbox_limit: QoS 1/2 publishes held in total over all sessions while they cannot be
            sent (default ``settings.outbox_limit``).
        close_timeout: seconds a closing session waits for outstanding acknowledgements.
        max_connecting: connection attempts in progress at once; more would overflow the
            broker's listen backlog after a broker restart (SYN retries cost a second each).
        credentials: ClientId -> (username, password) for that node's own connection, or
            None to log in as ``settings`` says (``[[access.credentials]]``).
    """

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        gateway_id: str | None = None,
        status_topic: str | None = DEFAULT_STATUS_TOPIC,
        client_id: str | None = None,
        outbox_limit: int | None = None,
        close_timeout: float = 5.0,
        max_connecting: int = 64,
        credentials: Callable[[str], tuple[str, str | None] | None] | None = None,
    ) -> None:
        self.settings = settings
        self._credentials = credentials
        self.gateway = AggregatingUpstream(
            settings,
            gateway_id=gateway_id,
            status_topic=status_topic,
            client_id=client_id,
            client_id_property=None,
            close_timeout=close_timeout,
        )
        self._budget = OutboxBudget(settings.outbox_limit if outbox_limit is None else outbox_limit)
        self._close_timeout = close_timeout
        self._max_connecting = max_connecting
        self._gate: asyncio.Semaphore | None = None
        self._sessions: dict[str, _Session] = {}
        self._closing: dict[str, asyncio.Task[None]] = {}
        self._events: UpstreamEvents | None = None
        self._closed = False

    # -- Upstream ---------------------------------------------------------------------------

    async def start(self, events: UpstreamEvents) -> None:
        """Open the gateway's own connection; node connections open with ``open_session``."""
        self._events = events
        self._gate = asyncio.Semaphore(self._max_connecting)
        await self.gateway.start(events)
        self._closed = False

    async def close(self) -> None:
        """Close every session with DISCONNECT (the gateway stopping is not the nodes dying)."""
        self._closed = True
        for client_id in list(self._sessions):
            self.close_session(client_id, fire_will=False)
        if self._closing:
            await asyncio.wait(list(self._closing.values()))
        await self.gateway.close()

    def open_session(
        self, client_id: str, clean_session: bool, will: Will | None, keepalive: int
    ) -> None:
        """Open the node's connection, or reconnect a live one with a new will / clean flag."""
        self._events_or_raise()
        session = self._sessions.get(client_id)
        connection = session.connection if session is not None else None
        if connection is not None and not connection.finished:
            _LOGGER.info("session %r: reconnecting (clean=%s)", client_id, clean_session)
            connection.reopen(
                will=will,
                clean_start=clean_session,
                # A will update keeps the session's lifetime; a clean start resets it.
                session_expiry=0 if clean_session else None,
            )
            return
        session = _Session(self, client_id)
        login = self._credentials(client_id) if self._credentials is not None else None
        settings = self.settings
        if login is not None:
            settings = dataclasses.replace(settings, username=login[0], password=login[1])
        connection = open_connection(
            settings,
            f"{self.settings.client_id_prefix}{client_id}",
            session,
            will=will,
            clean_start=clean_session,
            keepalive=keepalive or self.settings.keepalive,
            session_expiry=0 if clean_session else self.settings.session_expiry,
            give_up_on_refusal=True,
            quiet=True,
            budget=self._budget,
            connect_gate=self._gate,
        )
        session.connection = connection
        self._sessions[client_id] = session
        _LOGGER.info("session %r: opening (clean=%s, will=%s)", client_id, clean_session, will)
        # A connection of the same ClientId still closing goes first, so its DISCONNECT (or
        # dropped TCP) cannot hit the broker after our CONNECT.
        connection.start(after=self._closing.get(client_id))

    def close_session(self, client_id: str, fire_will: bool) -> None:
        """Close the node's connection; the broker publishes its will when ``fire_will``."""
        session = self._sessions.pop(client_id, None)
        if session is None or session.connection is None:
            _LOGGER.debug("close_session %r: no session", client_id)
            return
        _LOGGER.info("session %r: closing (fire_will=%s)", client_id, fire_will)
        task = asyncio.get_running_loop().create_task(
            session.connection.close(fire_will=fire_will, grace=self._close_timeout),
            name=f"mqtt[{client_id}].close",
        )
        self._closing[client_id] = task
        task.add_done_callback(lambda done: self._closed_session(client_id, done))

    def publish(
        self,
        client_id: str | None,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        token: int | None = None,
    ) -> None:
        """Publish on the node's own connection (client_id None: the gateway's)."""
        if client_id is None:
            self.gateway.publish(None, topic, payload, qos, retain, token)
            return
        connection = self._connection(client_id)
        if connection is None:
            _LOGGER.error("publish for %r to %r: no open session", client_id, topic)
            if token is not None and qos > 0:
                asyncio.get_running_loop().call_soon(
                    self._events_or_raise().on_publish_done, token, False
                )
            return
        connection.publish(topic, payload, qos, retain, token)

    def subscribe(self, client_id: str | None, topic_filter: str, qos: int) -> None:
        """Subscribe on the node's own connection (always sent, so retained messages come)."""
        if client_id is None:
            self.gateway.subscribe(None, topic_filter, qos)
            return
        connection = self._connection(client_id)
        if connection is None:
            _LOGGER.error("subscribe for %r to %r: no open session", client_id, topic_filter)
            return
        connection.subscribe(topic_filter, qos)

    def unsubscribe(self, client_id: str | None, topic_filter: str) -> None:
        """Unsubscribe on the node's own connection."""
        if client_id is None:
            self.gateway.unsubscribe(None, topic_filter)
            return
        connection = self._connection(client_id)
        if connection is not None:
            connection.unsubscribe(topic_filter)

    @property
    def connected(self) -> bool:
        """True while the gateway's own broker connection is up."""
        return not self._closed and self.gateway.connected

    # -- helpers ------------------------------------------------------------------------------

    def session(self, client_id: str) -> BrokerConnection | None:
        """The node's connection (state, stats), if open."""
        return self._connection(client_id)

    @property
    def session_count(self) -> int:
        """Sessions open (connected or reconnecting)."""
        return len(self._sessions)

    def _connection(self, client_id: str | None) -> BrokerConnection | None:
        session = self._sessions.get(client_id) if client_id is not None else None
        return session.connection if session is not None else None

    def _session_state(self, session: _Session, connected: bool, return_code: int) -> None:
        events = self._events_or_raise()
        connection = session.connection
        if (
            connection is not None
            and connection.finished
            and self._sessions.get(session.client_id) is session
        ):
            del self._sessions[session.client_id]  # refused at first, or taken over
        events.on_connection(session.client_id, connected, return_code)

    def _closed_session(self, client_id: str, task: asyncio.Task[None]) -> None:
        if self._closing.get(client_id) is task:
            del self._closing[client_id]
        if not task.cancelled() and task.exception() is not None:
            _LOGGER.error("session %r: close failed", client_id, exc_info=task.exception())

    def _events_or_raise(self) -> UpstreamEvents:
        if self._events is None:
            raise RuntimeError(f"{self!r} is not started")
        return self._events

    def __repr__(self) -> str:
        up = sum(1 for s in self._sessions.values() if s.connection and s.connection.connected)
        return (
            f"<TransparentUpstream {self.settings.url} MQTT {self.settings.protocol}"
            f" sessions={len(self._sessions)} up={up} closing={len(self._closing)}"
            f" outbox={self._budget.used}/{self._budget.limit} gateway={self.gateway.connected}>"
        )

"""Aggregating mode: one broker connection for every node, subscriptions reference-counted.

Each broker PUBLISH is reported once, with ``client_id`` None; the core fans it out to the
nodes whose subscriptions match. A filter is subscribed at the broker on its first reference
and unsubscribed on its last, at the highest QoS any node asked for. A subscribe for a filter
that is already subscribed is still sent to the broker: the broker then re-sends the retained
messages for that filter, which the new node is owed (MQTT 3.1.1 §3.3.1.3, MQTT 5 §3.3.1.3).
Those retained copies reach the core with ``retain=True`` and the core should give them only to
the node(s) that just subscribed, not to every node already subscribed to the filter.

The gateway's own status is published retained on ``status_topic`` ("online" after each
connect; "offline" on close, and as the connection's will if the gateway dies).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

from gateway.bridge.base import Upstream, UpstreamEvents, Will
from gateway.bridge.connection import BrokerConnection, Props, open_connection
from gateway.bridge.url import BrokerSettings

__all__ = ["DEFAULT_STATUS_TOPIC", "AggregatingUpstream"]

_LOGGER = logging.getLogger(__name__)

DEFAULT_STATUS_TOPIC = "mqttsn/gateway/{gateway_id}/status"
#: MQTT 5 user property carrying the node's ClientId on uplink publishes.
CLIENT_ID_PROPERTY = "mqttsn-client-id"


class AggregatingUpstream(Upstream):
    """One shared broker connection; see the module docstring.

    Args:
        settings: the broker.
        gateway_id: this gateway's id; unique among gateways on one broker (default: host name).
        status_topic: retained status topic, ``{gateway_id}`` is filled in; None: no status.
        client_id: broker client id (default ``<client_id_prefix>mqttsn-gw-<gateway_id>``).
        client_id_property: MQTT 5 user property naming the node on uplink publishes (None: off).
        close_timeout: seconds ``close`` waits for outstanding acknowledgements.
    """

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        gateway_id: str | None = None,
        status_topic: str | None = DEFAULT_STATUS_TOPIC,
        client_id: str | None = None,
        client_id_property: str | None = CLIENT_ID_PROPERTY,
        close_timeout: float = 5.0,
    ) -> None:
        self.settings = settings
        self.gateway_id = gateway_id or socket.gethostname()
        self.status_topic = (
            status_topic.format(gateway_id=self.gateway_id) if status_topic else None
        )
        self.client_id = client_id or f"{settings.client_id_prefix}mqttsn-gw-{self.gateway_id}"
        self._property = client_id_property if settings.protocol == "5" else None
        self._props: dict[str, Props] = {}
        self._close_timeout = close_timeout
        # filter -> holder -> (references, qos); holder None is the core's aggregate reference
        self._refs: dict[str, dict[str | None, tuple[int, int]]] = {}
        self._events: UpstreamEvents | None = None
        self._connection: BrokerConnection | None = None

    # -- Upstream ---------------------------------------------------------------------------

    async def start(self, events: UpstreamEvents) -> None:
        """Connect; returns after the first attempt (the connection keeps retrying if it failed)."""
        if self._connection is not None:
            raise RuntimeError(f"{self!r} already started")
        self._events = events
        will = (
            Will(self.status_topic, b"offline", qos=1, retain=True) if self.status_topic else None
        )
        self._connection = open_connection(
            self.settings,
            self.client_id,
            self,
            will=will,
            # With a state file (ack_gate set) the broker session continues across restarts:
            # what the broker queued meanwhile, and what we had not yet acknowledged because it
            # was not yet on disk, is delivered again. Without one, start clean.
            clean_start=self.ack_gate is None,
            session_expiry=self.settings.session_expiry,
        )
        await self._connection.start()

    async def close(self) -> None:
        """Publish "offline", flush (bounded), DISCONNECT."""
        connection = self._connection
        if connection is None or connection.finished:
            return
        if self.status_topic and connection.connected:
            connection.publish(self.status_topic, b"offline", 1, True, None)
        await connection.close(grace=self._close_timeout)

    def publish(
        self,
        client_id: str | None,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        token: int | None = None,
    ) -> None:
        """Publish for a node; MQTT 5 adds the node's ClientId as a user property."""
        connection = self._connection  # not _require(): a call less per message
        if connection is None:
            raise RuntimeError(f"{self!r} is not started")
        connection.publish(topic, payload, qos, retain, token, self._props_of(client_id))

    def publisher(self, client_id: str | None, topic: str) -> Callable[[bytes], None]:
        """The shared connection's QoS 0 publisher for ``topic``, with the node's property."""
        return self._require().qos0_publisher(topic, self._props_of(client_id))

    def qos1_publisher(self, client_id: str | None, topic: str) -> Callable[[bytes, int], None]:
        """The shared connection's QoS 1 publisher for ``topic``, with the node's property."""
        return self._require().qos1_publisher(topic, self._props_of(client_id))

    def _props_of(self, client_id: str | None) -> Props | None:
        """The user property naming the node (MQTT 5 with ``client-id-property``), or None."""
        if client_id is None or self._property is None:
            return None
        props = self._props.get(client_id)
        if props is None:
            if len(self._props) >= 10_000:  # bounded: ClientIds come and go
                self._props.clear()
            props = self._props[client_id] = [(self._property, client_id)]
        return props

    def subscribe(self, client_id: str | None, topic_filter: str, qos: int) -> None:
        """Add a reference (one per holder) and SUBSCRIBE at the broker.

        The gateway core subscribes as holder ``None``: it keeps the per-node reference count
        itself, re-sends SUBSCRIBE for every node that subscribes (so the broker re-sends
        retained messages) with the highest QoS any node holds, and unsubscribes once, when
        the last node leaves. So a ``None`` holder is one reference whose QoS is replaced.
        """
        connection = self._require()
        holders = self._refs.setdefault(topic_filter, {})
        _, old_qos = holders.get(client_id, (0, 0))
        holders[client_id] = (1, qos if client_id is None else max(qos, old_qos))
        wanted = max(q for _, q in holders.values())
        # Always sent, even when already subscribed: the broker re-sends retained messages.
        connection.subscribe(topic_filter, wanted)

    def unsubscribe(self, client_id: str | None, topic_filter: str) -> None:
        """Drop one reference; UNSUBSCRIBE at the broker when it was the last."""
        connection = self._require()
        holders = self._refs.get(topic_filter)
        if holders is None or client_id not in holders:
            _LOGGER.debug("unsubscribe %r by %r: not subscribed", topic_filter, client_id)
            return
        count, qos = holders[client_id]
        if count > 1:
            holders[client_id] = (count - 1, qos)
        else:
            del holders[client_id]
        if not holders:
            del self._refs[topic_filter]
            connection.unsubscribe(topic_filter)

    @property
    def connected(self) -> bool:
        """True while the shared broker connection is up."""
        return self._connection is not None and self._connection.connected

    # -- ConnectionHandler ------------------------------------------------------------------

    def on_message(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        filters: frozenset[str] | None = None,
    ) -> None:
        """Report a broker PUBLISH once; the core fans it out to the nodes on ``filters``."""
        assert self._events is not None
        self._events.on_broker_message(None, topic, payload, qos, retain, filters)

    def on_publish_done(self, token: int, ok: bool) -> None:
        """Pass an acknowledgement (or give-up) on."""
        assert self._events is not None
        self._events.on_publish_done(token, ok)

    def on_state(self, connected: bool, return_code: int) -> None:
        """Announce "online" after each connect; report the state."""
        assert self._events is not None
        if connected and self.status_topic and self._connection is not None:
            self._connection.publish(self.status_topic, b"online", 1, True, None)
        self._events.on_connection(None, connected, return_code)

    # -- helpers ------------------------------------------------------------------------------

    def subscription_count(self, topic_filter: str) -> int:
        """References held on ``topic_filter``."""
        return sum(count for count, _ in self._refs.get(topic_filter, {}).values())

    @property
    def connection(self) -> BrokerConnection | None:
        """The shared connection (stats, outbox size), once started."""
        return self._connection

    def _require(self) -> BrokerConnection:
        if self._connection is None:
            raise RuntimeError(f"{self!r} is not started")
        return self._connection

    def __repr__(self) -> str:
        connection = self._connection
        state = "not started" if connection is None else repr(connection)
        return (
            f"<AggregatingUpstream {self.gateway_id!r} MQTT {self.settings.protocol}"
            f" filters={len(self._refs)} {state}>"
        )

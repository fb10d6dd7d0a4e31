"""The upstream contract: publish and subscribe at a broker; report what the broker does."""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["AckGate", "Qos2Ledger", "Upstream", "UpstreamEvents", "Will"]


@dataclass(frozen=True, slots=True)
class Will:
    """A last-will message as the broker should publish it."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


class UpstreamEvents(Protocol):
    """What a bridge reports back; ``client_id`` is None for the shared (aggregating) connection."""

    def on_broker_message(
        self,
        client_id: str | None,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        filters: frozenset[str] | None = None,
    ) -> None:
        """A PUBLISH arrived from the broker.

        ``filters``: the subscriptions this copy was sent for (MQTT 5 Subscription
        Identifiers), or None when the broker cannot say (MQTT 3.1.1).
        """

    def on_publish_done(self, token: int, ok: bool) -> None:
        """The broker acknowledged (ok) or we gave up on (not ok) the publish with ``token``."""

    def on_connection(self, client_id: str | None, connected: bool, return_code: int) -> None:
        """A broker connection came up (return_code 0) or went down / was refused."""


AckGate = Callable[[Callable[[], None]], None]


@runtime_checkable
class Qos2Ledger(Protocol):
    """Packet ids of broker QoS 2 PUBLISHes taken and not yet released, kept across restarts.

    An ``Upstream.ack_gate`` that is also a ledger (the state file's, ``StateStore.ack_gate``)
    saves an id in the same commit as the delivery it belongs to, before the gate lets the
    PUBREC out; so a PUBLISH the broker sends again after a ``kill -9`` is recognised and not
    delivered twice (MQTT 5 §4.3.3, method B: the id is in use until PUBREL). Keyed by the
    connection's MQTT client id: one per node in transparent mode, one shared in aggregating.
    """

    def qos2_ids(self, connection_id: str) -> set[int]:
        """The ids in use on ``connection_id`` (a copy)."""

    def qos2_received(self, connection_id: str, packet_id: int) -> bool:
        """Mark ``packet_id`` in use; False when it already was (a repeat: not delivered again)."""

    def qos2_released(self, connection_id: str, packet_id: int) -> None:
        """PUBREL (or a session the broker no longer has) freed ``packet_id``."""


class Upstream(ABC):
    """A bridge to one MQTT broker: aggregating (one connection) or transparent (one per node).

    Every method but ``start``/``close`` is synchronous and never blocks: work is queued and
    written in batches. QoS 1/2 publishes are held (bounded) while the broker is away and sent
    after reconnect; the outcome is reported through ``UpstreamEvents.on_publish_done(token)``.
    """

    #: Set by the runtime when a state file is on: the bridge hands each broker acknowledgement
    #: (PUBACK for a QoS 1 PUBLISH; PUBREC and PUBCOMP for QoS 2 when the gate is also a
    #: ``Qos2Ledger``) to the gate, which sends it once the message is committed to disk, so
    #: nothing the broker was told we hold can be lost by a crash.
    ack_gate: AckGate | None = None

    @abstractmethod
    async def start(self, events: UpstreamEvents) -> None:
        """Connect (or begin connecting, with backoff) and start reporting events."""

    @abstractmethod
    async def close(self) -> None:
        """Flush what can be flushed and disconnect cleanly."""

    @abstractmethod
    def publish(
        self,
        client_id: str | None,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        token: int | None = None,
    ) -> None:
        """Publish for a node (transparent) or for all (aggregating); QoS > 0 needs a token."""

    def publisher(self, client_id: str | None, topic: str) -> Callable[[bytes], None]:
        """A function that publishes a payload at QoS 0, no retain, to ``topic`` for ``client_id``.

        The uplink hot path: the runtime keeps one per topic a node publishes QoS 0 to, for as
        long as the core's route cache keeps it. A bridge with a faster way than ``publish``
        (topic and properties encoded once) returns that; it must behave as ``publish`` does.
        """
        return functools.partial(self.publish, client_id, topic, qos=0, retain=False)

    def qos1_publisher(self, client_id: str | None, topic: str) -> Callable[[bytes, int], None]:
        """As ``publisher``, at QoS 1: called ``(payload, token)``; outcomes as ``publish``."""
        publish = self.publish

        def publish_qos1(payload: bytes, token: int) -> None:
            publish(client_id, topic, payload, 1, False, token)

        return publish_qos1

    @abstractmethod
    def subscribe(self, client_id: str | None, topic_filter: str, qos: int) -> None:
        """Subscribe; in aggregating mode repeated filters are reference-counted."""

    @abstractmethod
    def unsubscribe(self, client_id: str | None, topic_filter: str) -> None:
        """Drop one reference to a subscription; unsubscribe at the broker when none is left."""

    def open_session(  # noqa: B027 - optional: only transparent bridges open sessions
        self, client_id: str, clean_session: bool, will: Will | None, keepalive: int
    ) -> None:
        """Transparent mode: open the node's own connection; reports on_connection(client_id)."""

    def close_session(self, client_id: str, fire_will: bool) -> None:  # noqa: B027
        """Transparent mode: close the node's connection; without DISCONNECT when ``fire_will``."""

    @property
    @abstractmethod
    def connected(self) -> bool:
        """True while the (shared) broker connection is up."""

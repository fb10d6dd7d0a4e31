"""Test helpers: an UpstreamEvents recorder and a paho-mqtt observer on a real broker."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.mosquitto import MosquittoBroker


@dataclass(frozen=True, slots=True)
class BrokerMessage:
    """One on_broker_message call."""

    client_id: str | None
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass
class Recorder:
    """UpstreamEvents that records every call."""

    messages: list[BrokerMessage] = field(default_factory=list)
    done: dict[int, bool] = field(default_factory=dict)
    done_order: list[int] = field(default_factory=list)
    connections: list[tuple[str | None, bool, int]] = field(default_factory=list)

    def on_broker_message(
        self,
        client_id: str | None,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        filters: frozenset[str] | None = None,
    ) -> None:
        self.messages.append(BrokerMessage(client_id, topic, payload, qos, retain))

    def on_publish_done(self, token: int, ok: bool) -> None:
        assert token not in self.done, f"token {token} reported twice"
        self.done[token] = ok
        self.done_order.append(token)

    def on_connection(self, client_id: str | None, connected: bool, return_code: int) -> None:
        self.connections.append((client_id, connected, return_code))

    def payloads(self, topic: str | None = None) -> list[bytes]:
        return [m.payload for m in self.messages if topic is None or m.topic == topic]

    def sessions(self) -> list[tuple[str | None, bool, int]]:
        """on_connection calls for node sessions (not the gateway's own connection)."""
        return [c for c in self.connections if c[0] is not None]


async def eventually(
    predicate: Callable[[], object], within: float = 5.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until true; fail the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.01)


class Observer:
    """A paho-mqtt client in its own thread that records what the broker delivers."""

    def __init__(
        self,
        broker: MosquittoBroker,
        topic_filter: str | None,
        *,
        qos: int = 2,
        client_id: str | None = None,
        persistent: bool = False,
        port: int | None = None,
    ) -> None:
        self.topic_filter = topic_filter
        self.qos = qos
        self.messages: list[paho.MQTTMessage] = []
        self._subscribed = threading.Event()
        self._persistent = persistent
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"observer-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self._host = broker.host
        self._port = port or broker.port

    def start(self, timeout: float = 5.0) -> Observer:
        properties = None
        if self._persistent:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 3600
        self.client.connect(
            self._host, self._port, clean_start=not self._persistent, properties=properties
        )
        self.client.loop_start()
        if self.topic_filter is not None and not self._subscribed.wait(timeout):
            raise AssertionError("observer did not get SUBACK")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos, retain).wait_for_publish(5)

    def payloads(self, topic: str | None = None) -> list[bytes]:
        return [bytes(m.payload) for m in list(self.messages) if topic in (None, m.topic)]

    def _on_connect(self, client: paho.Client, userdata, flags, reason, properties) -> None:  # type: ignore[no-untyped-def]
        if self.topic_filter is not None:
            client.subscribe(self.topic_filter, self.qos)

    def _on_subscribe(self, client: paho.Client, userdata, mid, reasons, properties) -> None:  # type: ignore[no-untyped-def]
        self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata, message: paho.MQTTMessage) -> None:  # type: ignore[no-untyped-def]
        self.messages.append(message)

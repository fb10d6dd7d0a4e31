"""MQTT 5 on our own asyncio.Protocol and the ``mqtt5`` sans-I/O codec: the gateway's hot path.

Why our own connection and not a client library (figures from the issue, 100k QoS 0 publishes
of 32 bytes to Mosquitto): aiomqtt 2.5.1 ~12.5k msgs/s and quadratic with many pending QoS 1
publishes; paho-mqtt ~30k/s and its threaded loop stops at ~340 connections (select());
the ``mqtt5`` codec alone encodes ~2.7M PUBLISH/s. So:

* writes are collected in a list and written once per loop iteration (``loop.call_soon``);
* in-flight QoS 1/2 publishes are plain dict entries ``packet_id -> _Pending`` (no futures);
* packet ids run 1..65535 and skip ids in use; the number in flight is capped by the broker's
  Receive Maximum (CONNACK) and ``BrokerSettings.max_inflight`` (MQTT 5 §4.9);
* QoS 2: PUBREC already means the broker owns the message, so success is reported then;
  PUBREL/PUBCOMP complete the flow internally (MQTT 5 §4.3.3);
* after a reconnect, unacknowledged PUBLISHes are re-sent with DUP and their original packet
  ids, and PUBRELs re-sent, before anything new (MQTT 5 §4.4).

PUBLISH is framed by hand around a cached, codec-made middle: the first PUBLISH to a topic
(with a given property set) is encoded by ``mqtt5``, which validates it; its topic and property
bytes are kept, and every later PUBLISH is fixed header + those bytes + packet id + payload,
byte-identical to the codec's. Measured in the gateway (issue 7, tests/bench/RESULTS.md): 2.2 ->
1.4 us per QoS 0 PUBLISH and 2.7 -> 1.7 us per QoS 1 with the client-id user property
(aggregating mode's default), 5-7 % of the gateway's CPU per uplink message. (Measured alone
by the bridge's author without properties, there was no gain: properties are what cost.)

The receive side (packets from the broker, their acknowledgements, the QoS 2 ids) is the mixin
``Mqtt5IncomingMixin`` in mqtt5_incoming.py.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import mqtt5

from gateway.bridge.connection import BrokerConnection, ConnectRefused, Props
from gateway.bridge.mqtt5_incoming import _PUBREL, Mqtt5IncomingMixin, _qos2_ledger
from gateway.bridge.mqtt5_incoming import _packet_complete as _packet_complete  # for the tests
from gateway.bridge.url import BrokerSettings

__all__ = ["Mqtt5Connection"]

_LOGGER = logging.getLogger(__name__)

_QOS = (mqtt5.QoS.AT_MOST_ONCE, mqtt5.QoS.AT_LEAST_ONCE, mqtt5.QoS.EXACTLY_ONCE)
_PINGREQ = mqtt5.PingReqPacket().write()
_DUP = 0x08
#: Write-buffer high-water mark: above it QoS 0 is dropped and the outbox waits.
_HIGH_WATER = 1 << 20
#: Most packets collected for one write; beyond it QoS 0 is dropped (bounds memory in a burst).
_MAX_BATCH = 65_536
_LIMITS_WARNED: set[BrokerSettings] = set()
#: PUBLISH fixed-header byte by [qos][retain] (MQTT 5 §3.3.1).
_PUBLISH_BYTE = tuple(
    tuple(bytes((0x30 | qos << 1 | retain,)) for retain in (0, 1)) for qos in (0, 1, 2)
)
_ONE_BYTE_LENGTH = tuple(bytes((n,)) for n in range(128))
_QOS0_BYTE = _PUBLISH_BYTE[0][0]
#: Cached (topic bytes, property bytes) pairs per connection, at most (then started over).
_MIDDLES_MAX = 10_000


@functools.lru_cache(maxsize=16)
def _ssl_context(settings: BrokerSettings) -> ssl.SSLContext | None:
    """One SSLContext per settings, shared by all connections (transparent mode has thousands)."""
    return settings.ssl_context()


class _Pending:
    """One QoS 1/2 publish in flight."""

    __slots__ = ("packet", "released", "sent", "token")

    def __init__(self, token: int | None, packet: bytes) -> None:
        self.token = token
        self.packet = packet
        self.released = False  # QoS 2: PUBREC received, PUBREL sent, PUBCOMP awaited
        self.sent = True  # on the wire of the current connection


class Mqtt5Connection(BrokerConnection, Mqtt5IncomingMixin, asyncio.Protocol):
    """An MQTT 5 broker connection; see the module docstring."""

    def __init__(self, settings: BrokerSettings, client_id: str, handler: Any, **options: Any):
        super().__init__(settings, client_id, handler, **options)
        self._ssl = _ssl_context(settings)
        self._transport: asyncio.Transport | None = None
        self._rbuf = b""
        self._wbuf: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None
        self._inflight: dict[int, _Pending] = {}
        self._sub_ids: dict[str, int] = {}  # filter -> Subscription Identifier
        self._sub_filters: dict[int, str] = {}  # and back
        self._next_sub_id = 1
        self._resend: deque[int] = deque()
        self._on_wire = 0
        self._quota = settings.max_inflight
        self._next_id = 1
        self._pending_acks: dict[int, list[str]] = {}
        self._incoming_qos2: set[int] = set()  # broker QoS 2 ids until PUBREL, without a ledger
        self._qos2_ledger = _qos2_ledger(handler)  # with a state file: see _on_publish
        self._connack: asyncio.Future[mqtt5.ConnAckPacket | None] | None = None
        self._lost_future: asyncio.Future[int] | None = None
        self._connect_clean = True
        self._paused = False
        self._last_read = 0.0
        self._last_write = 0.0
        self._ka_interval = float(self._keepalive)
        self._ka_timer: asyncio.TimerHandle | None = None
        self._disconnect_reason = 0
        self._max_packet: int | None = None
        self._max_qos = 2
        self._retain_available = True
        # (topic, properties, both joined: a QoS 0 PUBLISH has no packet id between them)
        self._middles: dict[object, tuple[bytes, bytes, bytes]] = {}  # see the module docstring

    @property
    def inflight(self) -> int:
        """QoS 1/2 publishes sent and not yet completed (incl. QoS 2 awaiting PUBCOMP)."""
        return len(self._inflight)

    # -- BrokerConnection -----------------------------------------------------------------

    async def _connect(self, clean_start: bool) -> bool:
        loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        self._lost_future = loop.create_future()
        self._disconnect_reason = 0
        self._connect_clean = clean_start
        self._ka_interval = float(self._keepalive)
        settings = self.settings
        transport: asyncio.Transport | None = None
        try:
            async with asyncio.timeout(settings.connect_timeout):
                transport, _ = await loop.create_connection(
                    lambda: self,
                    settings.host,
                    settings.port,
                    ssl=self._ssl,
                    server_hostname=settings.host if self._ssl else None,
                )
                connack = await self._connack
        except BaseException:
            if transport is not None:
                transport.abort()
            raise
        if connack is None:
            raise ConnectionError("broker closed the connection before CONNACK")
        if connack.reason_code != mqtt5.ConnAckReasonCode.SUCCESS:
            transport.abort()
            raise ConnectRefused(int(connack.reason_code), connack.reason_code.name)
        self._quota = max(1, min(connack.receive_max, settings.max_inflight))
        self._max_packet = connack.max_packet_size
        self._max_qos = int(connack.max_qos)
        self._retain_available = connack.retain_available
        if (self._max_qos < 2 or not self._retain_available) and settings not in _LIMITS_WARNED:
            _LIMITS_WARNED.add(settings)  # once per broker, not once per transparent session
            _LOGGER.warning(
                "%s: broker %s supports QoS <= %d, retain %s: publishes are downgraded to that",
                self.client_id,
                settings.url,
                self._max_qos,
                "yes" if self._retain_available else "no",
            )
        if connack.server_keep_alive is not None:
            self._ka_interval = float(connack.server_keep_alive)  # MQTT 5 §3.2.2.3.14
        return connack.session_present

    async def _wait_lost(self) -> int:
        assert self._lost_future is not None
        return await self._lost_future

    def _session_started(self, session_present: bool) -> None:
        if not session_present:
            # The broker has no session: QoS 2 messages it already PUBREC'd are its business
            # (reported as done); QoS 1/2 not acknowledged are sent again (DUP) as new.
            for pid in [pid for pid, entry in self._inflight.items() if entry.released]:
                del self._inflight[pid]
            self._incoming_qos2.clear()
            ledger = self._qos2_ledger
            if ledger is not None:  # a new session at the broker: no saved id is in use
                for pid in ledger.qos2_ids(self.client_id):
                    ledger.qos2_released(self.client_id, pid)
        for entry in self._inflight.values():
            entry.sent = False
        self._resend = deque(self._inflight)
        self._on_wire = 0
        self._pending_acks.clear()
        if self._ka_interval > 0:
            self._ka_timer = self._loop_or_raise().call_later(
                self._ka_interval / 2, self._keepalive_tick
            )

    def _pump(self) -> None:
        resend = self._resend
        inflight = self._inflight
        while resend and self._on_wire < self._quota and not self._paused and self._transport:
            pid = resend.popleft()
            entry = inflight.get(pid)
            if entry is None or entry.sent:
                continue
            entry.sent = True
            self._on_wire += 1
            self.stats.resent += 1
            if entry.released:
                self._write(_PUBREL + pid.to_bytes(2, "big"))
            else:
                packet = entry.packet
                self._write(bytes((packet[0] | _DUP,)) + packet[1:])
        super()._pump()

    def _can_send(self) -> bool:
        return self._on_wire < self._quota and not self._paused and not self._resend

    def _writable(self) -> bool:
        return not self._paused and len(self._wbuf) < _MAX_BATCH

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        token: int | None,
        props: Props | None = None,
    ) -> None:
        """As ``BrokerConnection.publish``, with the commonest case written out here.

        Every QoS 0 uplink message passes here: on a connection taking writes, a topic seen
        before and no retain, the packet is framed around its cached topic and property
        bytes and queued without further calls (tests/bench/RESULTS.md). The rest goes the
        general way.
        """
        if qos or retain or not self._up or self._paused or len(self._wbuf) >= _MAX_BATCH:
            super().publish(topic, payload, qos, retain, token, props)
            return
        middle = self._middles.get((topic, *props) if props else topic)
        if middle is None:
            self._send_publish(topic, payload, 0, False, None, props)
            return
        size = len(middle[2]) + len(payload)
        packet = b"".join(
            (
                _QOS0_BYTE,
                _ONE_BYTE_LENGTH[size] if size < 128 else _varint(size),
                middle[2],
                payload,
            )
        )
        if self._max_packet is not None and len(packet) > self._max_packet:
            self._send_publish(topic, payload, 0, False, None, props)  # says so, drops it
            return
        self._wbuf.append(packet)
        if self._flush_handle is None:
            self._flush_handle = self._loop_or_raise().call_soon(self._flush)

    def qos0_publisher(self, topic: str, props: Props | None) -> Callable[[bytes], None]:
        """The uplink hot path: topic and property bytes encoded once, framed around each payload.

        Each call does what ``publish`` does for QoS 0 on a topic seen before, without the
        cache lookup and the calls in between; whatever else (a connection not taking writes,
        a packet over the broker's maximum) is handed to ``publish``.
        """
        key = (topic, *props) if props else topic
        try:
            middle = self._middles.get(key) or self._middle(key, topic, props)
        except (ValueError, TypeError, IndexError):
            return super().qos0_publisher(topic, props)  # publish() logs and reports it
        body = middle[2]
        body_size = len(body)
        wbuf = self._wbuf
        general = self.publish

        def publish_qos0(payload: bytes) -> None:
            if not self._up or self._paused or len(wbuf) >= _MAX_BATCH:
                general(topic, payload, 0, False, None, props)
                return
            size = body_size + len(payload)
            packet = b"".join(
                (
                    _QOS0_BYTE,
                    _ONE_BYTE_LENGTH[size] if size < 128 else _varint(size),
                    body,
                    payload,
                )
            )
            if self._max_packet is not None and len(packet) > self._max_packet:
                general(topic, payload, 0, False, None, props)  # says so, drops it
                return
            wbuf.append(packet)
            if self._flush_handle is None:
                self._flush_handle = self._loop_or_raise().call_soon(self._flush)

        return publish_qos0

    def qos1_publisher(self, topic: str, props: Props | None) -> Callable[[bytes, int], None]:
        """As ``qos0_publisher``, at QoS 1: a packet id, the in-flight entry, then the write.

        What ``publish`` and ``_send_publish`` do for a QoS 1 PUBLISH that can go on the wire
        now (connected, nothing waiting in the outbox, within the broker's Receive Maximum);
        anything else is handed to ``publish``.
        """
        key = (topic, *props) if props else topic
        try:
            name, properties, _ = self._middles.get(key) or self._middle(key, topic, props)
        except (ValueError, TypeError, IndexError):
            return super().qos1_publisher(topic, props)  # publish() logs and reports it
        fixed_size = len(name) + 2 + len(properties)
        general = self.publish
        first = _PUBLISH_BYTE[1][False]

        def publish_qos1(payload: bytes, token: int) -> None:
            if (
                not self._up
                or self._outbox
                or self._on_wire >= self._quota
                or self._paused
                or self._resend
                or self._max_qos < 1
            ):
                general(topic, payload, 1, False, token, props)
                return
            pid = self._allocate_id()
            size = fixed_size + len(payload)
            packet = b"".join(
                (
                    first,
                    _ONE_BYTE_LENGTH[size] if size < 128 else _varint(size),
                    name,
                    pid.to_bytes(2, "big"),
                    properties,
                    payload,
                )
            )
            if self._max_packet is not None and len(packet) > self._max_packet:
                general(topic, payload, 1, False, token, props)  # says so, reports it failed
                return
            self._inflight[pid] = _Pending(token, packet)
            self._on_wire += 1
            self._wbuf.append(packet)
            if self._flush_handle is None:
                self._flush_handle = self._loop_or_raise().call_soon(self._flush)

        return publish_qos1

    def _send_publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        token: int | None,
        props: Props | None,
    ) -> None:
        if qos > self._max_qos:
            qos = self._max_qos  # the broker's Maximum QoS (MQTT 5 §3.2.2.3.4)
        if retain and not self._retain_available:
            retain = False  # MQTT 5 §3.2.2.3.5; warned about once at CONNACK
        key = (topic, *props) if props else topic
        middle = self._middles.get(key)
        if middle is None:
            try:
                middle = self._middle(key, topic, props)
            except (ValueError, TypeError, IndexError) as exc:
                _LOGGER.error("%s: cannot encode PUBLISH to %r: %s", self.client_id, topic, exc)
                self._call_soon(self._report, token, False)
                return
        name, properties, _ = middle
        if qos == 0:
            pid = 0
            size = len(name) + len(properties) + len(payload)
            parts = [_PUBLISH_BYTE[0][retain], b"", name, properties, payload]
        else:
            pid = self._allocate_id()
            size = len(name) + 2 + len(properties) + len(payload)
            parts = [_PUBLISH_BYTE[qos][retain], b"", name, pid.to_bytes(2, "big"), properties]
            parts.append(payload)
        parts[1] = _ONE_BYTE_LENGTH[size] if size < 128 else _varint(size)
        packet = b"".join(parts)
        if self._max_packet is not None and len(packet) > self._max_packet:
            _LOGGER.warning(
                "%s: PUBLISH to %r is %d bytes, the broker accepts at most %d; dropped",
                self.client_id,
                topic,
                len(packet),
                self._max_packet,
            )
            self._call_soon(self._report, token, False)
            return
        if pid:
            self._inflight[pid] = _Pending(token, packet)
            self._on_wire += 1
        self._write(packet)

    def _middle(self, key: object, topic: str, props: Props | None) -> tuple[bytes, bytes, bytes]:
        """Topic and property bytes of a PUBLISH, from the codec (which validates them)."""
        packet = mqtt5.PublishPacket(topic, b"", user_properties=props).write()
        start = 2
        while packet[start - 1] & 0x80:  # past the Remaining Length varint
            start += 1
        name_end = start + 2 + (packet[start] << 8 | packet[start + 1])
        if len(self._middles) >= _MIDDLES_MAX:
            self._middles.clear()
        name, properties = packet[start:name_end], packet[name_end:]
        middle = self._middles[key] = (name, properties, name + properties)
        return middle

    def _send_subscribe(self, filters: list[tuple[str, int]]) -> None:
        # One SUBSCRIBE per filter, each with its own Subscription Identifier: a broker that
        # sends one copy per matching subscription (Mosquitto does, for overlapping filters
        # on one connection) labels each copy, so the core hands a copy only to the nodes
        # holding that filter instead of delivering every copy to everyone (MQTT 5 §3.3.4).
        for name, qos in filters:
            pid = self._allocate_id()
            self._pending_acks[pid] = [name]
            sub_id = self._sub_ids.get(name)
            if sub_id is None:
                sub_id = self._sub_ids[name] = self._next_sub_id
                self._sub_filters[sub_id] = name
                self._next_sub_id = self._next_sub_id % 0xFFFFFFF + 1
            # retain_as_published=False: live messages arrive with retain=0, only those sent
            # because of a (re)subscription carry retain=1, as in MQTT 3.1.1 and MQTT-SN.
            topic_filter = mqtt5.TopicFilter(name, max_qos=_QOS[qos], retain_as_published=False)
            self._write(mqtt5.SubscribePacket(pid, [topic_filter], subscription_id=sub_id).write())
            _LOGGER.debug("%s: SUBSCRIBE %d %s (id %d)", self.client_id, pid, name, sub_id)

    def _send_unsubscribe(self, filters: list[str]) -> None:
        for name in filters:
            sub_id = self._sub_ids.pop(name, None)
            if sub_id is not None:
                self._sub_filters.pop(sub_id, None)
        pid = self._allocate_id()
        self._pending_acks[pid] = list(filters)
        self._write(mqtt5.UnsubscribePacket(pid, list(filters)).write())
        _LOGGER.debug("%s: UNSUBSCRIBE %d %s", self.client_id, pid, filters)

    def _disconnect(self, fire_will: bool) -> None:
        transport = self._transport
        if transport is None:
            return
        reason = (
            mqtt5.DisconnectReasonCode.DISCONNECT_WITH_WILL_MESSAGE
            if fire_will
            else mqtt5.DisconnectReasonCode.NORMAL_DISCONNECTION
        )
        self._write(mqtt5.DisconnectPacket(reason_code=reason).write())
        self._flush()
        transport.close()

    def _take_inflight_tokens(self) -> list[int | None]:
        tokens = [entry.token for entry in self._inflight.values() if not entry.released]
        self._inflight.clear()
        self._resend.clear()
        self._on_wire = 0
        return tokens

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass, but has its methods.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=_HIGH_WATER)
        self._rbuf = b""
        self._paused = False
        self._last_read = self._last_write = self._loop_or_raise().time()
        will = self._will
        packet = mqtt5.ConnectPacket(
            self.client_id,
            username=self.settings.username,
            password=self.settings.password_bytes(),
            clean_start=self._connect_clean,
            will=None if will is None else _will(will.topic, will.payload, will.qos, will.retain),
            keep_alive=self._keepalive,
            session_expiry_interval=self._session_expiry,
        )
        transport.write(packet.write())

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._up = False  # until the connect loop notices: QoS 0 is counted as dropped
        if self._ka_timer is not None:
            self._ka_timer.cancel()
            self._ka_timer = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._wbuf.clear()
        self._paused = False
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(None)
        if self._lost_future is not None and not self._lost_future.done():
            self._lost_future.set_result(self._disconnect_reason)
        if exc is not None:
            _LOGGER.debug("%s: connection lost: %r", self.client_id, exc)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._up:
            self._pump()

    # -- helpers ------------------------------------------------------------------------

    def _allocate_id(self) -> int:
        """The next packet id in 1..65535 not in use (MQTT 5 §2.2.1)."""
        inflight = self._inflight
        acks = self._pending_acks
        if len(inflight) + len(acks) >= 65535:
            raise RuntimeError("all 65535 packet ids are in use")
        pid = self._next_id
        while pid in inflight or pid in acks:
            pid = pid % 65535 + 1
        self._next_id = pid % 65535 + 1
        return pid

    def _write(self, data: bytes) -> None:
        """Queue bytes; one transport write per loop iteration."""
        self._wbuf.append(data)
        if self._flush_handle is None:
            self._flush_handle = self._loop_or_raise().call_soon(self._flush)

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._wbuf and self._transport is not None:
            self._transport.write(b"".join(self._wbuf))
            self._last_write = self._loop_or_raise().time()
        self._wbuf.clear()

    def _keepalive_tick(self) -> None:
        """Ping when either direction was idle for half the keep-alive; drop a silent broker."""
        self._ka_timer = None
        if self._transport is None:
            return
        loop = self._loop_or_raise()
        now = loop.time()
        interval = self._ka_interval
        if now - self._last_read > interval * 1.5:
            _LOGGER.warning(
                "%s: broker %s silent for %.0fs; dropping the connection",
                self.client_id,
                self.settings.url,
                now - self._last_read,
            )
            self._abort()
            return
        if now - self._last_write >= interval / 2 or now - self._last_read >= interval / 2:
            self._write(_PINGREQ)
        self._ka_timer = loop.call_later(interval / 2, self._keepalive_tick)

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _loop_or_raise(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop


def _will(topic: str, payload: bytes, qos: int, retain: bool) -> mqtt5.Will:
    return mqtt5.Will(topic, payload=payload, qos=_QOS[qos], retain=retain)


def _varint(value: int) -> bytes:
    """An MQTT Variable Byte Integer (MQTT 5 §1.5.5); the PUBLISH Remaining Length."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)

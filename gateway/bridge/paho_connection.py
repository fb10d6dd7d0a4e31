"""MQTT 3.1.1 through paho-mqtt, driven by the asyncio loop: the library path for old brokers.

Why paho and not our codec path: the ``mqtt5`` codec speaks MQTT 5 only. Why paho directly and
not aiomqtt 2.5.1 (which wraps paho the same way): aiomqtt adds a future per message and slows
down quadratically with many pending QoS 1 publishes. We drive paho as aiomqtt does, but:

* its socket is watched by the event loop (``add_reader``/``add_writer``; epoll under uvloop),
  never by paho's threaded select() loop, so thousands of connections work;
* the blocking TCP/TLS connect runs in the default executor (paho's ``reconnect``);
* paho's own in-flight limit is switched off (``max_inflight_messages_set(0)``): with a limit,
  paho rescans all its queued messages on every ack (O(n) per ack). Concurrency is capped by
  our outbox instead (``BrokerSettings.max_inflight`` messages handed to paho at a time);
* an ack is a dict entry ``mid -> token`` popped in ``on_publish``: no futures per message.

Differences from the MQTT 5 path: QoS 2 is reported after PUBCOMP (paho reports nothing at
PUBREC); no user properties; a will is published on ``close_session(fire_will=True)`` by closing
the TCP connection without DISCONNECT; paho re-sends unacknowledged publishes with DUP itself.

Broker messages are acknowledged by us (paho's manual acks), through the owner's ack gate when
it has one (a state file: the ack leaves once the delivery is committed). What that gives:

* QoS 1: PUBACK after the commit, as on the MQTT 5 path: nothing taken is lost by ``kill -9``,
  at least once (the broker repeats what was not acknowledged).
* QoS 2: paho answers PUBREC itself on receipt and keeps the message in memory until PUBREL
  (MQTT 3.1.1 §4.3.3, method A): only then do we see it. So exactly-once cannot be kept across a
  crash: a message taken in the last round trip before ``kill -9`` (PUBREC sent, PUBREL not yet
  handled), or delivered but not yet committed, is lost, because the broker then only repeats
  PUBREL. It is never delivered twice. PUBCOMP goes through the gate, which at least commits at
  once instead of within the 50 ms batch. MQTT 5 (the default) keeps QoS 2 exactly once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from gateway.bridge.connection import BrokerConnection, ConnectRefused, Props
from gateway.bridge.url import BrokerSettings

__all__ = ["PahoConnection"]

_LOGGER = logging.getLogger(__name__)

#: How often paho's keep-alive bookkeeping (``loop_misc``) runs.
_MISC_INTERVAL = 1.0
#: Packets paho may hold unwritten before QoS 0 is dropped (bounds memory in a burst).
_MAX_UNWRITTEN = 65_536
_ACCEPTED = (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)


@functools.lru_cache(maxsize=16)
def _ssl_context(settings: BrokerSettings) -> ssl.SSLContext | None:
    """One SSLContext per settings, shared by all connections."""
    return settings.ssl_context()


class _Client(paho.Client):
    """paho's client, answering a PUBREL for a message it does not hold.

    With manual acks, paho 2.x leaves PUBCOMP to ``ack()``, which we call only for messages it
    delivers; a PUBREL the broker repeats after our restart (the message died with the old
    process) would go unanswered and its packet id stay in use at the broker for good.
    """

    def _handle_pubrel(self) -> MQTTErrorCode:
        mid = int.from_bytes(self._in_packet["packet"][:2], "big")
        with self._in_message_mutex:
            held = mid in self._in_messages
        rc = super()._handle_pubrel()
        if held or rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return rc
        return self._send_pubcomp(mid)  # MQTT 3.1.1 §4.3.3: PUBCOMP for every PUBREL


class PahoConnection(BrokerConnection):
    """An MQTT 3.1.1 broker connection through paho-mqtt; see the module docstring."""

    def __init__(self, settings: BrokerSettings, client_id: str, handler: Any, **options: Any):
        super().__init__(settings, client_id, handler, **options)
        client = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=self._clean_next or self._session_expiry == 0,
            protocol=MQTTProtocolVersion.MQTTv311,
            reconnect_on_failure=False,
            manual_ack=True,  # see the module docstring
        )
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.password)
        context = _ssl_context(settings)
        if context is not None:
            client.tls_set_context(context)
            if settings.insecure:
                client.tls_insecure_set(True)
        client.connect_timeout = settings.connect_timeout
        client.connect_async(settings.host, settings.port, self._keepalive)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_subscribe
        self._client = client
        self._mids: dict[int, int | None] = {}
        self._pending_acks: dict[int, list[str]] = {}
        self._fd: int | None = None
        self._misc_timer: asyncio.TimerHandle | None = None
        self._connack: asyncio.Future[tuple[bool, int, str]] | None = None
        self._lost_future: asyncio.Future[int] | None = None
        self._generation = 0  # connections lost so far: an ack belongs to its connection

    @property
    def inflight(self) -> int:
        """QoS 1/2 publishes handed to paho and not yet acknowledged."""
        return len(self._mids)

    # -- BrokerConnection -----------------------------------------------------------------

    async def _connect(self, clean_start: bool) -> bool:
        client = self._client
        # paho has no public setter for the 3.1.1 clean-session flag after construction.
        client._clean_session = clean_start or self._session_expiry == 0
        will = self._will
        if will is None:
            client.will_clear()
        else:
            client.will_set(will.topic, will.payload, will.qos, will.retain)
        loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        self._lost_future = loop.create_future()
        self._detach()  # paho works in a worker thread now: no loop callbacks from there
        connecting = loop.run_in_executor(None, client.reconnect)
        try:
            await asyncio.shield(connecting)
        except asyncio.CancelledError:
            connecting.add_done_callback(lambda _: self._drop_socket())
            raise
        self._attach()
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                session_present, code, reason = await self._connack
        except BaseException:
            self._drop_socket()
            raise
        if code:
            self._drop_socket()
            raise ConnectRefused(code, reason)
        return session_present

    async def _wait_lost(self) -> int:
        assert self._lost_future is not None
        return await self._lost_future

    def _session_started(self, session_present: bool) -> None:
        # paho re-sends its unacknowledged messages (DUP) on CONNACK by itself.
        pass

    def _can_send(self) -> bool:
        return len(self._mids) < self.settings.max_inflight

    def _writable(self) -> bool:
        return len(self._client._out_packet) < _MAX_UNWRITTEN

    def _send_publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        token: int | None,
        props: Props | None,
    ) -> None:
        try:
            info = self._client.publish(topic, payload, qos, retain)
        except ValueError as exc:
            _LOGGER.error("%s: cannot publish to %r: %s", self.client_id, topic, exc)
            self._call_soon(self._report, token, False)
            return
        if qos:
            if info.rc in _ACCEPTED:  # NO_CONN: paho keeps it and sends it after reconnect
                self._mids[info.mid] = token
            else:
                _LOGGER.error("%s: paho refused a publish: %s", self.client_id, info.rc)
                self._call_soon(self._report, token, False)
        elif info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._drop_qos0()

    def _send_subscribe(self, filters: list[tuple[str, int]]) -> None:
        rc, mid = self._client.subscribe(filters)
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            self._pending_acks[mid] = [name for name, _ in filters]

    def _send_unsubscribe(self, filters: list[str]) -> None:
        rc, mid = self._client.unsubscribe(filters)
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            self._pending_acks[mid] = list(filters)

    def _disconnect(self, fire_will: bool) -> None:
        if fire_will:
            # MQTT 3.1.1 has no "disconnect with will": close TCP without DISCONNECT (§3.1.2.5).
            self._drop_socket()
        else:
            self._client.disconnect()

    def _take_inflight_tokens(self) -> list[int | None]:
        tokens = list(self._mids.values())
        self._mids.clear()
        self._client.drop_out_messages()
        return tokens

    # -- paho callbacks (always on the loop thread) ------------------------------------------

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if self._connack is not None and not self._connack.done():
            code = reason.value if reason.is_failure else 0
            self._connack.set_result((bool(flags.session_present), code, str(reason)))

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self._up = False
        self._generation += 1
        self._detach()
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(ConnectionError("broker closed the connection"))
            self._connack.exception()  # retrieved here: the waiter may be gone already
        if self._lost_future is not None and not self._lost_future.done():
            self._lost_future.set_result(0)

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        if mid not in self._mids:
            return  # QoS 0 written, or an ack after close
        token = self._mids.pop(mid)
        ok = not reason.is_failure
        if not ok:
            _LOGGER.warning("%s: broker rejected a publish: %s", self.client_id, reason)
        self._report(token, ok)
        if self._outbox:
            self._pump()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self._deliver(message.topic, bytes(message.payload), message.qos, bool(message.retain))
        if message.qos:
            self._ack(message.mid, message.qos)  # PUBACK, or PUBCOMP after PUBREL (QoS 2)

    def _ack(self, mid: int, qos: int) -> None:
        """Acknowledge a broker PUBLISH through the owner's durability gate, if it has one."""
        gate = getattr(self.handler, "ack_gate", None)
        if gate is None:
            self._client.ack(mid, qos)
            return
        generation = self._generation

        def send() -> None:
            # Only on the connection the PUBLISH came on: after a reconnect the broker resends.
            if self._generation == generation and self._fd is not None:
                self._client.ack(mid, qos)

        gate(send)

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        filters = self._pending_acks.pop(mid, None) or []
        for name, reason in zip(filters, reasons or [], strict=False):
            if reason.is_failure:
                _LOGGER.warning("%s: broker refused %r: %s", self.client_id, name, reason)

    # -- event-loop plumbing ----------------------------------------------------------------

    def _attach(self) -> None:
        """Watch paho's socket with the event loop (on the loop thread, after connect)."""
        client = self._client
        sock = client.socket()
        if sock is None:
            raise ConnectionError("paho has no socket after connect")
        loop = asyncio.get_running_loop()
        self._fd = sock.fileno()
        loop.add_reader(self._fd, self._on_readable)
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write
        client.on_socket_close = self._socket_closing
        if client.want_write():
            loop.add_writer(self._fd, self._on_writable)
        self._misc_timer = loop.call_later(_MISC_INTERVAL, self._misc)

    def _detach(self) -> None:
        """Stop watching the socket; drop the loop callbacks from paho."""
        client = self._client
        client.on_socket_register_write = None
        client.on_socket_unregister_write = None
        client.on_socket_close = None
        if self._misc_timer is not None:
            self._misc_timer.cancel()
            self._misc_timer = None
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self._fd = None

    def _drop_socket(self) -> None:
        """Close the TCP connection without DISCONNECT; report the loss."""
        sock = self._client.socket()
        self._detach()
        if sock is not None:
            sock.close()
        self._on_disconnect(self._client, None, None, None, None)

    def _register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._fd is not None and self._loop is not None:
            self._loop.add_writer(self._fd, self._on_writable)

    def _unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._fd is not None and self._loop is not None:
            self._loop.remove_writer(self._fd)

    def _socket_closing(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._detach()

    def _on_readable(self) -> None:
        client = self._client
        client.loop_read()
        sock = client.socket()
        # TLS may hold decrypted bytes the kernel no longer reports as readable.
        while isinstance(sock, ssl.SSLSocket) and sock.fileno() >= 0 and sock.pending():
            if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            sock = client.socket()

    def _on_writable(self) -> None:
        self._client.loop_write()

    def _misc(self) -> None:
        self._misc_timer = None
        if self._fd is None or self._loop is None:
            return
        self._client.loop_misc()  # PINGREQ when due; drops a silent broker
        if self._fd is not None:
            self._misc_timer = self._loop.call_later(_MISC_INTERVAL, self._misc)

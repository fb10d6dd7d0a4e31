"""The receive side of ``Mqtt5Connection`` (mqtt5_connection.py): broker packets in, acks out.

A mixin, kept apart because it is the broker -> gateway half of the connection: reading packets
from the byte stream (a PUBACK "success" without the codec), completing our QoS 1/2 publishes,
delivering broker PUBLISHes and acknowledging them, for QoS 2 with the ids kept until PUBREL
(in the state file's ledger when there is one). Connecting, framing PUBLISH and writing stay in
mqtt5_connection.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING

import mqtt5

from gateway.bridge.base import Qos2Ledger
from gateway.bridge.connection import ConnectionHandler, Outgoing
from gateway.bridge.url import BrokerSettings

if TYPE_CHECKING:
    from gateway.bridge.mqtt5_connection import _Pending

__all__ = ["Mqtt5IncomingMixin"]

# The connection's logger: its log lines keep one name, as before the receive side moved here.
_LOGGER = logging.getLogger("gateway.bridge.mqtt5_connection")

# Acks with reason "success" and no properties are 4 bytes: type, length 2, packet id (§3.4.2.1).
_PUBACK = b"\x40\x02"
_PUBREC = b"\x50\x02"
_PUBREL = b"\x62\x02"
_PUBCOMP = b"\x70\x02"


class Mqtt5IncomingMixin:
    """Broker -> gateway half of ``Mqtt5Connection``."""

    settings: BrokerSettings
    client_id: str
    handler: ConnectionHandler
    _transport: asyncio.Transport | None
    _rbuf: bytes
    _last_read: float
    _inflight: dict[int, _Pending]
    _on_wire: int
    _outbox: deque[Outgoing]
    _resend: deque[int]
    _pending_acks: dict[int, list[str]]
    _sub_filters: dict[int, str]
    _incoming_qos2: set[int]
    _qos2_ledger: Qos2Ledger | None
    _connack: asyncio.Future[mqtt5.ConnAckPacket | None] | None
    _disconnect_reason: int

    # Provided by Mqtt5Connection and BrokerConnection, both before this mixin in the MRO.
    def _write(self, data: bytes) -> None:
        raise NotImplementedError  # pragma: no cover

    def _pump(self) -> None:
        raise NotImplementedError  # pragma: no cover

    def _abort(self) -> None:
        raise NotImplementedError  # pragma: no cover

    def _loop_or_raise(self) -> asyncio.AbstractEventLoop:
        raise NotImplementedError  # pragma: no cover

    def _report(self, token: int | None, ok: bool) -> None:
        raise NotImplementedError  # pragma: no cover

    def _deliver(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        filters: frozenset[str] | None = None,
    ) -> None:
        raise NotImplementedError  # pragma: no cover

    # -- asyncio.Protocol -----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._last_read = self._loop_or_raise().time()
        buf = self._rbuf + data if self._rbuf else data
        view = memoryview(buf)
        offset = 0
        size = len(buf)
        read = mqtt5.read
        try:
            while offset < size:
                if buf[offset] == 0x40 and offset + 4 <= size and buf[offset + 1] == 2:
                    # A PUBACK "success" without properties (MQTT 5 §3.4.2.1), one per QoS 1
                    # uplink message: read here, as the codec's packet object and its enum
                    # cost more than the rest of the acknowledgement (tests/bench/RESULTS.md).
                    self._on_puback(buf[offset + 2] << 8 | buf[offset + 3], 0)
                    offset += 4
                    continue
                try:
                    packet, used = read(view[offset:])
                except IndexError:
                    if _packet_complete(view, offset):
                        raise
                    break
                offset += used
                self._handle(packet)
        except (ValueError, IndexError, TypeError) as exc:
            _LOGGER.warning(
                "%s: malformed packet from %s (%s): %s",
                self.client_id,
                self.settings.url,
                exc,
                bytes(view[offset : offset + 32]).hex(),
            )
            view.release()
            self._abort()
            return
        view.release()
        self._rbuf = buf[offset:] if offset < size else b""

    # -- incoming packets ---------------------------------------------------------------------

    def _handle(self, packet: mqtt5.Packet) -> None:
        match packet:
            case mqtt5.PubAckPacket():
                self._on_puback(packet.packet_id, int(packet.reason_code))
            case mqtt5.PublishPacket():
                self._on_publish(packet)
            case mqtt5.PubRecPacket():
                self._on_pubrec(packet)
            case mqtt5.PubCompPacket():
                entry = self._inflight.pop(packet.packet_id, None)
                if entry is None:
                    _LOGGER.warning("%s: unsolicited PUBCOMP %d", self.client_id, packet.packet_id)
                elif entry.sent:
                    self._on_wire -= 1
                    self._pump()
            case mqtt5.PubRelPacket():
                self._on_pubrel(packet.packet_id)
            case mqtt5.SubAckPacket() | mqtt5.UnsubAckPacket():
                self._on_suback(packet)
            case mqtt5.PingRespPacket():
                pass
            case mqtt5.ConnAckPacket() if self._connack is not None and not self._connack.done():
                self._connack.set_result(packet)
            case mqtt5.DisconnectPacket():
                self._disconnect_reason = int(packet.reason_code)
                _LOGGER.log(
                    logging.INFO
                    if packet.reason_code == mqtt5.DisconnectReasonCode.SERVER_SHUTTING_DOWN
                    else logging.WARNING,
                    "%s: broker %s disconnected us: %s %s",
                    self.client_id,
                    self.settings.url,
                    packet.reason_code.name,
                    packet.reason_str or "",
                )
                if self._transport is not None:
                    self._transport.close()
            case _:
                _LOGGER.warning(
                    "%s: unexpected %s from broker %s; dropping the connection",
                    self.client_id,
                    type(packet).__name__,
                    self.settings.url,
                )
                self._abort()

    def _on_puback(self, pid: int, code: int) -> None:
        entry = self._inflight.pop(pid, None)
        if entry is None or entry.released:
            _LOGGER.warning("%s: unsolicited PUBACK %d", self.client_id, pid)
            if entry is not None:
                self._inflight[pid] = entry
            return
        if entry.sent:
            self._on_wire -= 1
        ok = code < 0x80
        if not ok:
            _LOGGER.warning(
                "%s: broker rejected a publish: %s",
                self.client_id,
                mqtt5.PubAckReasonCode(code).name,
            )
        self._report(entry.token, ok)
        if self._outbox or self._resend:
            self._pump()

    def _on_pubrec(self, packet: mqtt5.PubRecPacket) -> None:
        pid = packet.packet_id
        entry = self._inflight.get(pid)
        if entry is None:
            _LOGGER.warning("%s: unsolicited PUBREC %d", self.client_id, pid)
            self._write(
                mqtt5.PubRelPacket(
                    pid, reason_code=mqtt5.PubRelReasonCode.PACKET_ID_NOT_FOUND
                ).write()
            )
            return
        if int(packet.reason_code) >= 0x80:  # the flow ends here (MQTT 5 §4.3.3)
            _LOGGER.warning(
                "%s: broker rejected a publish: %s", self.client_id, packet.reason_code.name
            )
            del self._inflight[pid]
            if entry.sent:
                self._on_wire -= 1
            self._report(entry.token, False)
            self._pump()
            return
        if not entry.released:
            entry.released = True
            entry.packet = b""
            self._report(entry.token, True)
        self._write(_PUBREL + pid.to_bytes(2, "big"))

    def _on_publish(self, packet: mqtt5.PublishPacket) -> None:
        qos = int(packet.qos)
        ids = packet.subscription_ids
        filters = None
        if ids:
            known = self._sub_filters
            filters = frozenset(known[i] for i in ids if i in known) or None
        if qos == 0:
            self._deliver(packet.topic, packet.payload, 0, packet.retain, filters)
            return
        pid = packet.packet_id
        assert pid is not None
        if qos == 1:
            self._deliver(packet.topic, packet.payload, 1, packet.retain, filters)
            self._ack(_PUBACK + pid.to_bytes(2, "big"))
            return
        # QoS 2, method B: deliver on PUBLISH, the id is in use until PUBREL (MQTT 5 §4.3.3):
        # a repeat (DUP, also after our restart when the id is in the state file) is not
        # delivered again. With a ledger, the id is committed with what the delivery changed
        # (a sleeping node's buffer) before PUBREC leaves; a kill -9 before that commit leaves
        # the broker without PUBREC, so it sends the PUBLISH again: exactly once across the
        # crash for what the gateway holds. Without a ledger PUBREC goes at once.
        ledger = self._qos2_ledger
        if ledger is not None:
            if ledger.qos2_received(self.client_id, pid):
                self._deliver(packet.topic, packet.payload, 2, packet.retain, filters)
            self._ack(_PUBREC + pid.to_bytes(2, "big"))
            return
        if pid not in self._incoming_qos2:
            self._incoming_qos2.add(pid)
            self._deliver(packet.topic, packet.payload, 2, packet.retain, filters)
        self._write(_PUBREC + pid.to_bytes(2, "big"))

    def _on_pubrel(self, pid: int) -> None:
        """Free a broker QoS 2 id and answer PUBCOMP (also for an id we do not know: idempotent).

        With a ledger, PUBCOMP waits until the id's removal is committed: the broker may reuse
        the id once it has PUBCOMP, and a stale id left on disk by a crash would then hide that
        new message. A crash before the commit: the broker repeats PUBREL after reconnecting.
        """
        ledger = self._qos2_ledger
        if ledger is None:
            self._incoming_qos2.discard(pid)
            self._write(_PUBCOMP + pid.to_bytes(2, "big"))
            return
        ledger.qos2_released(self.client_id, pid)
        self._ack(_PUBCOMP + pid.to_bytes(2, "big"))

    def _on_suback(self, packet: mqtt5.SubAckPacket | mqtt5.UnsubAckPacket) -> None:
        filters = self._pending_acks.pop(packet.packet_id, None)
        if filters is None:
            _LOGGER.warning("%s: unsolicited %s", self.client_id, type(packet).__name__)
            return
        for name, code in zip(filters, packet.reason_codes, strict=False):
            if int(code) >= 0x80:
                _LOGGER.warning(
                    "%s: broker refused %s of %r: %s",
                    self.client_id,
                    "SUBSCRIBE" if isinstance(packet, mqtt5.SubAckPacket) else "UNSUBSCRIBE",
                    name,
                    code.name,
                )

    # -- helpers ------------------------------------------------------------------------

    def _ack(self, data: bytes) -> None:
        """Acknowledge a broker PUBLISH (PUBACK; PUBREC, PUBCOMP with a ledger) through the
        owner's durability gate, if it has one.

        After a crash the broker delivers again what was not acknowledged: QoS 1 at least once,
        as QoS 1 allows; QoS 2 exactly once, thanks to the ledger (see ``_on_publish``).
        """
        gate = getattr(self.handler, "ack_gate", None)
        if gate is None:
            self._write(data)
            return
        transport = self._transport

        def send() -> None:
            # Only on the connection the PUBLISH came on: after a reconnect the broker resends.
            if self._transport is transport and transport is not None:
                self._write(data)

        gate(send)


def _qos2_ledger(handler: object) -> Qos2Ledger | None:
    """The owner's ack gate when it also keeps broker QoS 2 ids (a state file's), else None."""
    gate = getattr(handler, "ack_gate", None)
    return gate if isinstance(gate, Qos2Ledger) else None


def _packet_complete(view: memoryview, offset: int) -> bool:
    """True when the fixed header says the whole packet at ``offset`` is in ``view``."""
    length = 0
    shift = 0
    pos = offset + 1
    end = len(view)
    for _ in range(4):
        if pos >= end:
            return False
        byte = view[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return pos + length <= end
        shift += 7
    return True  # a remaining length longer than 4 bytes is malformed

"""The broker side of the benchmarks: a small MQTT 3.1.1 client on asyncio, fast enough to count.

It subscribes to what the nodes publish (uplink rows: counts, duplicates and latency from the
timestamp in each payload) and publishes what the nodes must receive (downlink rows), paced by
the deliveries the node workers count in shared memory. It is deliberately not our own bridge
(``gateway.bridge``): the thing under test should not also be the yardstick.

Payload layout (as in ``../shared/tools/mqttsn_load.py``, so both tools read each other's
messages), big endian, zero-padded to the payload size:
``run id (u32) | send time CLOCK_MONOTONIC ns (u64) | node index (u32) | seq (u32)``.
"""

from __future__ import annotations

import asyncio
import struct
import time
from array import array
from typing import Any

__all__ = ["PAYLOAD", "MqttClient", "encode_publish"]

PAYLOAD = struct.Struct(">IQII")
_U16 = struct.Struct(">H")

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, PINGREQ = 1, 2, 3, 4, 8, 9, 12


def _remaining(n: int) -> bytes:
    """MQTT variable-length Remaining Length [MQTT 3.1.1 §2.2.3]."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _remaining(len(body)) + body


def _string(text: str) -> bytes:
    raw = text.encode()
    return _U16.pack(len(raw)) + raw


def encode_publish(topic: str, payload: bytes, qos: int = 0, packet_id: int = 0) -> bytes:
    """One PUBLISH packet."""
    body = _string(topic) + (_U16.pack(packet_id) if qos else b"") + payload
    return _packet(0x30 | (qos << 1), body)


class MqttClient(asyncio.Protocol):
    """Connect, subscribe, publish (QoS 0/1 with a window of packet ids), count what arrives."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._connack: asyncio.Future[int] | None = None
        self._subacks: dict[int, asyncio.Future[int]] = {}
        self._pending: dict[int, int] = {}  # QoS 1 publish packet id -> 1
        self._window_free: asyncio.Event = asyncio.Event()
        self._next_id = 0
        self.closed: asyncio.Future[None] | None = None
        # uplink counting, reset by ``reset``
        self.run_id = -1
        self.received = 0
        self.foreign = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.last_rx = 0
        self.latency = array("q")
        self.last_seq: array[int] = array("q")
        self.acked = 0
        self.on_count: Any = None  # callable(received) after each datagram burst

    # ------------------------------------------------------------------ lifecycle

    async def connect(self, host: str, port: int, timeout: float = 10.0) -> None:
        """Open the TCP connection and complete CONNECT/CONNACK (clean session, no keep-alive)."""
        loop = asyncio.get_running_loop()
        self.closed = loop.create_future()
        await loop.create_connection(lambda: self, host, port)
        self._connack = loop.create_future()
        # CONNECT: "MQTT", level 4, clean session, keep-alive 0 (no PINGREQ needed) [§3.1]
        body = _string("MQTT") + bytes((4, 0x02)) + _U16.pack(0) + _string(self.client_id)
        self._write(_packet(0x10, body))
        rc = await asyncio.wait_for(self._connack, timeout)
        if rc != 0:
            raise RuntimeError(f"broker refused the bench client: CONNACK {rc}")

    async def subscribe(self, topic: str, qos: int = 0, timeout: float = 10.0) -> int:
        """SUBSCRIBE and wait for the SUBACK; returns the granted QoS."""
        packet_id = self._new_id()
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._subacks[packet_id] = fut
        self._write(_packet(0x82, _U16.pack(packet_id) + _string(topic) + bytes((qos,))))
        return await asyncio.wait_for(fut, timeout)

    def reset(self, run_id: int, nodes: int) -> None:
        """Start counting uplink messages of a new run."""
        self.run_id = run_id
        self.received = self.foreign = self.duplicates = self.out_of_order = 0
        self.last_rx = 0
        self.latency = array("q")
        self.last_seq = array("q", [-1]) * max(nodes, 1)

    def close(self) -> None:
        """Send DISCONNECT and close."""
        if self.transport is not None and not self.transport.is_closing():
            self._write(b"\xe0\x00")
            self.transport.close()

    # ------------------------------------------------------------------ publishing

    def _new_id(self) -> int:
        while True:
            self._next_id = self._next_id % 0xFFFF + 1
            if self._next_id not in self._pending:
                return self._next_id

    def publish_qos0(self, packets: list[bytes]) -> None:
        """Write prepared QoS 0 PUBLISH packets in one go."""
        self._write(b"".join(packets))

    async def publish_qos1(self, topic: str, payload: bytes, window: int) -> None:
        """One QoS 1 PUBLISH; waits while ``window`` are unacknowledged."""
        while len(self._pending) >= window:
            self._window_free.clear()
            await self._window_free.wait()
        packet_id = self._new_id()
        self._pending[packet_id] = 1
        self._write(encode_publish(topic, payload, 1, packet_id))

    async def wait_acked(self, timeout: float) -> bool:
        """Wait until every QoS 1 publish is acknowledged by the broker."""
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            self._window_free.clear()
            try:
                await asyncio.wait_for(self._window_free.wait(), 0.1)
            except TimeoutError:
                pass
        return not self._pending

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos, end = 0, len(buf)
        while end - pos >= 2:
            first = buf[pos]
            # Remaining Length: 1..4 bytes of 7 bits [MQTT 3.1.1 §2.2.3]
            length, shift, i, complete = 0, 0, pos + 1, False
            while i < end:
                byte = buf[i]
                i += 1
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    complete = True
                    break
                shift += 7
            if not complete or end - i < length:
                break
            kind = first >> 4
            if kind == PUBLISH:
                self._on_publish(buf, first, i, i + length)
            elif kind == PUBACK:
                if self._pending.pop((buf[i] << 8) | buf[i + 1], None) is not None:
                    self.acked += 1
                    self._window_free.set()
            elif kind == CONNACK:
                if self._connack is not None and not self._connack.done():
                    self._connack.set_result(buf[i + 1])
            elif kind == SUBACK:
                fut = self._subacks.pop((buf[i] << 8) | buf[i + 1], None)
                if fut is not None and not fut.done():
                    fut.set_result(buf[i + 2])
            pos = i + length
        del buf[:pos]
        if self.on_count is not None:
            self.on_count(self.received)

    def _on_publish(self, buf: bytearray, first: int, start: int, end: int) -> None:
        topic_len = (buf[start] << 8) | buf[start + 1]
        at = start + 2 + topic_len
        qos = (first >> 1) & 3
        if qos:
            self._write(b"\x40\x02" + bytes(buf[at : at + 2]))
            at += 2
        if end - at < PAYLOAD.size:
            self.foreign += 1
            return
        run_id, sent_ns, index, seq = PAYLOAD.unpack_from(buf, at)
        if run_id != self.run_id or index >= len(self.last_seq):
            self.foreign += 1
            return
        t = time.monotonic_ns()
        last = self.last_seq[index]
        if seq <= last:
            if seq == last:
                self.duplicates += 1
                return
            self.out_of_order += 1
        else:
            self.last_seq[index] = seq
        self.received += 1
        self.latency.append(t - sent_ns)
        self.last_rx = t

"""A minimal MQTT-SN -> MQTT forwarder: the ceiling of plain Python on this machine (issue 7).

NOT the product, and no gateway: it exists only so that the benchmark (``run.py --gateway-cmd
minimal``) can measure, under exactly the load our gateway gets, how fast a forwarder that does
nothing else can be in Python + uvloop on the machine at hand, and report our gateway's figures
as a share of that. Started as the bench starts the gateway::

    python -m tests.bench.minimal_forwarder run --udp HOST:PORT --broker mqtt://HOST:PORT [...]

(other options, e.g. ``--mode``, ``--state``, are accepted and ignored).

What it does, and nothing more: CONNECT -> CONNACK; REGISTER -> REGACK (one topic id per topic
name, shared by all nodes); PUBLISH QoS 0 -> upstream PUBLISH QoS 0; PUBLISH QoS 1 -> upstream
PUBLISH QoS 1, the node's PUBACK sent when the broker's PUBACK arrives; PINGREQ -> PINGRESP;
DISCONNECT -> DISCONNECT. Anything else is ignored. No keep-alive, sleep, retries, QoS 2,
subscriptions, will, persistence, Receive Maximum or write-buffer limits, and no read hold-off
(the gateway's UDP transport pauses reading 0.2 ms after a wake-up that found few datagrams).

How: one UDP socket read with ``loop.add_reader`` and a ``recvfrom`` loop (up to 256 datagrams
per wake-up); ``address -> {topic id: pre-encoded topic bytes}`` per connected node; upstream
MQTT 5 (or 3.1.1, ``--mqtt-version 4``) encoded by hand: fixed header from a table + topic
bytes + (packet id) + payload, collected in a list and written once per loop iteration
(``loop.call_soon``); QoS 1 in flight as ``packet id -> (address, node PUBACK frame)``. No
Future or Task per message.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import struct
import sys
from typing import Any
from urllib.parse import urlsplit

__all__ = ["main"]

BURST = 256  # datagrams read per wake-up at most
pack_pid = struct.Struct(">H").pack
# MQTT fixed header (type/flags, one-byte Remaining Length) by Remaining Length < 128
FIXED_QOS0 = [bytes((0x30, n)) for n in range(128)]
FIXED_QOS1 = [bytes((0x32, n)) for n in range(128)]
CONNACK, PINGRESP, DISCONNECT = b"\x03\x05\x00", b"\x02\x17", b"\x02\x18"


def varint(n: int) -> bytes:
    """MQTT Variable Byte Integer (Remaining Length) [MQTT 5 §1.5.5]."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


class Forwarder(asyncio.Protocol):
    """The broker connection (asyncio.Protocol) and the UDP side (add_reader) in one object."""

    def __init__(self, version: int) -> None:
        self.props = b"\x00" if version == 5 else b""  # MQTT 5: empty property list per packet
        self.pid_size = 2 + len(self.props)  # packet id + properties, after the topic
        self.loop = asyncio.get_running_loop()
        self.transport: Any = None
        self.sock: socket.socket | None = None
        self.clients: dict[Any, dict[bytes, tuple[bytes, int, bytes, int]]] = {}
        self.topics: dict[bytes, tuple[bytes, tuple[bytes, int, bytes, int]]] = {}
        self.inflight: dict[int, tuple[Any, bytes]] = {}
        self.next_pid = 0
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.buf = b""
        self.connack: asyncio.Future[int] = self.loop.create_future()
        self.done: asyncio.Future[None] = self.loop.create_future()  # signal or broker gone

    # ------------------------------------------------------------------ UDP side

    def on_readable(self) -> None:
        """Drain up to BURST datagrams; the PUBLISH path is inlined."""
        assert self.sock is not None
        recvfrom = self.sock.recvfrom
        clients, inflight, append = self.clients, self.inflight, self.out.append
        props = self.props
        for _ in range(BURST):
            try:
                data, addr = recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # e.g. ICMP port unreachable of an earlier send
                continue
            if len(data) < 2:
                continue
            at = 4 if data[0] == 1 else 2  # after the type byte (3-byte length: 0x01 + 2)
            kind = data[at - 1]
            if kind == 0x0C:  # PUBLISH: flags, topic id, msg id, data
                topics = clients.get(addr)
                if topics is None:
                    continue
                topic = topics.get(data[at + 1 : at + 3])
                qos = data[at] & 0x60
                if topic is None:
                    if qos == 0x20:  # PUBACK rc 0x02 invalid topic id
                        self.reply(b"\x07\x0d" + data[at + 1 : at + 5] + b"\x02", addr)
                    continue
                payload = data[at + 5 :]
                if qos == 0:
                    size = topic[1] + len(payload)
                    fixed = FIXED_QOS0[size] if size < 128 else b"\x30" + varint(size)
                    append(fixed + topic[0] + payload)
                elif qos == 0x20:
                    pid = self.next_pid % 0xFFFF + 1
                    while pid in inflight:
                        pid = pid % 0xFFFF + 1
                    self.next_pid = pid
                    inflight[pid] = (addr, b"\x07\x0d" + data[at + 1 : at + 5] + b"\x00")
                    size = topic[3] + len(payload)
                    fixed = FIXED_QOS1[size] if size < 128 else b"\x32" + varint(size)
                    append(fixed + topic[2] + pack_pid(pid) + props + payload)
            elif kind == 0x04:  # CONNECT: clean session every time
                clients[addr] = {}
                self.reply(CONNACK, addr)
            elif kind == 0x0A:  # REGISTER: topic id, msg id, topic name
                self.register(data, at, addr)
            elif kind == 0x16:
                self.reply(PINGRESP, addr)
            elif kind == 0x18:
                clients.pop(addr, None)
                self.reply(DISCONNECT, addr)
        if self.out and not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def register(self, data: bytes, at: int, addr: Any) -> None:
        """REGACK with the topic name's id; the upstream topic bytes are encoded once per name."""
        topics = self.clients.get(addr)
        if topics is None:
            return
        name = data[at + 4 :]
        known = self.topics.get(name)
        if known is None:
            if len(self.topics) >= 0xFFFF:  # REGACK rc 0x01 congestion: out of topic ids
                self.reply(b"\x07\x0b\x00\x00" + data[at + 2 : at + 4] + b"\x01", addr)
                return
            topic_id = (len(self.topics) + 1).to_bytes(2, "big")
            raw = len(name).to_bytes(2, "big") + name
            qos0 = raw + self.props
            known = (topic_id, (qos0, len(qos0), raw, len(raw) + self.pid_size))
            self.topics[name] = known
        topics[known[0]] = known[1]
        self.reply(b"\x07\x0b" + known[0] + data[at + 2 : at + 4] + b"\x00", addr)

    def reply(self, frame: bytes, addr: Any) -> None:
        """One datagram to a node; a full socket buffer drops it (UDP)."""
        assert self.sock is not None
        try:
            self.sock.sendto(frame, addr)
        except OSError:
            pass

    def flush(self) -> None:
        """One write of everything collected in this loop iteration."""
        self.flush_scheduled = False
        out = self.out
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))
        out.clear()

    # ------------------------------------------------------------------ broker side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish()

    def finish(self) -> None:
        """Stop serving (SIGTERM, SIGINT, or the broker connection closed)."""
        if not self.done.done():
            self.done.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos, end = 0, len(buf)
        inflight, sendto = self.inflight, self.sock.sendto if self.sock else None
        while end - pos >= 2:
            first, size, i = buf[pos], buf[pos + 1], pos + 2
            if size & 0x80:  # Remaining Length of more than one byte
                size, shift = size & 0x7F, 7
                while i < end and buf[i] & 0x80:
                    size |= (buf[i] & 0x7F) << shift
                    shift, i = shift + 7, i + 1
                if i >= end:
                    break
                size |= buf[i] << shift
                i += 1
            if end - i < size:
                break
            if first == 0x40:  # PUBACK: pid (2), MQTT 5 maybe reason code + properties
                entry = inflight.pop((buf[i] << 8) | buf[i + 1], None)
                if entry is not None and sendto is not None:
                    try:
                        sendto(entry[1], entry[0])
                    except OSError:
                        pass
            elif first == 0x20 and not self.connack.done():  # CONNACK: flags, reason code
                self.connack.set_result(buf[i + 1])
            elif first == 0xE0 and self.transport is not None:  # DISCONNECT from the broker
                self.transport.close()
            pos = i + size
        self.buf = buf[pos:]


async def serve(udp: tuple[str, int], broker: tuple[str, int], version: int) -> None:
    """Connect upstream, then open the UDP port; run until SIGTERM/SIGINT or the broker leaves."""
    loop = asyncio.get_running_loop()
    fwd = Forwarder(version)
    await loop.create_connection(lambda: fwd, *broker)
    client_id = f"minimal-forwarder-{os.getpid()}".encode()
    body = b"\x00\x04MQTT" + bytes((version, 0x02, 0, 0)) + fwd.props  # clean, keep-alive 0
    body += len(client_id).to_bytes(2, "big") + client_id
    fwd.transport.write(b"\x10" + varint(len(body)) + body)
    rc = await asyncio.wait_for(fwd.connack, 10)
    if rc != 0:
        raise SystemExit(f"broker refused CONNECT: reason code {rc}")
    sock = socket.socket(socket.AF_INET6 if ":" in udp[0] else socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # as the gateway's default
    sock.bind(udp)
    sock.setblocking(False)
    fwd.sock = sock
    loop.add_reader(sock.fileno(), fwd.on_readable)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, fwd.finish)
    print(f"minimal forwarder: udp {udp[0]}:{udp[1]} -> {broker[0]}:{broker[1]}", flush=True)
    await fwd.done
    loop.remove_reader(sock.fileno())
    sock.close()
    if not fwd.transport.is_closing():
        fwd.flush()
        fwd.transport.write(b"\xe0\x00")  # DISCONNECT
        fwd.transport.close()


def main(argv: list[str] | None = None) -> int:
    """``run --udp HOST:PORT --broker mqtt://HOST:PORT [--mqtt-version 5|4]``; rest ignored."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench.minimal_forwarder")
    parser.add_argument("command", choices=["run"])
    parser.add_argument("--udp", default="127.0.0.1:1884", help="HOST:PORT to listen on")
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://HOST:PORT")
    parser.add_argument("--mqtt-version", type=int, choices=(4, 5), default=5)
    args, _ignored = parser.parse_known_args(argv)
    host, _, port = args.udp.rpartition(":")
    url = urlsplit(args.broker)
    import uvloop

    uvloop.run(
        serve(
            (host.strip("[]"), int(port)),
            (url.hostname or "127.0.0.1", url.port or 1883),
            args.mqtt_version,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

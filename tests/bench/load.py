"""Our own MQTT-SN load generator: simulated nodes in worker processes, one UDP socket each.

``LoadPool`` (in the benchmark's main process) starts ``procs`` node workers and one broker-side
process and drives them by commands over pipes. Every worker runs a uvloop event loop with
thousands of connected UDP sockets (one per node, so the gateway sees one address per node)
and answers a command when its part is done. Frames are built with our codec
(``gateway.protocol.encode``); the hot paths (QoS 0/1 PUBLISH out, PUBACK and PUBLISH in) patch
prepared bytes and parse the few bytes they need.

Flow control so that the generator is never the bottleneck and never wastes the CPU the
gateway needs (the machine has 2 cores): the workers and the broker side share a small array of
counters (``multiprocessing.RawArray``). Saturating QoS 0 uplink keeps at most ``window``
messages between "sent by the nodes" and "received at the broker"; downlink keeps at most
``window`` deliveries between "published at the broker" and "received by the nodes". Paced
rows send at a fixed rate instead, open loop, and count the loss.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import resource
import socket
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from typing import Any

from gateway.protocol import (
    Connect,
    Disconnect,
    MsgType,
    Pingreq,
    Publish,
    QoS,
    Register,
    ReturnCode,
    Subscribe,
    decode,
    encode,
)
from gateway.protocol.messages import Message
from tests.bench.mqtt_side import PAYLOAD, MqttClient, encode_publish

__all__ = ["LoadPool", "client_id", "percentiles_ms", "split_evenly"]

now_ns = time.monotonic_ns

# Shared counters: the broker side's, then four per node worker.
BROKER_RECEIVED, BROKER_PUBLISHED = 0, 1
_WORKER_BASE, _WORKER_STRIDE = 8, 4
SENT, DELIVERED, ACKED = 0, 1, 2
_MAX_WORKERS = 32

_PUBACK, _PUBLISH, _REGISTER, _PINGREQ = (
    MsgType.PUBACK.value,
    MsgType.PUBLISH.value,
    MsgType.REGISTER.value,
    MsgType.PINGREQ.value,
)
_PINGRESP_FRAME = b"\x02\x17"


def client_id(index: int, prefix: str = "bench-") -> str:
    """Zero-padded ids: no id is a prefix of another (Paho matches by prefix)."""
    return f"{prefix}{index:05d}"


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` integers differing by at most one."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def percentiles_ms(samples_ns: Sequence[int]) -> dict[str, float] | None:
    """p50/p90/p99/max/mean of nanosecond samples, in milliseconds."""
    n = len(samples_ns)
    if n == 0:
        return None
    s = sorted(samples_ns)

    def pct(p: float) -> float:
        return round(s[min(n - 1, int(p / 100.0 * n))] / 1e6, 3)

    return {
        "n": n,
        "p50": pct(50),
        "p90": pct(90),
        "p99": pct(99),
        "max": round(s[-1] / 1e6, 3),
        "mean": round(sum(s) / n / 1e6, 3),
    }


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---------------------------------------------------------------------------------------------
# Worker side: nodes


class Node(asyncio.DatagramProtocol):
    """One simulated MQTT-SN node on its own connected UDP socket."""

    def __init__(self, worker: NodeWorker, index: int) -> None:
        self.worker = worker
        self.index = index
        self.client_id = client_id(index)
        self.transport: asyncio.DatagramTransport | None = None
        self.expect = -1  # MsgType awaited by ``request``
        self.waiter: asyncio.Future[Message] | None = None
        self.msg_id = 0
        self.topic_id = 0
        self.pub_prefix = b""
        self.seq = 0
        self.inflight: dict[int, int] = {}  # QoS 1 uplink: msg id -> send ns
        self.received = 0  # downlink messages of this run
        self.last_seq = -1
        self.connected = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        sock = transport.get_extra_info("socket")
        rcvbuf = self.worker.rcvbuf
        try:  # root may exceed net.core.rmem_max
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUFFORCE, rcvbuf)  # type: ignore[attr-defined]
        except (OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)

    def error_received(self, exc: Exception) -> None:
        self.worker.errors["socket"] = self.worker.errors.get("socket", 0) + 1

    def next_msg_id(self) -> int:
        """A message id not in flight."""
        while True:
            self.msg_id = self.msg_id % 0xFFFF + 1
            if self.msg_id not in self.inflight:
                return self.msg_id

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) < 2:
            return
        at = 4 if data[0] == 1 else 2
        kind = data[at - 1]
        if kind == _PUBACK:
            self.worker.on_puback(self, (data[at + 2] << 8) | data[at + 3], data[at + 4])
        elif kind == _PUBLISH:
            if data[at] & 0x60 == 0x20:  # QoS 1: acknowledge at once [§6.8]
                assert self.transport is not None
                self.transport.sendto(b"\x07\x0d" + data[at + 1 : at + 5] + b"\x00")
            self.worker.on_delivery(self, data, at + 5)
        elif kind == _REGISTER:  # the gateway names a topic before a PUBLISH [§6.10]
            assert self.transport is not None
            self.transport.sendto(b"\x07\x0b" + data[at : at + 4] + b"\x00")
        elif kind == _PINGREQ:
            assert self.transport is not None
            self.transport.sendto(_PINGRESP_FRAME)
        else:
            try:
                msg = decode(data)
            except Exception:
                self.worker.errors["bad_frame"] = self.worker.errors.get("bad_frame", 0) + 1
                return
            if kind == MsgType.DISCONNECT and self.expect != kind and self.connected:
                self.worker.errors["gateway_disconnect"] = (
                    self.worker.errors.get("gateway_disconnect", 0) + 1
                )
                self.connected = False
            waiter = self.waiter
            if waiter is not None and kind == self.expect and not waiter.done():
                waiter.set_result(msg)

    async def request(self, frame: bytes, expect: int, timeout: float, retries: int) -> Any:
        """Send ``frame`` and wait for a reply of type ``expect``; None after the retries."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        for _ in range(retries + 1):
            self.waiter = loop.create_future()
            self.expect = expect
            self.transport.sendto(frame)
            try:
                return await asyncio.wait_for(self.waiter, timeout)
            except TimeoutError:
                self.worker.errors["request_timeout"] = (
                    self.worker.errors.get("request_timeout", 0) + 1
                )
            finally:
                self.expect = -1
                self.waiter = None
        return None


class NodeWorker:
    """A slice of the nodes in one process, driven by commands."""

    def __init__(self, slot: int, counters: Any) -> None:
        self.slot = _WORKER_BASE + _WORKER_STRIDE * slot
        self.counters = counters
        self.nworkers = 1
        self.nodes: list[Node] = []
        self.rcvbuf = 1 << 20
        self.run_id = 0
        self.errors: dict[str, int] = {}
        self.pad = b""
        # uplink
        self.sent = 0
        self.acked = 0
        self.nacked = 0
        self.ack_rtt = array("q")
        self.stopping = False
        self.t_last_send = 0
        self.budget = 1 << 62
        self.deadline = 1 << 62
        self.drained: asyncio.Event | None = None
        self.run_payload = b""
        # downlink
        self.delivered = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.foreign = 0
        self.last_rx = 0
        self.down_lat = array("q")

    # ------------------------------------------------------------------ setup commands

    async def cmd_open(
        self,
        host: str,
        port: int,
        indexes: list[int],
        rcvbuf: int,
        nworkers: int,
        run_id: int,
        payload_size: int,
    ) -> dict[str, Any]:
        """Create one connected UDP socket per node (closing those of an earlier run)."""
        await self.cmd_close()
        self.rcvbuf = rcvbuf
        self.nworkers = nworkers
        self.run_id = run_id
        self.pad = bytes(payload_size - PAYLOAD.size)
        self.errors = {}
        loop = asyncio.get_running_loop()
        for index in indexes:
            _, node = await loop.create_datagram_endpoint(
                functools.partial(Node, self, index), remote_addr=(host, port)
            )
            self.nodes.append(node)
        self._reset_run()
        return {"opened": len(self.nodes)}

    def _reset_run(self) -> None:
        self.sent = self.acked = self.nacked = 0
        self.ack_rtt = array("q")
        self.stopping = False
        self.t_last_send = 0
        self.delivered = self.duplicates = self.out_of_order = self.foreign = 0
        self.last_rx = 0
        self.down_lat = array("q")
        for node in self.nodes:
            node.received = 0
            node.last_seq = -1
            node.inflight.clear()
        c, base = self.counters, self.slot
        c[base + SENT] = c[base + DELIVERED] = c[base + ACKED] = 0

    async def cmd_reset(self, run_id: int) -> dict[str, Any]:
        """Start a new measurement on the same nodes."""
        self.run_id = run_id
        self._reset_run()
        return {}

    async def cmd_close(self) -> dict[str, Any]:
        """Close every node socket (no DISCONNECT: the gateway is stopped after each run)."""
        for node in self.nodes:
            if node.transport is not None:
                node.transport.close()
        self.nodes = []
        await asyncio.sleep(0)
        return {"errors": self.errors}

    async def _each(
        self, fn: Callable[[Node], Any], concurrency: int, nodes: list[Node] | None = None
    ) -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(node: Node) -> None:
            async with sem:
                await fn(node)

        await asyncio.gather(*(one(n) for n in (self.nodes if nodes is None else nodes)))

    async def cmd_connect(
        self, t0: int, concurrency: int, keepalive: int, timeout: float, retries: int
    ) -> dict[str, Any]:
        """CONNECT every node (clean session); wait for the CONNACKs."""
        await _sleep_until(t0)
        lat = array("q")
        failures: dict[str, int] = {}

        async def one(node: Node) -> None:
            t = now_ns()
            frame = encode(Connect(node.client_id, keepalive, clean_session=True))
            reply = await node.request(frame, MsgType.CONNACK, timeout, retries)
            if reply is not None and reply.return_code == ReturnCode.ACCEPTED:
                node.connected = True
                lat.append(now_ns() - t)
            else:
                key = "timeout" if reply is None else f"rc={reply.return_code.name}"
                failures[key] = failures.get(key, 0) + 1

        await self._each(one, concurrency)
        return {
            "connected": len(lat),
            "failures": failures,
            "t_done": now_ns(),
            "lat": lat.tobytes(),
        }

    async def cmd_register(
        self, topic: str, qos: int, payload_size: int, concurrency: int, timeout: float
    ) -> dict[str, Any]:
        """REGISTER ``topic`` (``{cid}`` replaced) per node and prepare its PUBLISH prefix."""
        ok = 0

        async def one(node: Node) -> None:
            nonlocal ok
            frame = encode(Register(0, node.next_msg_id(), topic.format(cid=node.client_id)))
            reply = await node.request(frame, MsgType.REGACK, timeout, 2)
            if reply is None or reply.return_code != ReturnCode.ACCEPTED:
                return
            node.topic_id = reply.topic_id
            full = encode(
                Publish(reply.topic_id, bytes(payload_size), QoS(qos), msg_id=1 if qos else 0)
            )
            node.pub_prefix = full[: len(full) - payload_size - 2]
            ok += 1

        await self._each(one, concurrency, [n for n in self.nodes if n.connected])
        return {"registered": ok}

    async def cmd_subscribe(
        self, topic: str, qos: int, concurrency: int, timeout: float
    ) -> dict[str, Any]:
        """SUBSCRIBE each node to ``topic`` (``{cid}`` replaced)."""
        ok = 0

        async def one(node: Node) -> None:
            nonlocal ok
            frame = encode(
                Subscribe(
                    node.next_msg_id(), topic_name=topic.format(cid=node.client_id), qos=QoS(qos)
                )
            )
            reply = await node.request(frame, MsgType.SUBACK, timeout, 2)
            if reply is not None and reply.return_code == ReturnCode.ACCEPTED:
                ok += 1

        await self._each(one, concurrency, [n for n in self.nodes if n.connected])
        return {"subscribed": ok}

    async def cmd_sleep(self, duration: int, concurrency: int, timeout: float) -> dict[str, Any]:
        """DISCONNECT with a Duration: every node goes to sleep [§6.14]."""
        ok = 0

        async def one(node: Node) -> None:
            nonlocal ok
            frame = encode(Disconnect(duration))
            if await node.request(frame, MsgType.DISCONNECT, timeout, 2) is not None:
                ok += 1

        await self._each(one, concurrency, [n for n in self.nodes if n.connected])
        return {"asleep": ok}

    async def cmd_wake(self, t0: int, concurrency: int, timeout: float) -> dict[str, Any]:
        """PINGREQ with ClientId: the gateway sends what it buffered, then PINGRESP [§6.14]."""
        await _sleep_until(t0)
        woke = 0

        async def one(node: Node) -> None:
            nonlocal woke
            frame = encode(Pingreq(node.client_id))
            if await node.request(frame, MsgType.PINGRESP, timeout, 1) is not None:
                woke += 1

        await self._each(one, concurrency)
        return {"woke": woke, "t_done": now_ns()}

    async def cmd_status(self) -> dict[str, Any]:
        """Counters so far."""
        return {"delivered": self.delivered, "sent": self.sent, "errors": self.errors}

    async def cmd_collect(self) -> dict[str, Any]:
        """Downlink results: counts, per-node histogram and latency samples."""
        histogram: dict[int, int] = {}
        for node in self.nodes:
            histogram[node.received] = histogram.get(node.received, 0) + 1
        return {
            "delivered": self.delivered,
            "duplicates": self.duplicates,
            "out_of_order": self.out_of_order,
            "foreign": self.foreign,
            "last_rx": self.last_rx,
            "per_node": histogram,
            "lat": self.down_lat.tobytes(),
            "errors": self.errors,
        }

    # ------------------------------------------------------------------ uplink

    def _inflight_total(self) -> int:
        c = self.counters
        sent = 0
        for w in range(self.nworkers):
            sent += c[_WORKER_BASE + _WORKER_STRIDE * w + SENT]
        return int(sent - c[BROKER_RECEIVED])

    async def cmd_uplink(
        self,
        qos: int,
        t_start: int,
        duration: float,
        rate: float,
        window: int,
        batch: int,
        per_node_window: int,
        drain_timeout: float,
    ) -> dict[str, Any]:
        """Publish from every registered node until ``duration`` ends; reply when settled."""
        live = [n for n in self.nodes if n.connected and n.topic_id]
        await _sleep_until(t_start)
        t0 = now_ns()
        self.deadline = t0 + int(duration * 1e9)
        if live:
            if qos == 0:
                await self._run_qos0(live, t0, rate, window, batch)
            else:
                await self._run_qos1(live, per_node_window, drain_timeout)
        return {
            "sent": self.sent,
            "acked": self.acked,
            "nacked": self.nacked,
            "lost_acks": sum(len(n.inflight) for n in live),
            "t_start": t0,
            "t_end": self.t_last_send or now_ns(),
            "ack_rtt": self.ack_rtt.tobytes(),
            "errors": self.errors,
        }

    async def _run_qos0(
        self, live: list[Node], t0: int, rate: float, window: int, batch: int
    ) -> None:
        pack, run_id, pad = PAYLOAD.pack, self.run_id, self.pad
        counters, slot = self.counters, self.slot + SENT
        n, i, sent = len(live), 0, 0
        zero_id = b"\x00\x00"  # a QoS 0 PUBLISH carries MsgId 0x0000 [§5.4.12]
        sendtos = [n.transport.sendto for n in live]  # type: ignore[union-attr]
        prefixes = [n.pub_prefix for n in live]
        seqs = [0] * n
        indexes = [n.index for n in live]
        deadline = self.deadline
        while True:
            t = now_ns()
            if t >= deadline:
                break
            k = batch
            if rate:
                allowed = int((t - t0) * rate / 1e9) - sent
                if allowed <= 0:
                    # at least 1 ms: uvloop rounds shorter timers to 0 (a busy spin)
                    due = t0 + (sent + 1) * 1e9 / rate
                    await asyncio.sleep(max(0.001, (due - t) / 1e9))
                    continue
                k = min(k, allowed)
            elif window:
                room = window - self._inflight_total()
                if room <= 0:
                    await asyncio.sleep(0.001)
                    continue
                k = min(k, room)
            for _ in range(k):
                seq = seqs[i]
                sendtos[i](prefixes[i] + zero_id + pack(run_id, now_ns(), indexes[i], seq) + pad)
                seqs[i] = seq + 1
                i = i + 1 if i + 1 < n else 0
            sent += k
            counters[slot] = sent
            await asyncio.sleep(0)
        self.sent = sent
        self.t_last_send = now_ns()

    async def _run_qos1(self, live: list[Node], per_node_window: int, drain_timeout: float) -> None:
        self.drained = asyncio.Event()
        for node in live:
            for _ in range(per_node_window):
                self._send_qos1(node)
        stop_at = self.deadline + int(drain_timeout * 1e9)
        while not self.drained.is_set() and now_ns() < stop_at:
            if now_ns() >= self.deadline:
                self.stopping = True
                if not any(n.inflight for n in live):
                    break
            try:
                await asyncio.wait_for(self.drained.wait(), 0.05)
            except TimeoutError:
                pass

    def _send_qos1(self, node: Node) -> bool:
        if self.stopping:
            return False
        t = now_ns()
        if t >= self.deadline:
            self.stopping = True
            return False
        msg_id = node.next_msg_id()
        node.inflight[msg_id] = t
        self.t_last_send = t
        assert node.transport is not None
        node.transport.sendto(
            node.pub_prefix
            + msg_id.to_bytes(2, "big")
            + PAYLOAD.pack(self.run_id, t, node.index, node.seq)
            + self.pad
        )
        node.seq += 1
        self.sent += 1
        self.counters[self.slot + SENT] = self.sent
        return True

    def on_puback(self, node: Node, msg_id: int, rc: int) -> None:
        """A PUBACK for a QoS 1 PUBLISH of ours: record the round trip, send the next."""
        t = node.inflight.pop(msg_id, None)
        if t is None:
            self.errors["unexpected_puback"] = self.errors.get("unexpected_puback", 0) + 1
            return
        if rc == 0:
            self.acked += 1
            self.ack_rtt.append(now_ns() - t)
        else:
            self.nacked += 1
        # stopping: done when nothing is in flight any more
        if (
            not self._send_qos1(node)
            and self.drained is not None
            and not node.inflight
            and not any(n.inflight for n in self.nodes)
        ):
            self.drained.set()

    # ------------------------------------------------------------------ downlink

    def on_delivery(self, node: Node, data: bytes, at: int) -> None:
        """A PUBLISH from the gateway: count it once per node and sequence number."""
        if len(data) - at < PAYLOAD.size:
            self.foreign += 1
            return
        run_id, sent_ns, _index, seq = PAYLOAD.unpack_from(data, at)
        if run_id != self.run_id:
            self.foreign += 1
            return
        last = node.last_seq
        if seq <= last:
            if seq == last:
                self.duplicates += 1
                return
            self.out_of_order += 1
        else:
            node.last_seq = seq
        t = now_ns()
        node.received += 1
        self.delivered += 1
        self.counters[self.slot + DELIVERED] = self.delivered
        self.down_lat.append(t - sent_ns)
        self.last_rx = t


async def _sleep_until(t_ns: int) -> None:
    delay = (t_ns - now_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)


# ---------------------------------------------------------------------------------------------
# Broker side process


class BrokerSide:
    """The MQTT client on the broker, in its own process: counts uplink, publishes downlink."""

    def __init__(self, counters: Any) -> None:
        self.counters = counters
        self.client = MqttClient(f"bench-broker-side-{os.getpid()}")
        self.nworkers = 1

    async def cmd_connect(self, host: str, port: int, uplink_filter: str) -> dict[str, Any]:
        """Connect and subscribe to everything the nodes publish."""
        await self.client.connect(host, port)
        counters = self.counters

        def on_count(received: int) -> None:
            counters[BROKER_RECEIVED] = received

        self.client.on_count = on_count
        granted = await self.client.subscribe(uplink_filter, 0)
        return {"granted": granted}

    async def cmd_reset(self, run_id: int, nodes: int, nworkers: int) -> dict[str, Any]:
        """Start counting a new run."""
        self.client.reset(run_id, nodes)
        self.counters[BROKER_RECEIVED] = 0
        self.counters[BROKER_PUBLISHED] = 0
        self.nworkers = nworkers
        return {}

    async def cmd_status(self) -> dict[str, Any]:
        """Uplink counters so far."""
        return {"received": self.client.received}

    async def cmd_collect(self) -> dict[str, Any]:
        """Uplink results."""
        c = self.client
        return {
            "received": c.received,
            "duplicates": c.duplicates,
            "out_of_order": c.out_of_order,
            "foreign": c.foreign,
            "last_rx": c.last_rx,
            "lat": c.latency.tobytes(),
        }

    def _delivered(self) -> int:
        c = self.counters
        return sum(c[_WORKER_BASE + _WORKER_STRIDE * w + DELIVERED] for w in range(self.nworkers))

    async def cmd_publish_fanout(
        self,
        topic: str,
        run_id: int,
        payload_size: int,
        duration: float,
        fanout: int,
        window: int,
        batch: int,
    ) -> dict[str, Any]:
        """QoS 0 to one topic for ``duration``, at most ``window`` deliveries outstanding."""
        pad = bytes(payload_size - PAYLOAD.size)
        prefix_topic = topic
        published = 0
        t0 = now_ns()
        deadline = t0 + int(duration * 1e9)
        while now_ns() < deadline:
            room = (window - (published * fanout - self._delivered())) // max(fanout, 1)
            if room <= 0:
                await asyncio.sleep(0.001)
                continue
            k = min(room, batch)
            packets = [
                encode_publish(prefix_topic, PAYLOAD.pack(run_id, now_ns(), 0, published + j) + pad)
                for j in range(k)
            ]
            self.client.publish_qos0(packets)
            published += k
            self.counters[BROKER_PUBLISHED] = published
            await asyncio.sleep(0)
        return {"published": published, "t_start": t0, "t_end": now_ns()}

    async def cmd_publish_each(
        self,
        topic: str,
        indexes: list[int],
        per_topic: int,
        run_id: int,
        payload_size: int,
        window: int,
        timeout: float,
    ) -> dict[str, Any]:
        """``per_topic`` QoS 1 messages to each node's topic (``{cid}``), acked by the broker."""
        pad = bytes(payload_size - PAYLOAD.size)
        t0 = now_ns()
        published = 0
        for seq in range(per_topic):
            for index in indexes:
                payload = PAYLOAD.pack(run_id, now_ns(), index, seq) + pad
                await self.client.publish_qos1(topic.format(cid=client_id(index)), payload, window)
                published += 1
        acked = await self.client.wait_acked(timeout)
        self.counters[BROKER_PUBLISHED] = published
        return {"published": published, "all_acked": acked, "t_start": t0, "t_end": now_ns()}


# ---------------------------------------------------------------------------------------------
# Process plumbing


async def _serve(handler: Any, conn: mpc.Connection) -> None:
    """Run commands from the pipe one after another; each reply carries our CPU seconds."""
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    # A blocking reader thread rather than loop.add_reader(): that would make the pipe
    # non-blocking, and large replies would then fail.
    def read() -> None:
        while True:
            try:
                cmd = conn.recv()
            except (EOFError, OSError):
                cmd = {"cmd": "exit"}
            loop.call_soon_threadsafe(commands.put_nowait, cmd)
            if cmd["cmd"] == "exit":
                return

    threading.Thread(target=read, daemon=True).start()
    while True:
        cmd = await commands.get()
        name = cmd.pop("cmd")
        if name == "exit":
            return
        try:
            reply = await getattr(handler, "cmd_" + name)(**cmd)
        except Exception as exc:  # report, keep serving
            reply = {"error": f"{name}: {exc!r}"}
        reply["cpu_s"] = _own_cpu_s()
        try:
            conn.send(reply)
        except OSError:
            return


def _entry(kind: str, slot: int, counters: Any, conn: mpc.Connection) -> None:
    _raise_nofile()
    handler = NodeWorker(slot, counters) if kind == "nodes" else BrokerSide(counters)
    try:
        import uvloop

        uvloop.run(_serve(handler, conn))
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(_serve(handler, conn))


class LoadPool:
    """Node worker processes plus the broker-side process, kept for the whole benchmark."""

    def __init__(self, procs: int) -> None:
        if not 1 <= procs <= _MAX_WORKERS:
            raise ValueError(f"procs must be 1..{_MAX_WORKERS}")
        self.nworkers = procs
        self._start()

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        self.counters = ctx.RawArray("q", _WORKER_BASE + _WORKER_STRIDE * _MAX_WORKERS)
        self.procs: list[Any] = []
        self.conns: list[mpc.Connection] = []
        for slot in range(self.nworkers):
            self._spawn(ctx, "nodes", slot)
        self._spawn(ctx, "broker", 0)
        self.broker_conn = self.conns.pop()
        self.active = self.nworkers  # workers with nodes in the current run

    def restart(self) -> None:
        """Fresh processes after a failed run (a late reply must not answer the next command)."""
        self.close()
        self._start()

    def _spawn(self, ctx: Any, kind: str, slot: int) -> None:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_entry, args=(kind, slot, self.counters, child), daemon=True)
        proc.start()
        self.procs.append(proc)
        self.conns.append(parent)

    def workers(
        self, cmd: str | list[dict[str, Any]], wait: float = 120.0, **kwargs: Any
    ) -> list[dict[str, Any]]:
        """Send one command to every active worker (or a list, one each); wait for all replies."""
        conns = self.conns[: self.active]
        cmds = [{"cmd": cmd, **kwargs}] * len(conns) if isinstance(cmd, str) else cmd
        for conn, c in zip(conns, cmds, strict=True):
            conn.send(c)
        return self._gather(conns, cmds[0]["cmd"], wait)

    def broker(self, cmd: str, wait: float = 120.0, **kwargs: Any) -> dict[str, Any]:
        """Send one command to the broker-side process and wait (``wait`` s) for its reply."""
        self.broker_conn.send({"cmd": cmd, **kwargs})
        return self._gather([self.broker_conn], cmd, wait)[0]

    @staticmethod
    def _gather(conns: list[mpc.Connection], name: str, timeout: float) -> list[dict[str, Any]]:
        replies: list[dict[str, Any] | None] = [None] * len(conns)
        pending = dict(enumerate(conns))
        deadline = time.monotonic() + timeout
        while pending:
            ready = mpc.wait(list(pending.values()), max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError(f"load worker(s) did not answer {name!r} within {timeout:.0f} s")
            for i, conn in list(pending.items()):
                if conn in ready:
                    try:
                        reply = conn.recv()
                    except EOFError:
                        raise RuntimeError("a load worker process died") from None
                    if "error" in reply:
                        raise RuntimeError(f"load worker failed: {reply['error']}")
                    replies[i] = reply
                    del pending[i]
        return [r for r in replies if r is not None]

    def worker_cpu_s(self) -> float:
        """CPU seconds used so far by every worker and the broker side (from a status round)."""
        total = sum(float(r["cpu_s"]) for r in self.workers("status"))
        return total + float(self.broker("status")["cpu_s"])

    def sent_total(self) -> int:
        """Messages the nodes sent in this run (shared counters)."""
        c = self.counters
        return sum(c[_WORKER_BASE + _WORKER_STRIDE * w + SENT] for w in range(self.nworkers))

    def delivered_total(self) -> int:
        """Downlink messages the nodes received in this run (shared counters)."""
        c = self.counters
        return sum(c[_WORKER_BASE + _WORKER_STRIDE * w + DELIVERED] for w in range(self.nworkers))

    def broker_received(self) -> int:
        """Uplink messages the broker side received in this run (shared counter)."""
        return int(self.counters[BROKER_RECEIVED])

    def close(self) -> None:
        """Stop every process."""
        for conn in [*self.conns, self.broker_conn]:
            try:
                conn.send({"cmd": "exit"})
            except OSError:
                pass
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)

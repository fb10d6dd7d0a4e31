"""The measurements behind every row of issue 7, each against a fresh gateway subprocess.

Every ``row_*`` function takes a ``Bench`` and returns a flat dict of figures; ``ROWS`` names
the checks drawn from them (the target, Paho's figure, which way is better). Each measurement
is bounded in time: fixed durations, settle timeouts and command timeouts.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.bench.gateway_proc import (
    GatewayProcess,
    RssSampler,
    host_busy_cpu_s,
    proc_cpu_s,
    udp_drops,
)
from tests.bench.load import LoadPool, percentiles_ms, split_evenly
from tests.mosquitto import MosquittoBroker

__all__ = ["ROWS", "Bench", "BenchOptions", "Check", "Row"]

now_ns = time.monotonic_ns

UPLINK_TOPIC = "bench/up/{cid}"
UPLINK_FILTER = "bench/up/#"
FANOUT_TOPIC = "bench/down/all"
SLEEP_TOPIC = "bench/sleep/{cid}"


@dataclass
class BenchOptions:
    """What the command line chose."""

    quick: bool = False
    repeat: int = 3
    clients: int = 100
    procs: int = 2
    payload_size: int = 32
    yardstick: Path | None = None  # the shared mqttsn_load.py; run.py fills the default in
    gateway_log_level: str = "WARNING"
    gateway_source: Path | None = None
    gateway_state: str = "file"
    gateway_cmd: str = "gateway"  # or "minimal": the minimal forwarder (gateway_proc.PROGRAMS)
    verbose: bool = True
    durations: dict[str, float] = field(default_factory=dict)

    def duration(self, name: str) -> float:
        """Seconds of load for a kind of measurement (shorter with --quick)."""
        default = {"uplink": 5.0, "fanout": 5.0, "paced": 3.0, "transparent": 5.0, "sweep": 3.0}
        quick = {"uplink": 1.5, "fanout": 1.5, "paced": 1.0, "transparent": 1.5, "sweep": 1.0}
        return self.durations.get(name, (quick if self.quick else default)[name])


class Bench:
    """Mosquitto, the load pool and the helpers every measurement shares."""

    def __init__(self, options: BenchOptions, broker: MosquittoBroker, pool: LoadPool) -> None:
        self.options = options
        self.broker = broker
        self.pool = pool

    def log(self, text: str) -> None:
        """A progress line on stderr."""
        if self.options.verbose:
            print(f"[bench] {text}", file=sys.stderr, flush=True)

    def gateway(self, mode: str = "aggregating") -> GatewayProcess:
        """A fresh gateway (use as a context manager)."""
        return GatewayProcess(
            self.broker.url,
            mode,
            self.options.gateway_log_level,
            self.options.gateway_source,
            self.options.gateway_state,
            self.options.gateway_cmd,
        )

    # ------------------------------------------------------------------ node fleet

    def open_nodes(self, gw: GatewayProcess, count: int, rcvbuf: int = 4 << 20) -> int:
        """Open ``count`` node sockets spread over the workers; reset every counter."""
        pool = self.pool
        pool.active = max(1, min(pool.nworkers, count))
        run_id = random.getrandbits(32)
        self.run_id = run_id
        pool.broker("reset", run_id=run_id, nodes=count, nworkers=pool.active)
        first = 0
        cmds = []
        for share in split_evenly(count, pool.active):
            cmds.append(
                {
                    "cmd": "open",
                    "host": gw.host,
                    "port": gw.port,
                    "indexes": list(range(first, first + share)),
                    "rcvbuf": rcvbuf,
                    "nworkers": pool.active,
                    "run_id": run_id,
                    "payload_size": self.options.payload_size,
                }
            )
            first += share
        pool.workers(cmds)
        return count

    def new_run(self, count: int) -> None:
        """A new run id on the same nodes (paced ladder steps)."""
        self.run_id = random.getrandbits(32)
        self.pool.broker("reset", run_id=self.run_id, nodes=count, nworkers=self.pool.active)
        self.pool.workers("reset", run_id=self.run_id)

    def close_nodes(self) -> None:
        """Close every node socket."""
        self.pool.workers("close")

    def connect(self, gw: GatewayProcess, count: int, concurrency: int = 250) -> dict[str, Any]:
        """CONNECT every open node; time from the first CONNECT to the last CONNACK."""
        cpu0 = gw.cpu_s()
        t0 = now_ns() + 50_000_000
        replies = self.pool.workers(
            "connect", t0=t0, concurrency=concurrency, keepalive=600, timeout=5.0, retries=2
        )
        cpu1 = gw.cpu_s()
        lat = array("q")
        failures: dict[str, int] = {}
        for r in replies:
            lat.frombytes(r["lat"])
            for k, v in r["failures"].items():
                failures[k] = failures.get(k, 0) + v
        connected = sum(r["connected"] for r in replies)
        seconds = (max(r["t_done"] for r in replies) - t0) / 1e9
        self.log(f"  connected {connected}/{count} in {seconds:.3f} s")
        return {
            "connected": connected,
            "connect_failures": failures,
            "connect_failures_total": sum(failures.values()),
            "connect_time_s": round(seconds, 3),
            "connect_latency_ms": percentiles_ms(lat),
            "connect_gateway_cpu_s": round(cpu1 - cpu0, 3),
        }

    def wait_settled(
        self, current: Callable[[], int], target: int, settle: float = 1.0, limit: float = 30.0
    ) -> int:
        """Wait until ``current()`` reaches ``target`` or stops moving for ``settle`` seconds."""
        last, t_last = current(), time.monotonic()
        deadline = time.monotonic() + limit
        while last < target and time.monotonic() < deadline:
            time.sleep(0.02)
            value = current()
            if value != last:
                last, t_last = value, time.monotonic()
            elif time.monotonic() - t_last >= settle:
                break
        return last

    def wait_gateway_idle(
        self, gw: GatewayProcess, quiet: float = 0.5, limit: float = 60.0
    ) -> float:
        """Wait until the gateway used < 2 % of a CPU over ``quiet`` seconds; returns the wait."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit:
            c0 = gw.cpu_s()
            time.sleep(quiet)
            if gw.cpu_s() - c0 <= 0.02 * quiet + 1e-9:
                break
        return time.monotonic() - t0

    def cpu_mark(self, gw: GatewayProcess) -> tuple[float, ...]:
        """CPU seconds so far: gateway, load generator, Mosquitto, whole host."""
        broker = proc_cpu_s(self.broker.pid) if self.broker.pid else 0.0
        return (gw.cpu_s(), self.pool.worker_cpu_s(), broker, host_busy_cpu_s())

    @staticmethod
    def cpu_figures(before: tuple[float, ...], after: tuple[float, ...]) -> dict[str, float]:
        """Who used the CPU over a window; ``other_cpu_s`` is anything else on the machine."""
        gw, gen, broker, host = (round(b - a, 3) for a, b in zip(before, after, strict=True))
        return {
            "gateway_cpu_s": gw,
            "generator_cpu_s": gen,
            "broker_cpu_s": broker,
            "host_busy_cpu_s": host,
            "other_cpu_s": round(host - gw - gen - broker, 3),
        }

    # ------------------------------------------------------------------ uplink

    def uplink(
        self,
        gw: GatewayProcess,
        nodes: int,
        qos: int,
        duration: float,
        rate: float = 0.0,
        window: int = 4000,
        per_node_window: int = 1,
        prepared: bool = False,
    ) -> dict[str, Any]:
        """One uplink measurement: connect + register (unless ``prepared``), publish, settle."""
        pool = self.pool
        out: dict[str, Any] = {"nodes": nodes, "qos": qos}
        if not prepared:
            self.open_nodes(gw, nodes)
            out.update(self.connect(gw, nodes))
            regs = pool.workers(
                "register",
                topic=UPLINK_TOPIC,
                qos=qos,
                payload_size=self.options.payload_size,
                concurrency=250,
                timeout=5.0,
            )
            out["registered"] = sum(r["registered"] for r in regs)
        mark0 = self.cpu_mark(gw)
        t_start = now_ns() + 50_000_000
        per_worker_rate = rate / pool.active if rate else 0.0
        replies = pool.workers(
            "uplink",
            wait=duration + 90,
            qos=qos,
            t_start=t_start,
            duration=duration,
            rate=per_worker_rate,
            window=window // pool.active if window and not rate else 0,
            batch=64 if not rate else 16,
            per_node_window=per_node_window,
            drain_timeout=20.0,
        )
        sent = sum(r["sent"] for r in replies)
        received = self.wait_settled(pool.broker_received, sent)
        cpu = self.cpu_figures(mark0, self.cpu_mark(gw))
        side = pool.broker("collect")
        t_end = max(r["t_end"] for r in replies)
        elapsed = (max(side["last_rx"], t_end) - t_start) / 1e9
        send_s = (t_end - t_start) / 1e9
        gw_cpu = cpu["gateway_cpu_s"]
        lat = array("q")
        lat.frombytes(side["lat"])
        rtt = array("q")
        for r in replies:
            rtt.frombytes(r["ack_rtt"])
        errors: dict[str, int] = {}
        for r in replies:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        out.update(
            {
                "sent": sent,
                "received": side["received"],
                "loss": sent - side["received"],
                "duplicates": side["duplicates"],
                "out_of_order": side["out_of_order"],
                "send_time_s": round(send_s, 3),
                "elapsed_s": round(elapsed, 3),
                "send_rate": round(sent / send_s) if send_s > 0 else None,
                "msgs_per_s": round(received / elapsed) if elapsed > 0 else None,
                "msgs_per_cpu_s": round(side["received"] / gw_cpu) if gw_cpu > 0 else None,
                **cpu,
                "latency_ms": percentiles_ms(lat),
                "node_errors": errors,
            }
        )
        if qos:
            out["acked"] = sum(r["acked"] for r in replies)
            out["nacked"] = sum(r["nacked"] for r in replies)
            out["lost_acks"] = sum(r["lost_acks"] for r in replies)
            out["ack_rtt_ms"] = percentiles_ms(rtt)
            out["puback_p99_ms"] = out["ack_rtt_ms"]["p99"] if out["ack_rtt_ms"] else None
        return out

    # ------------------------------------------------------------------ yardstick

    def yardstick(
        self, qos: int, nodes: int, duration: float, rate: float = 0.0
    ) -> dict[str, Any] | None:
        """The same uplink load from ../shared/tools/mqttsn_load.py, on a fresh gateway.

        QoS 0 is paced at ``rate`` (the wall-clock rate our generator reached): unpaced, the
        yardstick sends several times what the gateway can take, spends both cores on it and
        the kernel drops the rest, which is a different load. QoS 1 is self-clocked by PUBACKs.
        """
        path = self.options.yardstick
        if path is None or not path.exists():
            self.log(f"  yardstick {path} not found: comparison skipped")
            return None
        with self.gateway() as gw:
            drops_before = udp_drops(gw.port)
            cmd = [
                sys.executable,
                str(path),
                "--port",
                str(gw.port),
                "--broker-port",
                str(self.broker.port),
                "--mode",
                "uplink",
                "--clients",
                str(nodes),
                "--qos",
                str(qos),
                "--duration",
                str(duration),
                "--pid",
                str(gw.pid),
                "--procs",
                str(min(self.options.procs, nodes)),
                "--payload-size",
                str(self.options.payload_size),
                "--settle",
                "1",
                "--client-prefix",
                "yard-",
                "--topic-root",
                "yard",
                "--quiet",
            ]
            if rate:
                cmd += ["--rate", str(round(rate))]
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=duration + 120, check=False
            )
            drops = udp_drops(gw.port) - drops_before
        if done.returncode != 0:
            raise RuntimeError(f"yardstick failed: {done.stderr[-1500:]}")
        report = json.loads(done.stdout)
        gw_part = report.get("gateway", {})
        rtt = report.get("ack_rtt_ms") or {}
        # Its own (paho) subscriber takes 20-30k msgs/s here; above that the broker drops for
        # it what the gateway did forward. So per CPU-second is also given by what the gateway
        # took from its socket: sent less the kernel's drops there.
        taken = int(report.get("sent") or 0) - drops
        gw_cpu = gw_part.get("cpu_s")
        return {
            "sent": report.get("sent"),
            "received": report.get("received_at_broker"),
            "socket_drops": drops,
            "taken_per_cpu_s": round(taken / gw_cpu) if gw_cpu else None,
            "loss": report.get("loss"),
            "msgs_per_s": report.get("msgs_per_s"),
            "gateway_cpu_s": gw_part.get("cpu_s"),
            "msgs_per_cpu_s": gw_part.get("msgs_per_cpu_s"),
            "puback_p99_ms": rtt.get("p99"),
            "generator_cpu_s": report.get("generator_window_cpu_s"),
            "rate": round(rate) if rate else None,
            "command": " ".join(cmd[1:]),
        }


# ---------------------------------------------------------------------------------------------
# Rows


def row_qos0_uplink(b: Bench) -> dict[str, Any]:
    """QoS 0 uplink from N nodes, saturating (end-to-end window), msgs per gateway CPU-s."""
    n = b.options.clients
    with b.gateway() as gw:
        out = b.uplink(gw, n, 0, b.options.duration("uplink"))
        out["rss_kb"] = gw.mem_kb()["VmRSS"]
        b.close_nodes()
    out["yardstick"] = b.yardstick(0, n, b.options.duration("uplink"), rate=out["msgs_per_s"])
    return out


def row_qos1_uplink(b: Bench) -> dict[str, Any]:
    """QoS 1 uplink from N nodes, one PUBLISH in flight each; PUBACK round trip."""
    n = b.options.clients
    with b.gateway() as gw:
        out = b.uplink(gw, n, 1, b.options.duration("uplink"))
        out["rss_kb"] = gw.mem_kb()["VmRSS"]
        b.close_nodes()
    out["yardstick"] = b.yardstick(1, n, b.options.duration("uplink"))
    return out


def row_downlink_fanout(b: Bench) -> dict[str, Any]:
    """QoS 0 published at the broker to one topic all N nodes subscribed: deliveries per CPU-s."""
    n = b.options.clients
    pool = b.pool
    duration = b.options.duration("fanout")
    with b.gateway() as gw:
        b.open_nodes(gw, n)
        out: dict[str, Any] = {"nodes": n, **b.connect(gw, n)}
        subs = pool.workers("subscribe", topic=FANOUT_TOPIC, qos=0, concurrency=250, timeout=5.0)
        subscribed = sum(r["subscribed"] for r in subs)
        out["subscribed"] = subscribed
        time.sleep(0.3)
        mark0 = b.cpu_mark(gw)
        pub = pool.broker(
            "publish_fanout",
            wait=duration + 60,
            topic=FANOUT_TOPIC,
            run_id=b.run_id,
            payload_size=b.options.payload_size,
            duration=duration,
            fanout=subscribed,
            window=5_000,
            batch=16,
        )
        expected = pub["published"] * subscribed
        b.wait_settled(pool.delivered_total, expected)
        cpu = b.cpu_figures(mark0, b.cpu_mark(gw))
        replies = pool.workers("collect")
        got = sum(r["delivered"] for r in replies)
        lat = array("q")
        for r in replies:
            lat.frombytes(r["lat"])
        t_last = max([r["last_rx"] for r in replies] + [pub["t_end"]])
        elapsed = (t_last - pub["t_start"]) / 1e9
        gw_cpu = cpu["gateway_cpu_s"]
        out.update(
            {
                "published": pub["published"],
                "expected": expected,
                "delivered": got,
                "loss": expected - got,
                "duplicates": sum(r["duplicates"] for r in replies),
                "elapsed_s": round(elapsed, 3),
                "deliveries_per_s": round(got / elapsed) if elapsed > 0 else None,
                "deliveries_per_cpu_s": round(got / gw_cpu) if gw_cpu > 0 else None,
                **cpu,
                "latency_ms": percentiles_ms(lat),
                "rss_kb": gw.mem_kb()["VmRSS"],
            }
        )
        b.close_nodes()
    return out


def row_paced_qos0(b: Bench) -> dict[str, Any]:
    """Paced QoS 0 uplink from N nodes at rising rates; the highest rate with zero loss."""
    n = b.options.clients
    duration = b.options.duration("paced")
    rates = [10_000, 20_000, 30_000, 40_000, 50_000, 60_000, 80_000, 100_000]
    if b.options.quick:
        rates = [20_000, 30_000, 40_000, 60_000]
    steps = []
    best = 0
    with b.gateway() as gw:
        first = True
        for rate in rates:
            if first:
                step = b.uplink(gw, n, 0, duration, rate=rate)
                first = False
            else:
                b.new_run(n)
                step = b.uplink(gw, n, 0, duration, rate=rate, prepared=True)
            # the rate counts only if the generator really sent it (2 cores are shared)
            achieved = step["sent"] / duration
            ok = step["loss"] == 0 and achieved >= 0.95 * rate
            steps.append(
                {
                    "rate": rate,
                    "sent": step["sent"],
                    "loss": step["loss"],
                    "achieved_rate": round(achieved),
                    "msgs_per_cpu_s": step["msgs_per_cpu_s"],
                    "latency_ms": step["latency_ms"],
                    "zero_loss": ok,
                }
            )
            b.log(f"  paced {rate}/s: sent {step['sent']} lost {step['loss']}")
            if not ok:
                break
            best = rate
        b.close_nodes()
    return {"nodes": n, "zero_loss_rate": best, "steps": steps}


def _connect_and_hold(b: Bench, count: int, rcvbuf: int) -> dict[str, Any]:
    with b.gateway() as gw:
        time.sleep(0.3)
        idle = gw.mem_kb()["VmRSS"]
        b.open_nodes(gw, count, rcvbuf=rcvbuf)
        out: dict[str, Any] = {"nodes": count, **b.connect(gw, count)}
        time.sleep(0.5)
        mem = gw.mem_kb()
        out.update(
            {
                "rss_idle_kb": idle,
                "rss_kb": mem["VmRSS"],
                "rss_mb": round(mem["VmRSS"] / 1024, 1),
                "hwm_kb": mem["VmHWM"],
                "per_node_bytes": round((mem["VmRSS"] - idle) * 1024 / max(count, 1)),
                "connects_per_cpu_s": (
                    round(out["connected"] / out["connect_gateway_cpu_s"])
                    if out["connect_gateway_cpu_s"] > 0
                    else None
                ),
            }
        )
        b.close_nodes()
    return out


def row_connect_1000(b: Bench) -> dict[str, Any]:
    """1,000 nodes CONNECT at once (250 outstanding per worker); time and RSS."""
    return _connect_and_hold(b, 1000, 1 << 20)


def row_memory_10000(b: Bench) -> dict[str, Any]:
    """10,000 connected nodes: the gateway's RSS."""
    return _connect_and_hold(b, 10_000, 256 << 10)


def row_transparent_1000(b: Bench) -> dict[str, Any]:
    """Transparent mode: 1,000 nodes each with its own broker connection; connect, QoS 0 uplink."""
    with b.gateway("transparent") as gw:
        out = b.uplink(gw, 1000, 0, b.options.duration("transparent"))
        out["rss_kb"] = gw.mem_kb()["VmRSS"]
        out["rss_mb"] = round(out["rss_kb"] / 1024, 1)
        b.close_nodes()
    return out


def row_sleeping_fleet(b: Bench) -> dict[str, Any]:
    """10,000 asleep nodes, 10 QoS 1 messages each published at the broker, all wake."""
    n, per_node = 10_000, 10
    pool = b.pool
    with b.gateway() as gw, RssSampler(gw.pid) as rss:
        b.open_nodes(gw, n, rcvbuf=256 << 10)
        out: dict[str, Any] = {"nodes": n, "per_node": per_node, **b.connect(gw, n)}
        subs = pool.workers("subscribe", topic=SLEEP_TOPIC, qos=1, concurrency=250, timeout=10.0)
        out["subscribed"] = sum(r["subscribed"] for r in subs)
        sleeps = pool.workers("sleep", duration=3600, concurrency=250, timeout=10.0)
        out["asleep"] = sum(r["asleep"] for r in sleeps)
        b.log(f"  {out['subscribed']} subscribed, {out['asleep']} asleep; publishing")
        cpu0 = gw.cpu_s()
        pub = pool.broker(
            "publish_each",
            wait=300,
            topic=SLEEP_TOPIC,
            indexes=list(range(n)),
            per_topic=per_node,
            run_id=b.run_id,
            payload_size=b.options.payload_size,
            window=1000,
            timeout=120.0,
        )
        out["published"] = pub["published"]
        out["publish_s"] = round((pub["t_end"] - pub["t_start"]) / 1e9, 3)
        out["buffer_wait_s"] = round(b.wait_gateway_idle(gw), 3)
        out["buffer_gateway_cpu_s"] = round(gw.cpu_s() - cpu0, 3)
        out["rss_buffered_kb"] = gw.mem_kb()["VmRSS"]
        b.log(f"  published {pub['published']} (acked: {pub['all_acked']}); waking {n} nodes")
        cpu1 = gw.cpu_s()
        t0 = now_ns() + 50_000_000
        wakes = pool.workers("wake", wait=300, t0=t0, concurrency=500, timeout=60.0)
        woke = sum(r["woke"] for r in wakes)
        wake_s = (max(r["t_done"] for r in wakes) - t0) / 1e9
        expected = n * per_node
        b.wait_settled(pool.delivered_total, expected, settle=1.0, limit=30.0)
        cpu2 = gw.cpu_s()
        replies = pool.workers("collect")
        mem = gw.mem_kb()
        histogram: dict[int, int] = {}
        for r in replies:
            for k, v in r["per_node"].items():
                histogram[int(k)] = histogram.get(int(k), 0) + v
        delivered = sum(r["delivered"] for r in replies)
        lat = array("q")
        for r in replies:
            lat.frombytes(r["lat"])
        out.update(
            {
                "woke": woke,
                "wake_s": round(wake_s, 3),
                "expected": expected,
                "delivered": delivered,
                "lost": expected - delivered,
                "duplicates": sum(r["duplicates"] for r in replies),
                "out_of_order": sum(r["out_of_order"] for r in replies),
                "nodes_exact": histogram.get(per_node, 0),
                "per_node_histogram": {str(k): v for k, v in sorted(histogram.items())},
                "deliveries_per_s": round(delivered / wake_s) if wake_s > 0 else None,
                "wake_gateway_cpu_s": round(cpu2 - cpu1, 3),
                "deliveries_per_cpu_s": (round(delivered / (cpu2 - cpu1)) if cpu2 > cpu1 else None),
                "buffered_to_delivered_ms": percentiles_ms(lat),
                "rss_end_kb": mem["VmRSS"],
                "hwm_kb": mem["VmHWM"],
            }
        )
        b.close_nodes()
    # lost + duplicated + nodes without exactly their 10: all must be 0
    out["lost_or_dup"] = out["lost"] + out["duplicates"] + (n - out["nodes_exact"])
    out["rss_max_kb"] = max(rss.max_kb, out["rss_buffered_kb"], out["rss_end_kb"])
    out["rss_max_mb"] = round(out["rss_max_kb"] / 1024, 1)
    out["all_delivered"] = int(
        out["delivered"] == out["expected"] and out["duplicates"] == 0 and out["nodes_exact"] == n
    )
    return out


# ---------------------------------------------------------------------------------------------
# Checks: what the table shows


@dataclass(frozen=True)
class Check:
    """One line of the table: a figure of a row against the issue's target."""

    label: str
    key: str  # in the row's summary
    paho: str
    target: float | None  # None: shown for information
    better: str  # ">=" or "<="
    unit: str = ""
    wall_key: str | None = None  # a wall-clock figure shown beside
    wall_unit: str = ""
    scale: float = 1.0  # figure = value * scale (KiB -> MB)

    def met(self, value: float | None) -> bool | None:
        """True when the figure reaches the target."""
        if value is None or self.target is None:
            return None
        return value >= self.target if self.better == ">=" else value <= self.target


@dataclass(frozen=True)
class Row:
    """A measurement and the checks it feeds."""

    key: str
    title: str
    run: Callable[[Bench], dict[str, Any]]
    checks: tuple[Check, ...]
    worst: tuple[str, ...] = ()  # summary keys aggregated by the worst run, not the median
    minimal: bool = False  # the minimal forwarder can run it (--gateway-cmd minimal)


ROWS: dict[str, Row] = {
    r.key: r
    for r in (
        Row(
            "qos0_uplink",
            "QoS 0 uplink, 100 nodes",
            row_qos0_uplink,
            (
                Check(
                    "msgs per gateway CPU-s",
                    "msgs_per_cpu_s",
                    "50.7k",
                    150_000,
                    ">=",
                    wall_key="msgs_per_s",
                    wall_unit="msgs/s",
                ),
            ),
            worst=("loss",),
            minimal=True,
        ),
        Row(
            "qos1_uplink",
            "QoS 1 uplink, 100 nodes, 1 in flight each",
            row_qos1_uplink,
            (
                Check(
                    "msgs per gateway CPU-s",
                    "msgs_per_cpu_s",
                    "25.5k",
                    100_000,
                    ">=",
                    wall_key="msgs_per_s",
                    wall_unit="msgs/s",
                ),
                Check("PUBACK round trip p99", "puback_p99_ms", "n.a.", 10.0, "<=", "ms"),
            ),
            worst=("loss",),
            minimal=True,
        ),
        Row(
            "downlink_fanout",
            "QoS 0 downlink fan-out to 100 nodes",
            row_downlink_fanout,
            (
                Check(
                    "deliveries per gateway CPU-s",
                    "deliveries_per_cpu_s",
                    "39.6k",
                    100_000,
                    ">=",
                    wall_key="deliveries_per_s",
                    wall_unit="deliveries/s",
                ),
            ),
            worst=("loss",),
        ),
        Row(
            "paced_qos0",
            "paced QoS 0 uplink, 100 nodes, zero loss",
            row_paced_qos0,
            (Check("highest zero-loss rate", "zero_loss_rate", "10k", 30_000, ">=", "msgs/s"),),
            minimal=True,
        ),
        Row(
            "connect_1000",
            "1,000 nodes connect",
            row_connect_1000,
            (
                Check("time to connect all", "connect_time_s", "8.2 s", 1.0, "<=", "s"),
                Check("RSS, 1,000 connected", "rss_kb", "6.2 MB", 40.0, "<=", "MB", scale=1 / 1024),
            ),
            worst=("connect_failures_total",),
        ),
        Row(
            "memory_10000",
            "10,000 nodes connected",
            row_memory_10000,
            (
                Check("RSS, 10,000 connected", "rss_kb", "n.a.", 120.0, "<=", "MB", scale=1 / 1024),
                Check("time to connect all", "connect_time_s", "n.a.", None, "<=", "s"),
            ),
        ),
        Row(
            "transparent_1000",
            "transparent mode, 1,000 nodes",
            row_transparent_1000,
            (
                Check("time to connect all", "connect_time_s", "not reachable", 3.0, "<=", "s"),
                Check(
                    "QoS 0 uplink msgs per gateway CPU-s",
                    "msgs_per_cpu_s",
                    "not reachable",
                    40_000,
                    ">=",
                    wall_key="msgs_per_s",
                    wall_unit="msgs/s",
                ),
            ),
            worst=("loss",),
        ),
        Row(
            "sleeping_fleet",
            "sleeping fleet: 10,000 nodes x 10 msgs",
            row_sleeping_fleet,
            (
                Check(
                    "delivered of 100,000 (exact)",
                    "delivered",
                    "20 buffered/node",
                    100_000,
                    ">=",
                    wall_key="deliveries_per_s",
                    wall_unit="deliveries/s",
                ),
                Check(
                    "lost, duplicated, or a node not given exactly 10",
                    "lost_or_dup",
                    "n.a.",
                    0,
                    "<=",
                ),
                Check("RSS (max sampled)", "rss_max_kb", "n.a.", 200.0, "<=", "MB", scale=1 / 1024),
            ),
            worst=("delivered", "lost", "duplicates", "lost_or_dup", "rss_max_kb"),
        ),
    )
}

"""``mqttsn-gateway demo``: an embedded broker, the real gateway on UDP loopback, simulated nodes.

Zero set-up: everything runs in this process on 127.0.0.1. The embedded broker is amqtt (MQTT
3.1.1 only, so the gateway uses its 3.1.1 bridge path here); tests never rely on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import socket
import sys
import time
from typing import Any

from gateway.config import parse_config
from gateway.core import SessionState
from gateway.runtime import GatewayRuntime

__all__ = ["run_demo"]

_LOGGER = logging.getLogger(__name__)


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Printer:
    """Prints one line per event, with the seconds since the demo started."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self, who: str, text: str) -> None:
        sys.stdout.write(f"{time.monotonic() - self.start:6.2f}s  {who:<8} {text}\n")
        sys.stdout.flush()


async def _start_broker(port: int) -> Any:
    from amqtt.broker import Broker

    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
    )
    await broker.start()
    return broker


async def run_demo(
    duration: float | None = None, nodes: int = 3, log_level: str = "WARNING"
) -> int:
    """Run the demo until ``duration`` seconds pass or Ctrl-C; returns an exit code."""
    import aiomqtt

    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("amqtt", "transitions", "aiomqtt"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    say = _Printer()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)

    broker_port, udp_port = _free_port(socket.SOCK_STREAM), _free_port(socket.SOCK_DGRAM)
    say("demo", f"embedded broker on 127.0.0.1:{broker_port}, gateway on UDP 127.0.0.1:{udp_port}")
    broker = await _start_broker(broker_port)
    config = parse_config(
        {"mqttsn": {"t-adv": 0, "t-retry": 2.0}, "broker": {"protocol": "3.1.1"}},
        udp=f"127.0.0.1:{udp_port}",
        broker=f"mqtt://127.0.0.1:{broker_port}",
        log_level=log_level,
    )
    try:
        async with (
            GatewayRuntime(config) as gateway,
            aiomqtt.Client("127.0.0.1", broker_port, identifier="demo-observer") as observer,
        ):
            await observer.subscribe("demo/#", qos=1)
            tasks = [
                asyncio.create_task(_watch_broker(observer, say), name="demo.observer"),
                asyncio.create_task(
                    _sleepy_node(gateway, observer, udp_port, say, stop), name="demo.sleepy"
                ),
            ]
            tasks += [
                asyncio.create_task(
                    _sensor(f"sensor-{i + 1}", udp_port, i % 2, say, stop), name=f"demo.sensor{i}"
                )
                for i in range(nodes)
            ]
            await stop.wait()
            say("demo", "stopping")
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for result in results:
                if isinstance(result, Exception) and not isinstance(result, asyncio.CancelledError):
                    say("demo", f"a demo task failed: {result!r}")
            say("gateway", f"counters: {dict(gateway.core.counters) or '{}'}")
    finally:
        with contextlib.suppress(Exception):
            await broker.shutdown()
    say("demo", "done")
    return 0


async def _watch_broker(observer: Any, say: _Printer) -> None:
    async for message in observer.messages:
        say("broker", f"got {message.topic} = {bytes(message.payload).decode(errors='replace')!r}")


async def _sensor(
    client_id: str, udp_port: int, qos: int, say: _Printer, stop: asyncio.Event
) -> None:
    from firmware_sim.node import SimNode
    from firmware_sim.udp_link import UdpNodeLink

    async with SimNode(client_id, UdpNodeLink(("127.0.0.1", udp_port)), t_retry=2.0) as node:
        await node.connect(keepalive=30)
        say(client_id, "connected")
        temperature = 20.0 + random.random() * 5
        while not stop.is_set():
            temperature += random.uniform(-0.3, 0.3)
            payload = f"{temperature:.1f}"
            await node.publish(f"demo/{client_id}/temp", payload, qos=qos)
            say(client_id, f"published demo/{client_id}/temp = {payload!r} (QoS {qos})")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2.0)
        await node.disconnect()


async def _sleepy_node(
    gateway: GatewayRuntime, observer: Any, udp_port: int, say: _Printer, stop: asyncio.Event
) -> None:
    from firmware_sim.node import SimNode
    from firmware_sim.udp_link import UdpNodeLink

    client_id = "sleepy"
    async with SimNode(client_id, UdpNodeLink(("127.0.0.1", udp_port)), t_retry=2.0) as node:
        await node.connect(keepalive=30, will=("demo/sleepy/status", b"lost", 1, True))
        await node.subscribe("demo/sleepy/cmd", qos=1)
        say(client_id, "connected with a will, subscribed to demo/sleepy/cmd")
        cycle = 0
        while not stop.is_set():
            cycle += 1
            if cycle > 1:  # back to work: CONNECT (CleanSession=0 keeps the subscription)
                await node.connect(keepalive=30, clean_session=False)
            await node.publish("demo/sleepy/battery", f"{100 - cycle}%", qos=1)
            say(
                client_id,
                f"published demo/sleepy/battery = '{100 - cycle}%' (QoS 1), sleeping; wakes in 4 s",
            )
            await node.sleep(10)
            command = f"blink {cycle}"
            await observer.publish("demo/sleepy/cmd", command.encode(), qos=1)
            await asyncio.sleep(0.3)
            session = gateway.core.sessions.get(client_id)
            if session is not None and session.state is SessionState.ASLEEP:
                say(
                    "gateway",
                    f"{client_id} is asleep: buffered {len(session.queue)} message(s) for it",
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 3.7)
            if stop.is_set():
                break
            delivered = await node.wake()
            for message in delivered:
                text = message.payload.decode(errors="replace")
                say(client_id, f"woke up and received {message.topic_name} = {text!r}")
            if not delivered:
                say(client_id, "woke up; nothing was waiting")
        with contextlib.suppress(Exception):
            await node.connect(keepalive=30, clean_session=False)
            await node.disconnect()

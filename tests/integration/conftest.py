"""Integration fixtures: the real gateway on loopback UDP against the real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiomqtt
import pytest

from firmware_sim.node import SimNode
from firmware_sim.udp_link import UdpNodeLink
from gateway.config import parse_config
from gateway.runtime import GatewayRuntime
from tests.mosquitto import MosquittoBroker, free_port

GatewayFactory = Callable[..., Any]


@pytest.fixture(params=["aggregating", "transparent"])
def mode(request: pytest.FixtureRequest) -> str:
    """Run the test in both gateway modes."""
    return str(request.param)


@pytest.fixture
async def start_gateway() -> AsyncIterator[GatewayFactory]:
    """``await start_gateway(broker, mode=..., mqttsn={...}, predefined={...})`` -> runtime."""
    runtimes: list[GatewayRuntime] = []

    async def factory(
        broker: MosquittoBroker,
        mode: str = "aggregating",
        *,
        mqttsn: dict[str, Any] | None = None,
        predefined: dict[int, str] | None = None,
        protocol: str = "5",
        udp_port: int | None = None,
    ) -> GatewayRuntime:
        port = udp_port or free_port(socket.SOCK_DGRAM)
        settings = {"t-adv": 0, "t-retry": 1.0, "n-retry": 3, **(mqttsn or {})}
        config = parse_config(
            {"mqttsn": settings, "broker": {"protocol": protocol}},
            udp=f"127.0.0.1:{port}",
            broker=broker.url,
            mode=mode,
            predefined=predefined,
        )
        runtime = GatewayRuntime(config)
        await runtime.start()
        runtime.udp_port = port  # type: ignore[attr-defined]
        runtimes.append(runtime)
        await wait_for(lambda: runtime.upstream.connected, 10.0, "gateway connects to the broker")
        return runtime

    yield factory
    for runtime in runtimes:
        await runtime.close()


def sim_node(runtime: GatewayRuntime, client_id: str, **kwargs: Any) -> SimNode:
    """A simulated node talking UDP to ``runtime``."""
    kwargs.setdefault("t_retry", 1.0)
    port = runtime.udp_port  # type: ignore[attr-defined]
    return SimNode(client_id, UdpNodeLink(("127.0.0.1", port)), **kwargs)


async def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; fail naming ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting until {what}")
        await asyncio.sleep(0.01)


class Observer:
    """An MQTT subscriber at the broker that records every message it gets."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.messages: list[aiomqtt.Message] = []
        self._task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        async for message in self.client.messages:
            self.messages.append(message)

    def payloads(self, topic: str) -> list[bytes]:
        """Payloads received on exactly ``topic``, in order."""
        return [bytes(m.payload) for m in self.messages if m.topic.value == topic]  # type: ignore[arg-type]

    async def wait_count(self, topic: str, count: int, timeout: float = 10.0) -> list[bytes]:
        """Wait until ``count`` messages arrived on ``topic``."""
        await wait_for(lambda: len(self.payloads(topic)) >= count, timeout, f"{count} on {topic}")
        return self.payloads(topic)

    async def close(self) -> None:
        """Stop collecting."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@pytest.fixture
async def observe() -> AsyncIterator[Callable[..., Any]]:
    """``obs = await observe(broker, "filter/#")``: a recording subscriber."""
    stack = contextlib.AsyncExitStack()
    observers: list[Observer] = []

    async def factory(broker: MosquittoBroker, *filters: str, **client_kwargs: Any) -> Observer:
        client = await stack.enter_async_context(
            aiomqtt.Client(broker.host, broker.port, **client_kwargs)
        )
        for topic_filter in filters:
            await client.subscribe(topic_filter, qos=2)
        observer = Observer(client)
        observers.append(observer)
        return observer

    yield factory
    for observer in observers:
        await observer.close()
    await stack.aclose()

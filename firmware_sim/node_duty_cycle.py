"""SimNode's duty cycle: sleep announced to the gateway, wake to collect, periodic publishing.

A mixin of ``SimNode`` (node.py), kept apart because it is how a battery node spends its life:
DISCONNECT with a duration and the radio down [§6.14], PINGREQ with its ClientId to collect what
the gateway buffered, and ``run_periodic`` publishing every interval, asleep in between.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from firmware_sim.battery import Battery, PowerState
from firmware_sim.client import ClientState, Event, MqttSnClient, Output, Received, WakeDone, Will
from firmware_sim.link import NodeLink
from firmware_sim.node_errors import BatteryEmpty, RequestTimeout, SimNodeError
from gateway.errors import LocalProtocolError, TransportError
from gateway.protocol.constants import QoS, TopicIdType

__all__ = ["DutyCycleMixin", "Payload", "PeriodicReport"]

_LOGGER = logging.getLogger(__name__)

Payload = bytes | str | Callable[[int], bytes] | None


@dataclass(frozen=True, slots=True)
class PeriodicReport:
    """What ``run_periodic`` did."""

    published: int
    acked: int
    failed: int
    stopped: str


class DutyCycleMixin:
    """Duty-cycle half of ``SimNode``: sleep, wake, and publishing periodically in between."""

    client: MqttSnClient
    link: NodeLink
    battery: Battery | None
    _dead: str | None
    _woken: list[Received] | None
    _connect_args: tuple[int, Will | None]

    # Provided by SimNode.
    @property
    def client_id(self) -> str:
        raise NotImplementedError  # pragma: no cover

    @property
    def alive(self) -> bool:
        raise NotImplementedError  # pragma: no cover

    def _now(self) -> float:
        raise NotImplementedError  # pragma: no cover

    def _check_alive(self) -> None: ...  # pragma: no cover
    async def _power_up(self) -> None: ...  # pragma: no cover
    def _set_power(self, state: PowerState) -> None: ...  # pragma: no cover
    async def connect(
        self,
        keepalive: int = 60,
        clean_session: bool = True,
        will: Will | tuple[str, bytes, int, bool] | None = None,
    ) -> None: ...  # pragma: no cover
    async def publish(
        self,
        topic: str | int,
        payload: bytes | str,
        qos: int = 0,
        *,
        topic_id_type: TopicIdType | None = None,
        retain: bool = False,
    ) -> None: ...  # pragma: no cover

    # Provided by NodeIoMixin (before this mixin among SimNode's bases).
    def _waiter(self, kind: str, *, reuse: bool = False) -> asyncio.Future[Event]:
        raise NotImplementedError  # pragma: no cover

    def _dispatch(
        self, outputs: list[Output], done: asyncio.Future[None] | None = None
    ) -> None: ...  # pragma: no cover
    async def _await(
        self, future: asyncio.Future[Event], limit: float | None, answer: str
    ) -> Event:
        raise NotImplementedError  # pragma: no cover

    # ----------------------------------------------------------------- API

    async def sleep(self, duration: float) -> None:
        """DISCONNECT with ``duration`` (rounded up to whole seconds), then power the radio down."""
        self._check_alive()
        future = self._waiter("sleep")
        self._dispatch(self.client.sleep(math.ceil(duration), self._now()))
        await self._await(future, None, "DISCONNECT")
        await self.link.sleep_radio()
        self._set_power(PowerState.SLEEP)
        _LOGGER.info("%s: asleep for %d s", self.client_id, math.ceil(duration))

    async def wake(self) -> list[Received]:
        """Radio up, PINGREQ with our ClientId; the messages delivered until PINGRESP."""
        self._check_alive()
        await self._power_up()
        future = self._waiter("wake")
        self._woken = []
        try:
            self._dispatch(self.client.wake(self._now()))
            event = await self._await(future, None, "PINGRESP")
            woken = self._woken
        finally:
            self._woken = None
        await self.link.sleep_radio()
        self._set_power(PowerState.SLEEP)
        assert isinstance(event, WakeDone)
        if event.timed_out:
            raise RequestTimeout(f"{self.client_id}: no PINGRESP after waking; asleep again")
        _LOGGER.info("%s: woke and collected %d messages", self.client_id, len(woken))
        return woken

    async def run_periodic(
        self,
        topic: str | int,
        interval: float,
        qos: int = 0,
        count: int | None = None,
        sleep_between: float | None = None,
        *,
        payload: Payload = None,
        topic_id_type: TopicIdType | None = None,
        collect: bool = False,
    ) -> PeriodicReport:
        """Publish every ``interval`` s, ``count`` times (None: until cancelled or battery empty).

        With ``sleep_between`` the node sleeps between publishes (DISCONNECT announcing that
        many seconds), then reconnects with CleanSession=0 to publish; ``collect`` first wakes
        with PINGREQ to collect what the gateway buffered.
        """
        published = acked = failed = i = 0
        stopped = "count reached"
        while count is None or i < count:
            if not self.alive:
                stopped = self._dead or "dead"
                break
            try:
                if QoS(qos) is not QoS.MINUS_ONE:
                    await self._ensure_active(collect)
                data = _payload(payload, i, self.battery)
                await self.publish(topic, data, qos, topic_id_type=topic_id_type)
                published += 1
                acked += QoS(qos) in (QoS.AT_LEAST_ONCE, QoS.EXACTLY_ONCE)
            except BatteryEmpty:
                stopped = "battery empty"
                break
            except (SimNodeError, LocalProtocolError, TransportError) as exc:
                failed += 1
                _LOGGER.info("%s: periodic publish %d failed: %s", self.client_id, i, exc)
            i += 1
            if count is not None and i >= count:
                break
            if sleep_between is not None and self.client.state is ClientState.ACTIVE:
                try:
                    await self.sleep(sleep_between)
                except SimNodeError as exc:
                    _LOGGER.info("%s: could not go to sleep: %s", self.client_id, exc)
            await asyncio.sleep(interval)
        return PeriodicReport(published, acked, failed, stopped)

    # ----------------------------------------------------------------- internals

    async def _ensure_active(self, collect: bool) -> None:
        state = self.client.state
        if state is ClientState.ACTIVE:
            return
        if state is ClientState.ASLEEP and collect:
            await self.wake()
        keepalive, _ = self._connect_args
        # CleanSession=0 keeps subscriptions, registrations and the stored will [§6.3].
        await self.connect(keepalive, clean_session=False)


def _payload(payload: Payload, seq: int, battery: Battery | None) -> bytes:
    if payload is None:
        level = f',"battery":{battery.level:.2f}' if battery is not None else ""
        return f'{{"seq":{seq}{level}}}'.encode()
    if callable(payload):
        return payload(seq)
    return payload.encode() if isinstance(payload, str) else payload

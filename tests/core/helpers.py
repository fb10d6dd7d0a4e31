"""A small driver for the pure core: feed inputs with an explicit ``now``, collect actions."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

from gateway.core import (
    Action,
    GatewayCore,
    PublishUpstream,
    SendFrame,
    SessionState,
)
from gateway.core.settings import CoreSettings
from gateway.protocol.constants import ReturnCode
from gateway.protocol.messages import Connack, Connect, Message

__all__ = ["A1", "A2", "A3", "Driver", "frames", "messages", "of_type"]

# Addresses are opaque hashables to the core; tuples stand in for transport addresses.
A1: Hashable = ("udp", "10.0.0.1", 1001)
A2: Hashable = ("udp", "10.0.0.2", 1002)
A3: Hashable = ("udp", "10.0.0.3", 1003)


def frames(actions: Iterable[Action], address: Hashable | None = None) -> list[Message]:
    """The messages of every SendFrame (to ``address`` only, when given)."""
    return [
        a.message
        for a in actions
        if isinstance(a, SendFrame) and (address is None or a.address == address)
    ]


def messages(actions: Iterable[Action]) -> list[tuple[Hashable, Message]]:
    """(address, message) for every SendFrame, in order."""
    return [(a.address, a.message) for a in actions if isinstance(a, SendFrame)]


def of_type(actions: Iterable[Any], kind: type) -> list[Any]:
    """Every action (or message) that is an instance of ``kind``."""
    return [a for a in actions if isinstance(a, kind)]


class Driver:
    """Drives a ``GatewayCore`` with explicit time; every call returns the actions it produced."""

    def __init__(self, settings: CoreSettings | None = None, **overrides: Any) -> None:
        if settings is None:
            settings = CoreSettings(**overrides)
        self.core = GatewayCore(settings)
        self.now = 0.0

    def _at(self, now: float | None) -> float:
        if now is not None:
            assert now >= self.now, f"time must not go back ({now} < {self.now})"
            self.now = now
        return self.now

    def rx(self, address: Hashable, message: Message, now: float | None = None) -> list[Action]:
        """A frame from ``address``."""
        return self.core.receive(address, message, self._at(now))

    def broker(
        self,
        topic: str,
        payload: bytes = b"x",
        qos: int = 0,
        retain: bool = False,
        now: float | None = None,
        client_id: str | None = None,
    ) -> list[Action]:
        """A PUBLISH from the broker."""
        return self.core.on_broker_message(
            topic, payload, qos, retain, self._at(now), client_id=client_id
        )

    def done(self, token: int, ok: bool = True, now: float | None = None) -> list[Action]:
        """The broker acknowledged (or refused) the uplink publish with ``token``."""
        return self.core.on_publish_done(token, ok, self._at(now))

    def tick(self, now: float) -> list[Action]:
        """One tick at ``now``."""
        return self.core.tick(self._at(now))

    def run_until(self, until: float) -> list[tuple[float, list[Action]]]:
        """Tick at every deadline the core asks for up to ``until``; the non-empty results.

        Each entry is (now, actions), so a test can say exactly *when* something happened.
        """
        results: list[tuple[float, list[Action]]] = []
        while True:
            deadline = self.core.next_deadline()
            if deadline is None or deadline > until:
                break
            actions = self.tick(max(deadline, self.now))
            if actions:
                results.append((self.now, actions))
        self._at(max(until, self.now))
        return results

    def connect(
        self,
        address: Hashable,
        client_id: str,
        duration: int = 60,
        clean: bool = True,
        now: float | None = None,
    ) -> list[Action]:
        """CONNECT without will; asserts the CONNACK accepted is all that comes back first."""
        out = self.rx(address, Connect(client_id, duration, False, clean), now)
        assert frames(out)[:1] == [Connack(ReturnCode.ACCEPTED)], out
        return out

    def session(self, client_id: str) -> Any:
        """The session of ``client_id`` (asserts it exists)."""
        return self.core.sessions[client_id]

    def state(self, client_id: str) -> SessionState | None:
        """The state of ``client_id``'s session, None when the core forgot it."""
        session = self.core.sessions.get(client_id)
        return session.state if session is not None else None

    def uplinks(self, actions: Iterable[Action]) -> list[PublishUpstream]:
        """Every PublishUpstream among ``actions``."""
        return of_type(actions, PublishUpstream)

    def check_invariants(self) -> None:
        """Structural invariants that must hold after every input."""
        core = self.core
        assert core.budget.used == sum(len(s.queue) for s in core.sessions.values())
        assert core.budget.used >= 0
        for address, client_id in core.by_address.items():
            assert client_id in core.sessions, (address, client_id)
            assert core.sessions[client_id].address == address
        for session in core.sessions.values():
            if session.state is SessionState.ASLEEP:
                assert session.inflight is None, session
            if session.inflight is not None:
                assert session.state in (SessionState.ACTIVE, SessionState.AWAKE), session
            assert len(session.queue) <= core.settings.queue_per_client + 1
            assert len(session.registry) <= core.settings.max_topics_per_client
            assert len(session.subscriptions) <= core.settings.max_subscriptions_per_client
        assert core.budget.used <= core.settings.queue_total + len(core.sessions)

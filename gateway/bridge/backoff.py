"""When to retry a broker connection: jittered exponential backoff; refusals that wait long."""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = [
    "AUTH_FAILURES",
    "LONG_RETRY_DELAY",
    "SESSION_TAKEN_OVER",
    "STABLE_AFTER",
    "Backoff",
]

#: CONNACK reason codes (MQTT 5 numbering; paho maps 3.1.1 codes onto them) that retrying
#: cannot fix: bad user name or password, not authorized, banned, bad authentication method.
AUTH_FAILURES = frozenset({0x86, 0x87, 0x8A, 0x8C})
#: MQTT 5 DISCONNECT reason "session taken over": another connection uses our client id.
SESSION_TAKEN_OVER = 0x8E
#: Wait after a refusal that retrying cannot fix (credentials, TLS verification).
LONG_RETRY_DELAY = 120.0
#: A connection up this long counts as stable: the reconnect backoff starts over.
STABLE_AFTER = 10.0


class Backoff:
    """Jittered exponential backoff: ``initial`` doubling up to ``maximum``, +-``jitter``."""

    def __init__(
        self,
        initial: float = 0.1,
        maximum: float = 30.0,
        jitter: float = 0.2,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._initial = initial
        self._maximum = maximum
        self._jitter = jitter
        self._rng = rng
        self._next = initial

    def next(self) -> float:
        """The delay before the next attempt; doubles the one after."""
        delay = self._next
        self._next = min(self._next * 2, self._maximum)
        return delay * (1 + self._jitter * (2 * self._rng() - 1))

    def reset(self) -> None:
        """Start again from ``initial`` (after a successful connect)."""
        self._next = self._initial

"""Whether a CONNECT may start a connection: per-source rate, half-open cap, allow-list (pure).

Anti-abuse rules, checked before a CONNECT changes anything:

1. A token bucket per source address (``connect_per_second``, burst ``connect_burst``). Beyond
   it the CONNECT is dropped without an answer and counted: answering a flood would let a
   spoofed source reflect traffic at a victim. The buckets live in a bounded dict.
2. The allow-list (``AccessPolicy.clients``): an unknown ClientId, or a known one from the wrong
   transport or address, gets CONNACK "rejected: not supported" and a (rate-limited) WARNING.
3. At most ``max_connecting`` sessions half-open (CONNECTING: will being prompted, or the
   node's own broker connection being opened): beyond it CONNACK "rejected: congestion".

Whatever an unknown source sends, the gateway never answers with more bytes than it received:
CONNACK (3 bytes) is smaller than any CONNECT (6 or more), WILLTOPICREQ and DISCONNECT are 2,
GWINFO (3) equals SEARCHGW (3) (tests/core/test_admission.py checks every message type).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Hashable, Mapping
from itertools import islice
from typing import Final

from gateway.core.access import AccessControl
from gateway.core.session import ClientSession, SessionState
from gateway.core.settings import CoreSettings
from gateway.protocol.constants import ReturnCode

__all__ = ["Admission", "ConnectLimiter"]

_LOGGER = logging.getLogger(__name__)

_MAX_SOURCES: Final = 10_000  # token buckets kept at once
_WARN_INTERVAL: Final = 10.0  # seconds between two "refused by the allow-list" warnings


class ConnectLimiter:
    """A token bucket per source: ``rate`` CONNECTs per second, ``burst`` at once.

    ``rate`` 0 turns it off. A source absent from the table has a full bucket, so the table can
    drop refilled entries (and, under a flood of distinct sources, the oldest ones) at any time.
    """

    __slots__ = ("_buckets", "burst", "max_sources", "rate")

    def __init__(self, rate: float, burst: int, max_sources: int = _MAX_SOURCES) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_sources = max_sources
        self._buckets: dict[Hashable, tuple[float, float]] = {}  # source -> (tokens, at)

    def allow(self, source: Hashable, now: float) -> bool:
        """Take one token for ``source`` at ``now``; False when it has none left."""
        if self.rate <= 0:
            return True
        entry = self._buckets.get(source)
        if entry is None:
            if len(self._buckets) >= self.max_sources:
                self._shrink(now)
            tokens = self.burst
        else:
            tokens = min(self.burst, entry[0] + (now - entry[1]) * self.rate)
        if tokens < 1.0:
            self._buckets[source] = (tokens, now)
            return False
        self._buckets[source] = (tokens - 1.0, now)
        return True

    def _shrink(self, now: float) -> None:
        refill = self.burst / self.rate
        full = [s for s, (_, at) in self._buckets.items() if now - at >= refill]
        for source in full:
            del self._buckets[source]
        if len(self._buckets) >= self.max_sources:
            # A flood of distinct (likely spoofed) sources: forget the oldest half. At worst
            # a source gets a fresh burst; memory stays bounded.
            for source in list(islice(self._buckets, len(self._buckets) // 2)):
                del self._buckets[source]

    def __len__(self) -> int:
        return len(self._buckets)

    def __repr__(self) -> str:
        return f"<ConnectLimiter {self.rate}/s burst={self.burst:g} sources={len(self._buckets)}>"


class Admission:
    """The engine's gatekeeper for CONNECT (see the module docstring)."""

    __slots__ = (
        "_connecting",
        "_counters",
        "_sessions",
        "_suppressed",
        "_warned_at",
        "access",
        "limiter",
        "max_connecting",
    )

    def __init__(
        self,
        settings: CoreSettings,
        access: AccessControl,
        sessions: Mapping[str, ClientSession],
        counters: Counter[str],
    ) -> None:
        self.access = access
        self.limiter = ConnectLimiter(settings.connect_per_second, settings.connect_burst)
        self.max_connecting = settings.max_connecting
        self._sessions = sessions
        self._counters = counters
        # A superset of the CONNECTING ClientIds (every admitted CONNECT is added; ids that left
        # CONNECTING are pruned only when the cap is reached), so the engine needs no hook on
        # every transition and the set never exceeds the cap.
        self._connecting = {
            cid for cid, s in sessions.items() if s.state is SessionState.CONNECTING
        }
        self._warned_at: float | None = None
        self._suppressed = 0

    def check_connect(self, address: Hashable, client_id: str, now: float) -> ReturnCode | None:
        """ACCEPTED to go on; a CONNACK code to refuse with; None to drop without an answer."""
        if not self.limiter.allow(address, now):
            self._counters["connect_rate_limited"] += 1
            return None
        if not self.access.admits(client_id, address):
            self._counters["connect_refused_access"] += 1
            self._warn_refused(client_id, address, now)
            return ReturnCode.REJECTED_NOT_SUPPORTED
        connecting = self._connecting
        if client_id not in connecting and len(connecting) >= self.max_connecting:
            sessions = self._sessions
            self._connecting = connecting = {
                cid
                for cid in connecting
                if (s := sessions.get(cid)) is not None and s.state is SessionState.CONNECTING
            }
            if len(connecting) >= self.max_connecting:
                self._counters["connect_refused_max_connecting"] += 1
                return ReturnCode.REJECTED_CONGESTION
        connecting.add(client_id)
        return ReturnCode.ACCEPTED

    def _warn_refused(self, client_id: str, address: Hashable, now: float) -> None:
        if self._warned_at is not None and now - self._warned_at < _WARN_INTERVAL:
            self._suppressed += 1
            return
        suppressed, self._suppressed = self._suppressed, 0
        self._warned_at = now
        _LOGGER.warning(
            "CONNECT from %r at %s refused: not on the allow-list ([[access.clients]])%s",
            client_id,
            address,
            f" ({suppressed} more refused since the last warning)" if suppressed else "",
        )

    @property
    def connecting(self) -> int:
        """Sessions admitted and possibly still CONNECTING (exact once the cap is reached)."""
        return len(self._connecting)

    def __repr__(self) -> str:
        return (
            f"<Admission {self.limiter!r} connecting<={len(self._connecting)}/"
            f"{self.max_connecting} {self.access!r}>"
        )

"""Rate-limited WARNINGs for what peers send wrong: one line per peer and interval, counted.

A node sending garbage in a loop must not flood the log (or the SD card of a Raspberry Pi): the
transports say the first bad frame of each peer, then at most one line per interval with the
number suppressed since.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable

__all__ = ["WarningLimiter"]


class WarningLimiter:
    """Lets at most one WARNING per key through every ``interval`` seconds and counts the rest.

    The next line let through for a key says how many were suppressed since the last one.
    """

    __slots__ = ("_clock", "_logger", "_seen", "interval", "max_keys")

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        *,
        max_keys: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self.interval = interval
        self.max_keys = max_keys
        self._clock = clock
        self._seen: dict[Hashable, list[float]] = {}  # key -> [last logged at, suppressed]

    def warning(self, key: Hashable, msg: str, *args: object) -> bool:
        """Log ``msg % args`` at WARNING unless ``key`` logged one recently; True if logged."""
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.interval:
            seen[1] += 1
            return False
        if len(self._seen) >= self.max_keys:
            self._seen.clear()
        self._seen[key] = [now, 0]
        if seen is not None and seen[1]:
            self._logger.warning(
                msg + " (%d similar suppressed in %.0f s)",
                *args,
                seen[1],
                now - seen[0],
                stacklevel=2,
            )
        else:
            self._logger.warning(msg, *args, stacklevel=2)
        return True

    def __repr__(self) -> str:
        return f"<WarningLimiter interval={self.interval}s keys={len(self._seen)}>"

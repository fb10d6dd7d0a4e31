"""A lazy deadline heap: one entry per (session, kind); stale entries are re-checked."""

from __future__ import annotations

import heapq
import itertools

__all__ = ["TimerHeap"]


class TimerHeap:
    """Deadlines keyed by (name, kind); the owner re-validates each popped entry.

    Pushing never removes older entries: the engine looks at the session's real deadline when an
    entry pops and re-schedules if it moved. This keeps the hot path (a message refreshing a
    keep-alive) free of heap operations.
    """

    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str, str]] = []
        self._seq = itertools.count()

    def push(self, deadline: float, name: str, kind: str) -> None:
        """Schedule a check of ``name``'s ``kind`` timer at ``deadline``."""
        heapq.heappush(self._heap, (deadline, next(self._seq), name, kind))

    def pop_due(self, now: float) -> list[tuple[str, str]]:
        """Every (name, kind) whose entry is due at ``now``."""
        due: list[tuple[str, str]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, name, kind = heapq.heappop(heap)
            due.append((name, kind))
        return due

    def earliest(self) -> float | None:
        """The earliest scheduled check, or None."""
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)

    def __repr__(self) -> str:
        return f"<TimerHeap entries={len(self._heap)} earliest={self.earliest()}>"

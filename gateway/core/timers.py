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

    __slots__ = ("_compact_at", "_heap", "_seq")

    _MIN_COMPACT = 1024

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str, str]] = []
        self._seq = itertools.count()
        self._compact_at = self._MIN_COMPACT

    def push(self, deadline: float, name: str, kind: str) -> None:
        """Schedule a check of ``name``'s ``kind`` timer at ``deadline``."""
        heapq.heappush(self._heap, (deadline, next(self._seq), name, kind))
        if len(self._heap) >= self._compact_at:
            self._compact()

    def _compact(self) -> None:
        """Keep only the earliest entry per (name, kind).

        Fix: every state change (CONNECT, sleep, wake, send failure) pushed an entry that stayed
        until its deadline, so a node flooding such messages grew the heap without bound. Later
        entries of one key are redundant: the owner re-validates the earliest when it pops and
        pushes the real deadline again. Amortised O(1) per push (the threshold doubles).
        """
        earliest: dict[tuple[str, str], tuple[float, int, str, str]] = {}
        for entry in self._heap:
            key = (entry[2], entry[3])
            kept = earliest.get(key)
            if kept is None or entry < kept:
                earliest[key] = entry
        self._heap = list(earliest.values())
        heapq.heapify(self._heap)
        self._compact_at = max(self._MIN_COMPACT, 2 * len(self._heap))

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

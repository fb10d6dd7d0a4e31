"""Bounded delivery queues for nodes that cannot take a message now (asleep, offline, busy)."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

__all__ = ["Delivery", "QueueBudget", "enqueue"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One broker message waiting for one node; ``qos`` is already min(message, subscription)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool = False


@dataclass(slots=True)
class QueueBudget:
    """The gateway-wide bound on buffered deliveries, and the drop counters by reason."""

    per_client: int
    total: int
    used: int = 0
    drops: Counter[str] | None = None

    def __post_init__(self) -> None:
        if self.drops is None:
            self.drops = Counter()

    def count_drop(self, reason: str) -> None:
        """Count one dropped delivery under ``reason``."""
        assert self.drops is not None
        self.drops[reason] += 1


def enqueue(queue: deque[Delivery], item: Delivery, budget: QueueBudget) -> bool:
    """Append ``item`` within the bounds; False when it had to be refused.

    Overflow policy (DESIGN §4): the node's oldest QoS 0 message goes first; when it has none,
    the new message is refused. Every drop is counted by reason.
    """
    if len(queue) >= budget.per_client or budget.used >= budget.total:
        for index, queued in enumerate(queue):
            if queued.qos == 0:
                del queue[index]
                budget.used -= 1
                budget.count_drop("overflow_oldest_qos0")
                break
        else:
            budget.count_drop("overflow_refused")
            return False
    queue.append(item)
    budget.used += 1
    return True


def take(queue: deque[Delivery], budget: QueueBudget) -> Delivery:
    """Pop the next delivery, releasing its budget."""
    budget.used -= 1
    return queue.popleft()


def discard_all(queue: deque[Delivery], budget: QueueBudget, reason: str) -> None:
    """Empty a queue (clean session, forgotten session), counting each drop."""
    if queue:
        budget.used -= len(queue)
        assert budget.drops is not None
        budget.drops[reason] += len(queue)
        queue.clear()


__all__ += ["discard_all", "take"]

"""Which nodes subscribed to which filters: exact filters by dict, wildcard filters by scan."""

from __future__ import annotations

from collections.abc import Iterator

from gateway.core.topics import is_wildcard, topic_matches

__all__ = ["SubscriptionIndex"]


class SubscriptionIndex:
    """filter -> {client_id: granted QoS}, with a fast path for concrete filters.

    A broker message is matched against the concrete filter equal to its topic in O(1) and
    against each distinct wildcard filter; the number of distinct wildcard filters is small in
    practice (a fleet shares a few), while concrete per-node topics can number thousands.
    """

    __slots__ = ("_exact", "_wild")

    def __init__(self) -> None:
        self._exact: dict[str, dict[str, int]] = {}
        self._wild: dict[str, dict[str, int]] = {}

    def add(self, topic_filter: str, client_id: str, qos: int) -> tuple[bool, int]:
        """Record a subscription; returns (first subscriber of this filter, max QoS over all)."""
        table = self._wild if is_wildcard(topic_filter) else self._exact
        subscribers = table.setdefault(topic_filter, {})
        first = not subscribers
        subscribers[client_id] = qos
        return first, max(subscribers.values())

    def remove(self, topic_filter: str, client_id: str) -> bool:
        """Forget a subscription; True when no node is left on this filter."""
        table = self._wild if is_wildcard(topic_filter) else self._exact
        subscribers = table.get(topic_filter)
        if subscribers is None:
            return False
        subscribers.pop(client_id, None)
        if subscribers:
            return False
        del table[topic_filter]
        return True

    def matches(self, topic: str) -> Iterator[tuple[str, str, int]]:
        """Every (filter, client_id, granted QoS) whose filter matches ``topic``."""
        exact = self._exact.get(topic)
        if exact:
            for client_id, qos in exact.items():
                yield topic, client_id, qos
        for topic_filter, subscribers in self._wild.items():
            if topic_matches(topic_filter, topic):
                for client_id, qos in subscribers.items():
                    yield topic_filter, client_id, qos

    def filters(self) -> Iterator[tuple[str, int]]:
        """Every distinct filter with the highest QoS granted on it (to restore upstream)."""
        for table in (self._exact, self._wild):
            for topic_filter, subscribers in table.items():
                yield topic_filter, max(subscribers.values())

    def __len__(self) -> int:
        return len(self._exact) + len(self._wild)

    def __repr__(self) -> str:
        return f"<SubscriptionIndex exact={len(self._exact)} wildcard={len(self._wild)}>"

"""Topic ids per node: normal (registered), pre-defined (global), short names; matching."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.protocol.constants import TopicIdType

__all__ = [
    "TopicRegistry",
    "is_wildcard",
    "mqtt_safe",
    "topic_matches",
    "valid_filter",
    "valid_topic_level",
    "valid_topic_name",
]

_RESERVED_IDS = frozenset((0x0000, 0xFFFF))  # [§5.3.11]
_USABLE_IDS = 0xFFFE  # 1..0xFFFE


def is_wildcard(topic_filter: str) -> bool:
    """True when the filter contains ``+`` or ``#``."""
    return "+" in topic_filter or "#" in topic_filter


# Characters an MQTT broker refuses in a UTF-8 string (MQTT 5 §1.5.4: NUL, control characters,
# non-characters): one such topic or ClientId makes the broker drop the connection, which in
# aggregating mode is every node's, so they are refused at the gateway.
_BAD_CHARS = re.compile(
    "[\x00-\x1f\x7f-\x9f\ufdd0-\ufdef"
    + "".join(chr(p << 16 | 0xFFFE) + chr(p << 16 | 0xFFFF) for p in range(17))
    + "]"
)


def mqtt_safe(text: str) -> bool:
    """True when ``text`` has no character an MQTT broker refuses in a UTF-8 string."""
    return _BAD_CHARS.search(text) is None


def valid_topic_name(name: str) -> bool:
    """A concrete MQTT topic name: non-empty, no wildcards, no NUL."""
    return bool(name) and not is_wildcard(name) and mqtt_safe(name)


def valid_topic_level(text: str) -> bool:
    """Text that may be placed inside a topic name: no wildcards, no NUL (may be empty)."""
    return not is_wildcard(text) and mqtt_safe(text)


def valid_filter(topic_filter: str) -> bool:
    """An MQTT topic filter: ``#`` only as the whole last level, ``+`` only as a whole level."""
    if not topic_filter or not mqtt_safe(topic_filter):
        return False
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching; ``$``-topics never match a leading wildcard (MQTT 3.1.1 §4.7.2)."""
    if topic_filter == topic:
        return True
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for index, level in enumerate(f_levels):
        if level == "#":
            return True
        if index >= len(t_levels):
            return False
        if level != "+" and level != t_levels[index]:
            return False
    return len(f_levels) == len(t_levels)


@dataclass(slots=True)
class TopicRegistry:
    """One node's id <-> name table [§7.3: per client, so a wrong id never hits another node].

    Pre-defined ids are global and never handed out as normal ids; ids wrap within 1..0xFFFE.

    ``routes`` holds the uplink route cache (``GatewayCore.qos0_route``): whatever the runtime
    made for a topic id this node publishes QoS 0 to. It lives here so that every change of the
    table (``forget``, ``clear``) drops it; it is never saved.
    """

    predefined: Mapping[int, str]
    limit: int = 1000
    by_id: dict[int, str] = field(default_factory=dict)
    by_name: dict[str, int] = field(default_factory=dict)
    next_id: int = 1
    routes: dict[bytes, Any] = field(default_factory=dict, repr=False, compare=False)

    def id_for(self, name: str) -> int | None:
        """The normal id registered for ``name``, if any."""
        return self.by_name.get(name)

    def name_for(self, topic_id: int) -> str | None:
        """The name of a registered normal id, if any."""
        return self.by_id.get(topic_id)

    def register(self, name: str) -> int | None:
        """Register ``name`` (idempotent); None when the per-node limit is reached."""
        existing = self.by_name.get(name)
        if existing is not None:
            return existing
        if len(self.by_id) >= self.limit or len(self.by_id) >= _USABLE_IDS - len(self.predefined):
            # Fix: with every id taken (e.g. a large limit) the search below never ended.
            return None
        topic_id = self.next_id
        while topic_id in self.by_id or topic_id in self.predefined or topic_id in _RESERVED_IDS:
            topic_id = topic_id + 1 if topic_id < 0xFFFE else 1
        self.next_id = topic_id + 1 if topic_id < 0xFFFE else 1
        self.by_id[topic_id] = name
        self.by_name[name] = topic_id
        return topic_id

    def forget(self, topic_id: int) -> None:
        """Drop a registration (the node rejected our REGISTER or PUBACKed 'invalid topic id')."""
        name = self.by_id.pop(topic_id, None)
        if name is not None:
            self.by_name.pop(name, None)
        self.routes.clear()

    def clear(self) -> None:
        """Forget every registration (clean session)."""
        self.by_id.clear()
        self.by_name.clear()
        self.routes.clear()
        self.next_id = 1

    def resolve(self, topic_id_type: TopicIdType, topic_id: int) -> str | None:
        """The topic name a PUBLISH from the node refers to, or None when unknown."""
        if topic_id_type is TopicIdType.NORMAL:
            return self.by_id.get(topic_id)
        if topic_id_type is TopicIdType.PREDEFINED:
            return self.predefined.get(topic_id)
        return self.resolve_short(topic_id)

    @staticmethod
    def resolve_short(topic_id: int) -> str | None:
        """The topic a SHORT_NAME TopicId stands for, or None when it is no valid topic name."""
        raw = bytes(((topic_id >> 8) & 0xFF, topic_id & 0xFF))
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        # Fix: a short name such as "a#" or "+/" is no MQTT topic name; publishing it upstream
        # would make the broker close the connection (the shared one, in aggregating mode).
        return name if valid_topic_name(name) else None

    def __len__(self) -> int:
        return len(self.by_id)

"""Who may connect, and which topics each node may publish and subscribe to (pure).

An ``AccessPolicy`` is plain configuration: an allow-list of ClientId patterns, optionally bound
to a transport and an address, and topic rules templated by ClientId. The default policy is
empty, and empty means open: with no allow-list every ClientId may connect, and with no rules
every topic may be used. Once one rule exists, a node may use only what the rules whose
``client_id`` pattern matches it grant (the union of their patterns); nothing else.

The engine asks an ``AccessControl`` (the policy plus a bounded per-ClientId cache) at every
point a node names a topic: REGISTER, PUBLISH (normal, pre-defined and short ids, QoS -1
included), SUBSCRIBE and the will topic. Rules apply to topics as the node names them, before
``uplink_topic_template`` rewrites them, and the same in both modes.

Patterns are shell globs (``*``, ``?``, ``[...]``): ClientIds match case-sensitively, addresses
(``str(address)``: ``10.0.0.7:1884``, ``0013A20041B3C4D5``, ``AA:BB:...``) case-insensitively.
A transport is named as in ``[transports.*] type``; the core knows an address's transport only by
its class name (see ``TRANSPORT_ADDRESS_TYPES``), so it imports no transport.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Final

from gateway.core.topics import valid_filter, valid_topic_level

__all__ = [
    "CLIENT_ID_PLACEHOLDER",
    "TRANSPORT_ADDRESS_TYPES",
    "AccessControl",
    "AccessPolicy",
    "ClientPattern",
    "TopicRule",
    "check_topic_pattern",
    "expand_pattern",
    "filter_covers",
]

#: transport name (as in ``[transports.NAME] type``) -> the class name of its addresses.
TRANSPORT_ADDRESS_TYPES: Final[Mapping[str, str]] = {
    "udp": "UdpAddress",
    "xbee": "XBeeAddress",
    "serial": "SerialAddress",
    "ble": "BleAddress",
    "forwarded": "ForwardedAddress",  # a node behind an MQTT-SN forwarder [§5.5]
}

CLIENT_ID_PLACEHOLDER: Final = "{client_id}"
_GRANTS_CACHE: Final = 10_000  # ClientIds whose expanded patterns are kept
_PUBLISH_CACHE: Final = 65_536  # (ClientId, topic) publish decisions kept (the hot path)


def _glob(pattern: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern), re.IGNORECASE if ignore_case else 0)


def filter_covers(pattern: str, topic_filter: str) -> bool:
    """True when every topic ``topic_filter`` matches is also matched by ``pattern``.

    Both are MQTT topic filters (a topic name is a filter without wildcards, so this is plain
    matching too): ``sensors/n1/#`` covers ``sensors/n1/+/temp`` and ``sensors/n1``, but not
    ``sensors/+/temp``. A leading wildcard never covers a ``$`` topic (MQTT 3.1.1 §4.7.2).
    """
    if pattern == topic_filter:
        return True
    p_levels = pattern.split("/")
    f_levels = topic_filter.split("/")
    if topic_filter.startswith("$") and p_levels[0] in ("+", "#"):
        return False
    for index, level in enumerate(p_levels):
        if level == "#":
            return True  # also covers the parent level itself: "a/#" matches "a"
        if index >= len(f_levels):
            return False
        wanted = f_levels[index]
        if wanted == "#":
            return False  # the filter reaches any depth; only a "#" here could cover it
        if level == "+":
            continue
        if level != wanted:
            return False  # includes wanted == "+" under a literal level
    return len(f_levels) == len(p_levels)


def expand_pattern(pattern: str, client_id: str) -> str | None:
    """``pattern`` with ``{client_id}`` filled in; None when this ClientId cannot be used there.

    Fix-by-design: a ClientId such as ``+``, ``#`` or ``a/b`` placed into ``sensors/{client_id}/#``
    would widen the grant to other nodes' topics, so such a ClientId (or an empty one, as for an
    anonymous QoS -1 sender) gets nothing from a templated pattern.
    """
    if CLIENT_ID_PLACEHOLDER not in pattern:
        return pattern
    if not client_id or "/" in client_id or not valid_topic_level(client_id):
        return None
    return pattern.replace(CLIENT_ID_PLACEHOLDER, client_id)


def check_topic_pattern(pattern: str) -> None:
    """Raise ValueError unless ``pattern`` is a topic filter with at most ``{client_id}``."""
    if not isinstance(pattern, str):
        raise ValueError(f"{pattern!r} is not a string")
    rest = pattern.replace(CLIENT_ID_PLACEHOLDER, "")
    if "{" in rest or "}" in rest:
        raise ValueError(f"{pattern!r}: the only placeholder is {CLIENT_ID_PLACEHOLDER}")
    if not valid_filter(pattern.replace(CLIENT_ID_PLACEHOLDER, "x")):
        raise ValueError(
            f"{pattern!r} is not a valid topic filter ('#' only as the last whole level, "
            "'+' only as a whole level)"
        )


@dataclass(frozen=True, slots=True)
class ClientPattern:
    """One allow-list entry: a ClientId glob, optionally bound to a transport and an address.

    Attributes:
        client_id: ClientId glob, e.g. ``"sensor-*"``.
        transport: ``udp``, ``xbee``, ``serial``, ``ble`` or ``forwarded``; None: any.
        address: glob on the node's address as printed, e.g. ``"0013A200*"``; None: any.
    """

    client_id: str = "*"
    transport: str | None = None
    address: str | None = None
    _client_re: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _address_re: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.client_id, str):
            raise ValueError(f"client-id {self.client_id!r} is not a string")
        if self.transport is not None and self.transport not in TRANSPORT_ADDRESS_TYPES:
            raise ValueError(
                f"transport {self.transport!r}: use one of {', '.join(TRANSPORT_ADDRESS_TYPES)}"
            )
        object.__setattr__(self, "_client_re", _glob(self.client_id))
        address = None if self.address is None else _glob(self.address, ignore_case=True)
        object.__setattr__(self, "_address_re", address)

    def matches(self, client_id: str, address: Hashable) -> bool:
        """True when a node with ``client_id`` at ``address`` fits this entry."""
        if self._client_re.match(client_id) is None:
            return False
        if (
            self.transport is not None
            and type(address).__name__ != TRANSPORT_ADDRESS_TYPES[self.transport]
        ):
            return False
        return self._address_re is None or self._address_re.match(str(address)) is not None


@dataclass(frozen=True, slots=True)
class TopicRule:
    """What the nodes whose ClientId matches ``client_id`` may publish and subscribe to.

    Patterns are topic filters that may contain ``{client_id}``; a PUBLISH topic must match one
    of ``publish``, a SUBSCRIBE filter must be covered by one of ``subscribe`` (see
    ``filter_covers``: ``cmd/{client_id}/#`` allows ``cmd/n1/+/set`` but not ``cmd/#``).
    """

    client_id: str = "*"
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    _client_re: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.client_id, str):
            raise ValueError(f"client-id {self.client_id!r} is not a string")
        for name in ("publish", "subscribe"):
            patterns = tuple(getattr(self, name))
            for pattern in patterns:
                check_topic_pattern(pattern)
            object.__setattr__(self, name, patterns)
        object.__setattr__(self, "_client_re", _glob(self.client_id))

    def applies_to(self, client_id: str) -> bool:
        """True when this rule speaks about ``client_id``."""
        return self._client_re.match(client_id) is not None


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """The allow-list and topic rules; the default (both empty) allows everything.

    Attributes:
        clients: when non-empty, only a node matching one entry may CONNECT (others get
            CONNACK "rejected: not supported"), and a PINGREQ with ClientId moves a session
            only to an address the allow-list accepts for it.
        rules: when non-empty, topics a node names must be granted by a rule matching it.
    """

    clients: tuple[ClientPattern, ...] = ()
    rules: tuple[TopicRule, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "clients", tuple(self.clients))
        object.__setattr__(self, "rules", tuple(self.rules))

    def admits(self, client_id: str, address: Hashable) -> bool:
        """True when ``client_id`` may connect from ``address``."""
        return not self.clients or any(c.matches(client_id, address) for c in self.clients)

    def grants(self, client_id: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(publish patterns, subscribe patterns) for ``client_id``, ``{client_id}`` filled in."""
        publish: list[str] = []
        subscribe: list[str] = []
        for rule in self.rules:
            if not rule.applies_to(client_id):
                continue
            for patterns, into in ((rule.publish, publish), (rule.subscribe, subscribe)):
                for pattern in patterns:
                    expanded = expand_pattern(pattern, client_id)
                    if expanded is not None and expanded not in into:
                        into.append(expanded)
        return tuple(publish), tuple(subscribe)


class AccessControl:
    """An ``AccessPolicy`` with each ClientId's expanded patterns cached (bounded)."""

    __slots__ = ("_grants", "_publish", "policy", "restricted_clients", "restricted_topics")

    def __init__(self, policy: AccessPolicy) -> None:
        self.policy = policy
        self.restricted_clients = bool(policy.clients)
        self.restricted_topics = bool(policy.rules)
        self._grants: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self._publish: dict[tuple[str, str], bool] = {}

    def admits(self, client_id: str, address: Hashable) -> bool:
        """True when ``client_id`` may connect from ``address`` (always, without allow-list)."""
        return not self.restricted_clients or self.policy.admits(client_id, address)

    def may_publish(self, client_id: str, topic: str) -> bool:
        """True when ``client_id`` may publish to ``topic`` (also REGISTER and will topics)."""
        if not self.restricted_topics:
            return True
        key = (client_id, topic)
        allowed = self._publish.get(key)
        if allowed is None:
            if len(self._publish) >= _PUBLISH_CACHE:
                self._publish.clear()
            allowed = any(filter_covers(p, topic) for p in self._grants_of(client_id)[0])
            self._publish[key] = allowed
        return allowed

    def may_subscribe(self, client_id: str, topic_filter: str) -> bool:
        """True when an allowed subscribe pattern covers ``topic_filter``."""
        if not self.restricted_topics:
            return True
        return any(filter_covers(p, topic_filter) for p in self._grants_of(client_id)[1])

    def _grants_of(self, client_id: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        grants = self._grants.get(client_id)
        if grants is None:
            if len(self._grants) >= _GRANTS_CACHE:
                self._grants.clear()  # cheap to rebuild; keeps memory bounded under a flood
            grants = self._grants[client_id] = self.policy.grants(client_id)
        return grants

    def __repr__(self) -> str:
        return (
            f"<AccessControl clients={len(self.policy.clients)} rules={len(self.policy.rules)}"
            f" cached={len(self._grants)}/{len(self._publish)}>"
        )

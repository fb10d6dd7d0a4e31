"""What the core asks the runtime to do: plain values, one class per kind of I/O.

Slotted dataclasses compared by value, but not frozen: the core builds one or two per message
on the hot path, and a frozen dataclass's ``__init__`` (``object.__setattr__`` per field) costs
about 4x a plain one. Nothing mutates or hashes an action once it is returned.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from gateway.bridge.base import Will
from gateway.protocol.messages import Message

__all__ = [
    "Action",
    "Broadcast",
    "CloseUpstreamSession",
    "OpenUpstreamSession",
    "PublishUpstream",
    "SendFrame",
    "SubscribeUpstream",
    "UnsubscribeUpstream",
]


class Action:
    """Base of every action; the runtime ``match``es on the concrete class."""

    __slots__ = ()


@dataclass(slots=True)
class SendFrame(Action):
    """Send ``message`` to one node at ``address``."""

    address: Hashable
    message: Message


@dataclass(slots=True)
class Broadcast(Action):
    """Broadcast ``message`` (ADVERTISE, GWINFO) with ``radius``.

    ``via`` names the address whose transport should carry it (the SEARCHGW's sender); where that
    transport cannot broadcast, the runtime unicasts to ``via``. ``via=None`` means every transport.
    """

    message: Message
    radius: int = 0
    via: Hashable | None = None


@dataclass(slots=True)
class PublishUpstream(Action):
    """Publish at the broker; QoS 1/2 carry a ``token`` the runtime reports back when acked."""

    client_id: str | None
    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    token: int | None = None


@dataclass(slots=True)
class SubscribeUpstream(Action):
    """Subscribe at the broker (client_id None: the shared aggregating connection)."""

    client_id: str | None
    topic_filter: str
    qos: int


@dataclass(slots=True)
class UnsubscribeUpstream(Action):
    """Unsubscribe at the broker (client_id None: the shared aggregating connection)."""

    client_id: str | None
    topic_filter: str


@dataclass(slots=True)
class OpenUpstreamSession(Action):
    """Transparent mode: open (or reopen) the node's own broker connection."""

    client_id: str
    clean_session: bool
    will: Will | None
    keepalive: int


@dataclass(slots=True)
class CloseUpstreamSession(Action):
    """Transparent mode: close the node's connection; ``fire_will`` closes without DISCONNECT."""

    client_id: str
    fire_will: bool

"""The pure gateway engine: sessions, topics, QoS flows, sleeping clients; no I/O, no clock."""

from gateway.core.actions import (
    Action,
    Broadcast,
    CloseUpstreamSession,
    OpenUpstreamSession,
    PublishUpstream,
    SendFrame,
    SubscribeUpstream,
    UnsubscribeUpstream,
)
from gateway.core.engine import CoreState, GatewayCore
from gateway.core.session import TRANSITIONS, ClientSession, Event, SessionState
from gateway.core.settings import CoreSettings, Mode

__all__ = [
    "TRANSITIONS",
    "Action",
    "Broadcast",
    "ClientSession",
    "CloseUpstreamSession",
    "CoreSettings",
    "CoreState",
    "Event",
    "GatewayCore",
    "Mode",
    "OpenUpstreamSession",
    "PublishUpstream",
    "SendFrame",
    "SessionState",
    "SubscribeUpstream",
    "UnsubscribeUpstream",
]

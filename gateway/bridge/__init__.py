"""Bridges to the MQTT broker: aggregating (one connection) or transparent (one per node).

settings = parse_broker_url("mqtts://user:pw@broker:8883?ca-file=/etc/ca.pem")
upstream = create_upstream(settings, "aggregating", gateway_id="gw-kitchen")
await upstream.start(events)
"""

from __future__ import annotations

from typing import Any, Literal

from gateway.bridge.aggregating import DEFAULT_STATUS_TOPIC, AggregatingUpstream
from gateway.bridge.base import Upstream, UpstreamEvents, Will
from gateway.bridge.connection import BrokerConnection, ConnectionStats
from gateway.bridge.transparent import TransparentUpstream
from gateway.bridge.url import BrokerSettings, parse_broker_url
from gateway.errors import ConfigError

__all__ = [
    "DEFAULT_STATUS_TOPIC",
    "AggregatingUpstream",
    "BrokerConnection",
    "BrokerSettings",
    "ConnectionStats",
    "TransparentUpstream",
    "Upstream",
    "UpstreamEvents",
    "Will",
    "create_upstream",
    "parse_broker_url",
]

Mode = Literal["aggregating", "transparent"]


def create_upstream(
    settings: BrokerSettings | str,
    mode: Mode | str = "aggregating",
    **options: Any,
) -> Upstream:
    """The bridge for ``mode``; ``settings`` may be a broker URL.

    ``options`` go to the mode's constructor: ``AggregatingUpstream(gateway_id=, status_topic=,
    client_id=, client_id_property=, close_timeout=)`` or ``TransparentUpstream(gateway_id=,
    status_topic=, client_id=, outbox_limit=, close_timeout=, max_connecting=)``.
    """
    if isinstance(settings, str):
        settings = parse_broker_url(settings)
    if mode == "aggregating":
        return AggregatingUpstream(settings, **options)
    if mode == "transparent":
        return TransparentUpstream(settings, **options)
    raise ConfigError("bridge.mode", f"{mode!r} is not one of aggregating, transparent")

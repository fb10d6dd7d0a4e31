"""Simulated MQTT-SN sensor nodes: pure client state machine, asyncio node, links, fleets."""

from __future__ import annotations

from firmware_sim.battery import Battery, BatteryProfile, PowerState
from firmware_sim.client import ClientState, MqttSnClient, Received, Will
from firmware_sim.fleet import Fleet, FleetSummary
from firmware_sim.link import FrameReceiver, NodeLink
from firmware_sim.node import (
    BatteryEmpty,
    ConnectRefused,
    GatewayLostError,
    NodeCounters,
    PeriodicReport,
    RequestRejected,
    RequestTimeout,
    SimNode,
    SimNodeError,
)
from firmware_sim.udp_link import UdpNodeLink

__all__ = [
    "Battery",
    "BatteryEmpty",
    "BatteryProfile",
    "ClientState",
    "ConnectRefused",
    "Fleet",
    "FleetSummary",
    "FrameReceiver",
    "GatewayLostError",
    "MqttSnClient",
    "NodeCounters",
    "NodeLink",
    "PeriodicReport",
    "PowerState",
    "Received",
    "RequestRejected",
    "RequestTimeout",
    "SimNode",
    "SimNodeError",
    "UdpNodeLink",
    "Will",
]

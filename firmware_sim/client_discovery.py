"""Gateway discovery [§6.1]: SEARCHGW with back-off, ADVERTISE and GWINFO, the gateways heard of.

A mixin of ``MqttSnClient`` (client.py), kept apart because it is one flow: the SEARCHING state
entered from DISCONNECTED or LOST, its SEARCHGW repeats (an identical SEARCHGW heard from another
client counts as ours), and the table of gateways that answered or advertised themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from firmware_sim.client_events import ClientState, GatewayFound, Output
from gateway.errors import LocalProtocolError

__all__ = ["SEARCH_GAP_MAX", "DiscoveryMixin", "GatewayInfo"]

SEARCH_GAP_MAX: Final = 300.0  # the longest gap between two SEARCHGW of one search


@dataclass(slots=True)
class GatewayInfo:
    """A gateway heard of by ADVERTISE or GWINFO; ``duration`` is its T_ADV (0 if unknown)."""

    gw_id: int
    gw_add: bytes
    last_seen: float
    duration: int = 0


class DiscoveryMixin:
    """Gateway discovery half of ``MqttSnClient``: SEARCHING, and the gateways heard of."""

    t_searchgw: float
    n_adv: int
    gateway_id: int | None
    gateways: dict[int, GatewayInfo]
    _state: ClientState
    _search_at: float | None
    _search_gap: float
    _search_radius: int
    _search_sent: bool
    _state_before_search: ClientState

    # Provided by MqttSnClient.
    def tick(self, now: float) -> list[Output]:
        raise NotImplementedError  # pragma: no cover

    # ----------------------------------------------------------------- queries

    def known_gateways(self, now: float) -> list[GatewayInfo]:
        """Gateways not yet silent for N_ADV advertisement periods [§6.1]."""
        return [
            gw
            for gw in self.gateways.values()
            if gw.duration == 0 or now <= gw.last_seen + self.n_adv * gw.duration
        ]

    # ----------------------------------------------------------------- commands

    def search_gateway(self, now: float, *, radius: int = 0, delay: float = 0.0) -> list[Output]:
        """SEARCHGW after ``delay`` (the caller's random 0..T_SEARCHGW), repeated with back-off."""
        if self._state not in (ClientState.DISCONNECTED, ClientState.LOST):
            raise LocalProtocolError(
                f"SEARCHGW only when disconnected or lost, not {self._state.name}"
            )
        self._state_before_search = self._state
        self._state = ClientState.SEARCHING
        self._search_radius = radius
        self._search_gap = self.t_searchgw
        self._search_sent = False
        self._search_at = now + delay
        return self.tick(now) if delay <= 0 else []

    def cancel_search(self, now: float) -> list[Output]:
        """Stop searching (the caller gave up); back to the state before ``search_gateway``."""
        if self._state is ClientState.SEARCHING:
            self._state = self._state_before_search
            self._search_at = None
        return []

    # ----------------------------------------------------------------- internals

    def _waiting_to_search(self, radius: int) -> bool:
        searching = self._state is ClientState.SEARCHING and not self._search_sent
        return searching and radius == self._search_radius

    def _searched(self, now: float) -> None:
        """A SEARCHGW went out (ours or an identical one): next one after a doubled gap."""
        self._search_at = now + self._search_gap
        self._search_gap = min(self._search_gap * 2, SEARCH_GAP_MAX)

    def _heard_gateway(self, gw_id: int, gw_add: bytes, duration: int, now: float) -> list[Output]:
        known = self.gateways.get(gw_id)
        self.gateways[gw_id] = GatewayInfo(
            gw_id, gw_add, now, duration or (known.duration if known else 0)
        )
        if self._state is ClientState.SEARCHING:
            self._state = self._state_before_search
            self._search_at = None
            self.gateway_id = gw_id
            return [GatewayFound(gw_id, gw_add)]
        return [] if known else [GatewayFound(gw_id, gw_add)]

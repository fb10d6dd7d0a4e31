"""Pure battery model of a sensor node: charge drawn per radio state and per transmitted byte.

No clock: the caller says how long the node spent in a state (``drain``) and how many bytes it
sent (``on_tx``); listening is part of the awake current. Defaults are a 2400 mAh AA lithium
cell feeding an 802.15.4-class radio (30 mA transmitting at 250 kbit/s, 12 mA listening, 5 uA
asleep).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from typing import Final

__all__ = ["Battery", "BatteryProfile", "PowerState"]

_LOGGER = logging.getLogger(__name__)

_SECONDS_PER_HOUR: Final = 3600.0


class PowerState(Enum):
    """What the node's radio and MCU are doing."""

    AWAKE = "awake"  # MCU on, radio listening (RX / idle)
    SLEEP = "sleep"  # MCU and radio in deep sleep
    OFF = "off"  # battery empty: draws nothing, does nothing


@dataclass(frozen=True, slots=True)
class BatteryProfile:
    """Capacity and current draw; all currents in mA, capacity in mAh."""

    capacity_mah: float = 2400.0
    awake_ma: float = 12.0
    sleep_ma: float = 0.005
    tx_ma: float = 30.0
    bitrate_bps: float = 250_000.0

    def __post_init__(self) -> None:
        if self.capacity_mah <= 0:
            raise ValueError(f"capacity_mah must be > 0, got {self.capacity_mah!r}")
        for name in ("awake_ma", "sleep_ma", "tx_ma"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.bitrate_bps <= 0:
            raise ValueError(f"bitrate_bps must be > 0, got {self.bitrate_bps!r}")

    def current_ma(self, state: PowerState) -> float:
        """Steady current drawn in ``state``."""
        match state:
            case PowerState.AWAKE:
                return self.awake_ma
            case PowerState.SLEEP:
                return self.sleep_ma
            case PowerState.OFF:
                return 0.0

    @property
    def tx_mah_per_byte(self) -> float:
        """Extra charge to transmit one byte, on top of the awake current."""
        seconds_per_byte = 8.0 / self.bitrate_bps
        return max(self.tx_ma - self.awake_ma, 0.0) * seconds_per_byte / _SECONDS_PER_HOUR


class Battery:
    """Remaining charge of one node; ``empty`` once it reaches zero (the node must stop)."""

    def __init__(self, profile: BatteryProfile | None = None, *, level: float = 100.0) -> None:
        if not 0.0 <= level <= 100.0:
            raise ValueError(f"level must be 0..100 %, got {level!r}")
        self.profile = profile or BatteryProfile()
        self.remaining_mah = self.profile.capacity_mah * level / 100.0
        self.tx_bytes = 0
        self.seconds: dict[PowerState, float] = dict.fromkeys(PowerState, 0.0)

    def __repr__(self) -> str:
        return (
            f"<Battery {self.level:.2f}% {self.remaining_mah:.4f}/"
            f"{self.profile.capacity_mah:g} mAh tx={self.tx_bytes}B>"
        )

    @property
    def level(self) -> float:
        """Remaining charge in percent of capacity."""
        return 100.0 * self.remaining_mah / self.profile.capacity_mah

    @property
    def empty(self) -> bool:
        """True once the charge is used up."""
        return self.remaining_mah <= 0.0

    @property
    def consumed_mah(self) -> float:
        """Charge used so far."""
        return self.profile.capacity_mah - self.remaining_mah

    def drain(self, state: PowerState, seconds: float) -> float:
        """Spend ``seconds`` in ``state``; returns the charge drawn (mAh)."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        self.seconds[state] += seconds
        return self._draw(self.profile.current_ma(state) * seconds / _SECONDS_PER_HOUR)

    def on_tx(self, nbytes: int) -> float:
        """Account for transmitting ``nbytes`` (airtime above the awake current)."""
        self.tx_bytes += nbytes
        return self._draw(nbytes * self.profile.tx_mah_per_byte)

    def lifetime_s(self, state: PowerState) -> float:
        """Seconds the remaining charge lasts if the node stays in ``state``."""
        current = self.profile.current_ma(state)
        if current == 0:
            return float("inf")
        return self.remaining_mah / current * _SECONDS_PER_HOUR

    def _draw(self, mah: float) -> float:
        was_empty = self.empty
        drawn = min(mah, self.remaining_mah)
        self.remaining_mah -= drawn
        if self.empty and not was_empty:
            _LOGGER.info("battery empty after %.4f mAh", self.profile.capacity_mah)
        return drawn

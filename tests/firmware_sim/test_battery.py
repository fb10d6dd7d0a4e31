"""The pure battery model: charge per state, per transmitted byte, and running empty."""

from __future__ import annotations

import math

import pytest

from firmware_sim.battery import Battery, BatteryProfile, PowerState


def test_awake_hour_draws_awake_current() -> None:
    """One hour awake at 12 mA uses 12 mAh of 2400: 0.5 %."""
    battery = Battery(BatteryProfile(capacity_mah=2400.0, awake_ma=12.0))
    assert battery.drain(PowerState.AWAKE, 3600.0) == pytest.approx(12.0)
    assert battery.level == pytest.approx(99.5)
    assert battery.consumed_mah == pytest.approx(12.0)
    assert battery.seconds[PowerState.AWAKE] == 3600.0


def test_sleep_is_cheap_and_off_is_free() -> None:
    """Sleeping a day at 5 uA costs 0.12 mAh; OFF costs nothing."""
    battery = Battery()
    assert battery.drain(PowerState.SLEEP, 86400.0) == pytest.approx(0.12)
    assert battery.drain(PowerState.OFF, 86400.0) == 0.0


def test_tx_bytes_cost_airtime_above_awake_current() -> None:
    """1000 bytes at 250 kbit/s = 32 ms at (30 - 12) mA."""
    battery = Battery(BatteryProfile(tx_ma=30.0, awake_ma=12.0, bitrate_bps=250_000.0))
    assert battery.on_tx(1000) == pytest.approx(0.032 * 18.0 / 3600.0)
    assert battery.tx_bytes == 1000


def test_runs_empty_and_stays_at_zero() -> None:
    """Draining past the capacity empties the battery exactly; further draws take nothing."""
    battery = Battery(BatteryProfile(capacity_mah=1.0, awake_ma=36.0))
    assert battery.drain(PowerState.AWAKE, 60.0) == pytest.approx(0.6)
    assert not battery.empty
    assert battery.drain(PowerState.AWAKE, 60.0) == pytest.approx(0.4)
    assert battery.empty and battery.level == 0.0
    assert battery.on_tx(100) == 0.0


def test_lifetime_and_start_level() -> None:
    """A half-full 100 mAh cell lasts 5 h at 10 mA, forever when OFF."""
    battery = Battery(BatteryProfile(capacity_mah=100.0, awake_ma=10.0), level=50.0)
    assert battery.lifetime_s(PowerState.AWAKE) == pytest.approx(5 * 3600.0)
    assert math.isinf(battery.lifetime_s(PowerState.OFF))
    assert "50.00%" in repr(battery)


@pytest.mark.parametrize(
    "kwargs",
    [{"capacity_mah": 0.0}, {"awake_ma": -1.0}, {"bitrate_bps": 0.0}],
)
def test_invalid_profile_rejected(kwargs: dict[str, float]) -> None:
    """Nonsense numbers fail at construction."""
    with pytest.raises(ValueError):
        BatteryProfile(**kwargs)


def test_invalid_use_rejected() -> None:
    """Negative time and impossible levels are caller bugs."""
    with pytest.raises(ValueError):
        Battery().drain(PowerState.AWAKE, -1.0)
    with pytest.raises(ValueError):
        Battery(level=101.0)

"""ADVERTISE while the broker is up, GWINFO answers to SEARCHGW, rate-limited [§6.1]."""

from __future__ import annotations

from gateway.core import Broadcast
from gateway.core.settings import CoreSettings
from gateway.protocol.messages import Advertise, GwInfo, SearchGw
from tests.core.helpers import A1, A2, Driver


def test_no_advertise_while_broker_down() -> None:
    """Nothing is advertised before the broker connection is up."""
    d = Driver(CoreSettings(gw_id=7, t_adv=900.0))
    assert d.core.next_deadline() is None
    assert d.run_until(10_000.0) == []


def test_advertise_at_once_and_every_t_adv() -> None:
    """Broker up: ADVERTISE at once, then every t_adv; broker down: silence."""
    d = Driver(CoreSettings(gw_id=7, t_adv=900.0))
    adv = Broadcast(Advertise(7, 900))
    assert d.core.on_broker_state(True, 5.0) == [adv]
    assert d.core.next_deadline() == 905.0
    assert d.run_until(2000.0) == [(905.0, [adv]), (1805.0, [adv])]
    assert d.core.on_broker_state(False, 2001.0) == []
    assert d.core.next_deadline() is None
    assert d.run_until(5000.0) == []


def test_advertise_duration_is_capped_to_16_bits() -> None:
    """T_ADV beyond 65535 s is advertised as 65535."""
    d = Driver(CoreSettings(t_adv=100_000.0))
    assert d.core.on_broker_state(True, 0.0) == [Broadcast(Advertise(1, 0xFFFF))]


def test_advertise_off() -> None:
    """t_adv = 0 turns advertising off."""
    d = Driver(CoreSettings(t_adv=0))
    assert d.core.on_broker_state(True, 0.0) == []
    assert d.core.next_deadline() is None


def test_searchgw_gets_gwinfo_with_the_radius_via_the_sender() -> None:
    """SEARCHGW -> Broadcast(GWINFO(gw_id), radius, via=sender)."""
    d = Driver(CoreSettings(gw_id=3))
    assert d.rx(A1, SearchGw(2), 0.0) == [Broadcast(GwInfo(3), 2, via=A1)]


def test_searchgw_rate_limited_per_source() -> None:
    """One GWINFO per source per gwinfo_interval; other sources are not affected."""
    d = Driver(CoreSettings(gwinfo_interval=1.0))
    assert len(d.rx(A1, SearchGw(0), 0.0)) == 1
    assert d.rx(A1, SearchGw(0), 0.5) == []
    assert len(d.rx(A2, SearchGw(0), 0.5)) == 1
    assert len(d.rx(A1, SearchGw(0), 1.0)) == 1
    assert d.core.counters["searchgw_rate_limited"] == 1


def test_searchgw_rate_limited_globally() -> None:
    """At most gwinfo_per_second answers overall, refilled with time."""
    d = Driver(CoreSettings(gwinfo_per_second=5.0))
    answered = sum(len(d.rx(("udp", "h", i), SearchGw(0), 10.0)) for i in range(20))
    assert answered == 5
    assert d.rx(("udp", "h", 100), SearchGw(0), 10.1) == []
    assert len(d.rx(("udp", "h", 101), SearchGw(0), 10.25)) == 1
    answered = sum(len(d.rx(("udp", "h", 200 + i), SearchGw(0), 20.0)) for i in range(20))
    assert answered == 5


def test_advertise_and_gwinfo_from_others_are_ignored() -> None:
    """ADVERTISE/GWINFO heard from other gateways or nodes produce nothing."""
    d = Driver()
    assert d.rx(A1, Advertise(9, 60), 0.0) == []
    assert d.rx(A1, GwInfo(9, b"\x01"), 0.0) == []
    assert d.core.counters["ignored_Advertise"] == 1

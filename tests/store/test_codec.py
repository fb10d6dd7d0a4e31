"""Sessions and addresses as JSON: exact round trips, wall-clock times, rebasing after a restart."""

from __future__ import annotations

import json
import sys
from collections import deque

import pytest

from gateway.core import ClientSession, CoreSettings, SessionState
from gateway.core.delivery_queue import Delivery
from gateway.core.session import OutboundInflight, StoredWill, UplinkPending
from gateway.core.topics import TopicRegistry
from gateway.runtime import ForwardedAddress
from gateway.store import (
    UnknownAddress,
    _rebase,
    decode_address,
    decode_session,
    encode_address,
    encode_session,
)
from transports.base import UdpAddress
from transports.ble import BleAddress
from transports.serial import SerialAddress
from transports.xbee import XBeeAddress

ADDRESSES = [
    UdpAddress("10.0.0.7", 1884),
    UdpAddress("fe80::1%eth0", 50000),
    XBeeAddress(0x0013A20041B2C3D4),
    SerialAddress("/dev/ttyUSB0"),
    SerialAddress("socket://localhost:7000"),
    BleAddress("c0:ff:ee:00:00:01"),
    ForwardedAddress(UdpAddress("10.0.0.9", 1884), b"\x00\x13\xa2"),
    ForwardedAddress(XBeeAddress(1), b"\x01"),
    ("udp", "10.0.0.1", 1001),  # the core's own tests use tuples
]

OFFSET = 1_700_000_000.0  # wall - mono; binary-exact sums keep the round trip exact


@pytest.mark.parametrize("address", ADDRESSES, ids=repr)
def test_address_round_trip(address: object) -> None:
    """Every transport's address type comes back equal, through real JSON text."""
    text = json.dumps(encode_address(address))
    back = decode_address(json.loads(text))
    assert back == address
    assert type(back) is type(address)


def test_address_of_a_transport_not_installed_is_kept_verbatim(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without bleak a BLE address loads as UnknownAddress and saves back unchanged."""
    encoded = encode_address(BleAddress("AA:BB:CC:DD:EE:FF"))
    monkeypatch.setitem(sys.modules, "transports.ble", None)  # import now raises ImportError
    back = decode_address(encoded)
    assert isinstance(back, UnknownAddress)
    assert encode_address(back) == encoded


def test_unknown_address_type_is_refused() -> None:
    """An address the store cannot describe is a TypeError, not a silent pickle."""
    with pytest.raises(TypeError, match="cannot store an address"):
        encode_address(object())


def full_session(address: object) -> ClientSession:
    """A session with every field away from its default."""
    registry = TopicRegistry({9: "pre/nine"}, 50)
    registry.register("a/b")
    registry.register("c/d")
    session = ClientSession(
        "sensor-7",
        address,  # type: ignore[arg-type]
        registry,
        state=SessionState.AWAKE,
        keepalive=30.0,
        clean_session=False,
        will=StoredWill("will/t", b"\x00bye\xff", 1, True),
        will_stage="",
        sleep_duration=300.0,
        last_rx=12.5,
        subscriptions={"cmd/#": 1, "a/b": 2},
        retained_until={"cmd/#": 17.5},
        queue=deque([Delivery("cmd/x", b"\x01\x02", 1), Delivery("cmd/y", b"", 0, True)]),
        inflight=OutboundInflight("pubrel", 41, 2, 0, Delivery("c/d", b"v", 2), 2, 22.25),
        uplink={
            7: UplinkPending(7, 1, 2, acked=True, token=3),
            8: UplinkPending(8, 1, 1, token=4),
        },
        next_msg_id=42,
    )
    return session


@pytest.mark.parametrize("address", ADDRESSES, ids=repr)
def test_session_round_trip(address: object) -> None:
    """Registrations, subscriptions, will, buffer, in-flight and uplink state survive exactly."""
    settings = CoreSettings(predefined={9: "pre/nine"}, max_topics_per_client=50)
    session = full_session(address)
    data = encode_session(session, OFFSET)
    assert data["last_rx"] == 12.5 + OFFSET  # stored as wall-clock time
    back = decode_session(json.loads(json.dumps(data)), OFFSET, settings)
    assert back == session
    assert back.registry.predefined == {9: "pre/nine"}


def test_buffer_can_be_left_out() -> None:
    """queue=False leaves the buffer to the store's own table."""
    data = encode_session(full_session(UdpAddress("h", 1)), 0.0, queue=False)
    assert "queue" not in data
    back = decode_session(data, 0.0, CoreSettings(predefined={9: "pre/nine"}))
    assert not back.queue


def test_session_is_plain_json_never_code() -> None:
    """The row is JSON text: no pickle opcodes, readable by any tool."""
    data = encode_session(full_session(UdpAddress("h", 1)), OFFSET)
    text = json.dumps(data)
    assert json.loads(text)["client_id"] == "sensor-7"
    assert "\\u0000" not in text  # payloads are base64


SETTINGS = CoreSettings(sleep_factor=1.5, keepalive_factor=1.5)


@pytest.mark.parametrize(
    ("state", "last_rx", "expected"),
    [
        # A sleeping node keeps its remaining time: slept 300 s of 600 before the restart.
        (SessionState.ASLEEP, 700.0, 700.0),
        # Its time ran out while we were down: one more period from the restart.
        (SessionState.ASLEEP, -1000.0, 1000.0),
        # Connected nodes could not reach us while we were down: keep-alive starts over.
        (SessionState.ACTIVE, 900.0, 1000.0),
        (SessionState.AWAKE, 900.0, 1000.0),
        # Disconnected sessions expire on real time.
        (SessionState.DISCONNECTED, 5.0, 5.0),
        (SessionState.LOST, 5.0, 5.0),
    ],
)
def test_rebase_after_restart(state: SessionState, last_rx: float, expected: float) -> None:
    """Deadlines across a restart at now=1000 (times already rebased to this clock)."""
    session = ClientSession("n", ("a",), TopicRegistry({}), state=state, last_rx=last_rx)
    session.sleep_duration = 600.0
    _rebase(session, 1000.0, SETTINGS)
    assert session.last_rx == expected

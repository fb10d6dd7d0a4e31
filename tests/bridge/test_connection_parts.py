"""Pieces of the connection that need no broker: backoff, packet ids, framing check."""

from __future__ import annotations

import logging

import mqtt5
import pytest

from gateway.bridge.connection import Backoff
from gateway.bridge.mqtt5_connection import Mqtt5Connection, _packet_complete, _Pending
from gateway.bridge.url import parse_broker_url
from tests.bridge.helpers import Recorder


class _Handler(Recorder):
    def on_message(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        pass

    def on_state(self, connected: bool, return_code: int) -> None:
        pass


def test_backoff_doubles_to_the_cap_with_jitter() -> None:
    """0.1 s doubling to 30 s; jitter stays within +-20 %; reset starts over."""
    low = Backoff(rng=lambda: 0.0)
    assert [round(low.next(), 3) for _ in range(4)] == [0.08, 0.16, 0.32, 0.64]
    high = Backoff(rng=lambda: 1.0)
    delays = [high.next() for _ in range(20)]
    assert delays[-1] == pytest.approx(36.0)
    assert max(delays) == pytest.approx(36.0)
    high.reset()
    assert high.next() == pytest.approx(0.12)


def test_packet_ids_skip_ids_in_use_and_wrap() -> None:
    """Ids run 1..65535, never 0, and skip ids still in flight."""
    connection = Mqtt5Connection(parse_broker_url("mqtt://b"), "c", _Handler())
    connection._inflight = {1: _Pending(1, b""), 2: _Pending(2, b""), 65535: _Pending(3, b"")}
    assert connection._allocate_id() == 3
    connection._next_id = 65534
    assert connection._allocate_id() == 65534
    assert connection._allocate_id() == 3  # wrapped past 65535, 1 and 2 (in use)


def test_packet_complete_reads_the_fixed_header() -> None:
    """A packet is complete when its remaining length is in the buffer."""
    packet = mqtt5.PublishPacket("a/b", b"x" * 200).write()  # two-byte remaining length
    view = memoryview(packet)
    assert _packet_complete(view, 0)
    assert not _packet_complete(view[:-1], 0)
    assert not _packet_complete(view[:2], 0)
    assert _packet_complete(memoryview(b"\x00" + packet), 1)


def test_publish_before_connect_is_held_and_counted() -> None:
    """Before the first CONNACK QoS 1 waits in the outbox and QoS 0 is dropped and counted."""
    connection = Mqtt5Connection(parse_broker_url("mqtt://b"), "c", _Handler())
    connection.publish("t", b"1", 1, False, 1)
    connection.publish("t", b"0", 0, False, None)
    assert connection.outbox_size == 1
    assert connection.stats.dropped_qos0 == 1
    assert "outbox=1" in repr(connection) and " down " in repr(connection)


def test_dropped_qos0_is_said_at_first_then_at_most_every_interval(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QoS 0 has no other signal: the first drop is a WARNING, then one per 10 s with a count."""
    clock = [1000.0]
    monkeypatch.setattr("gateway.bridge.connection.time.monotonic", lambda: clock[0])
    connection = Mqtt5Connection(parse_broker_url("mqtt://b"), "c", _Handler())
    with caplog.at_level(logging.WARNING, logger="gateway.bridge.connection"):
        for _ in range(3):
            connection.publish("t", b"0", 0, False, None)
        clock[0] += 10.0
        connection.publish("t", b"0", 0, False, None)
    said = [r.getMessage() for r in caplog.records if "QoS 0" in r.getMessage()]
    assert len(said) == 2
    assert "dropped 1 QoS 0" in said[0] and "not connected" in said[0]
    assert "dropped 3 QoS 0" in said[1]
    assert connection.stats.dropped_qos0 == 4


@pytest.mark.parametrize("size", [0, 32, 100, 127 - 40, 200, 20_000])
@pytest.mark.parametrize("props", [None, [("mqttsn-client-id", "node-7")], [("k", "é"), ("a", "")]])
async def test_publish_framing_is_the_codecs_byte_for_byte(
    size: int, props: list[tuple[str, str]] | None
) -> None:
    """The hand-framed PUBLISH (cached topic and properties) equals mqtt5's own encoding."""
    connection = Mqtt5Connection(parse_broker_url("mqtt://b"), "c", _Handler())
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for qos in (0, 1, 2):
        for retain in (False, True):
            for topic in ("a/b", "sensors/é/température"):
                connection._wbuf.clear()
                connection._send_publish(topic, payload, qos, retain, None, props)
                (packet,) = connection._wbuf
                pid = connection._next_id - 1 if qos else None
                expected = mqtt5.PublishPacket(
                    topic,
                    payload,
                    qos=mqtt5.QoS(qos),
                    retain=retain,
                    packet_id=pid,
                    user_properties=props,
                ).write()
                assert packet == expected
    connection._inflight.clear()


@pytest.mark.parametrize("size", [0, 32, 127 - 40, 200, 20_000])
@pytest.mark.parametrize("props", [None, [("mqttsn-client-id", "node-7")]])
async def test_inlined_qos0_publish_is_the_codecs_byte_for_byte(
    size: int, props: list[tuple[str, str]] | None
) -> None:
    """``publish``'s own QoS 0 framing (a topic seen before) equals mqtt5's encoding."""
    connection = Mqtt5Connection(parse_broker_url("mqtt://b"), "c", _Handler())
    connection._up = True  # as after CONNACK; nothing is written to a socket here
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for topic in ("a/b", "sensors/é/température"):
        for _ in range(2):  # the first caches the topic, the second takes the inlined path
            connection._wbuf.clear()
            connection.publish(topic, payload, 0, False, None, props)
            (packet,) = connection._wbuf
            assert packet == mqtt5.PublishPacket(topic, payload, user_properties=props).write()
    connection._max_packet = 64  # the broker's Maximum Packet Size still holds on that path
    connection._wbuf.clear()
    connection.publish("a/b", b"x" * 100, 0, False, None, props)
    assert connection._wbuf == []


@pytest.mark.parametrize("size", [0, 32, 127 - 40, 200, 20_000])
@pytest.mark.parametrize("props", [None, [("mqttsn-client-id", "node-7")]])
async def test_qos0_publisher_is_the_codecs_byte_for_byte(
    size: int, props: list[tuple[str, str]] | None
) -> None:
    """The uplink route's publisher frames as mqtt5 does, and hands what it cannot take on."""
    connection = Mqtt5Connection(parse_broker_url("mqtt://b"), "c", _Handler())
    connection._up = True  # as after CONNACK; nothing is written to a socket here
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for topic in ("a/b", "sensors/é/température"):
        publish = connection.qos0_publisher(topic, props)
        connection._wbuf.clear()
        publish(payload)
        publish(payload)
        expected = mqtt5.PublishPacket(topic, payload, user_properties=props).write()
        assert connection._wbuf == [expected, expected]
    connection._wbuf.clear()
    connection._max_packet = 64  # the broker's Maximum Packet Size holds on that path too
    connection.qos0_publisher("a/b", props)(b"x" * 100)
    assert connection._wbuf == []
    connection._max_packet = None
    connection._up = False  # down: dropped and counted, as publish() does
    connection.qos0_publisher("a/b", props)(b"x")
    assert connection._wbuf == [] and connection.stats.dropped_qos0 == 1


@pytest.mark.parametrize("size", [0, 32, 127 - 40, 200, 20_000])
@pytest.mark.parametrize("props", [None, [("mqttsn-client-id", "node-7")]])
async def test_qos1_publisher_is_the_codecs_byte_for_byte(
    size: int, props: list[tuple[str, str]] | None
) -> None:
    """The QoS 1 route's publisher: packet id, in-flight entry and bytes as the general path."""
    connection = Mqtt5Connection(parse_broker_url("mqtt://b"), "c", _Handler())
    connection._up = True
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    publish = connection.qos1_publisher("sensors/é/t", props)
    publish(payload, 41)
    publish(payload, 42)
    pids = sorted(connection._inflight)
    assert [connection._inflight[pid].token for pid in pids] == [41, 42]
    assert connection._wbuf == [
        mqtt5.PublishPacket(
            "sensors/é/t", payload, qos=mqtt5.QoS(1), packet_id=pid, user_properties=props
        ).write()
        for pid in pids
    ]
    assert connection._on_wire == 2


async def test_qos1_publisher_hands_what_cannot_go_now_to_publish() -> None:
    """Outside the broker's Receive Maximum, or down: the outbox, in order, as publish() does."""
    connection = Mqtt5Connection(parse_broker_url("mqtt://b"), "c", _Handler())
    connection._up = True
    connection._quota = 1
    publish = connection.qos1_publisher("a/b", None)
    publish(b"1", 1)
    publish(b"2", 2)  # over the quota: waits in the outbox
    publish(b"3", 3)  # behind it, even if the quota frees up
    assert connection.outbox_size == 2 and len(connection._wbuf) == 1
    connection._quota = 10
    publish(b"4", 4)
    assert [entry[4] for entry in connection._outbox] == [2, 3, 4]
    connection._up = False
    publish(b"5", 5)
    assert connection.outbox_size == 4


async def test_qos0_publisher_to_an_invalid_topic_reports_as_publish_does() -> None:
    """A topic the codec refuses gets the general publisher: nothing is framed or cached."""
    connection = Mqtt5Connection(parse_broker_url("mqtt://b"), "c", _Handler())
    connection._up = True
    connection.qos0_publisher("a/#", None)(b"x")
    assert connection._wbuf == [] and connection._middles == {}


async def test_publish_to_an_invalid_topic_is_refused_not_cached() -> None:
    """The codec still validates the first PUBLISH to a topic: a wildcard is reported failed."""
    handler = _Handler()
    connection = Mqtt5Connection(parse_broker_url("mqtt://b"), "c", handler)
    connection._send_publish("a/#", b"x", 1, False, 9, None)
    assert connection._wbuf == [] and connection._middles == {}


async def test_pubacks_read_by_hand_and_by_the_codec_report_alike() -> None:
    """Short "success" PUBACKs (read by hand), one split across reads, and a PUBACK with a
    reason code (read by the codec) each report their publish once, in order."""
    handler = _Handler()
    connection = Mqtt5Connection(parse_broker_url("mqtt://b"), "c", handler)
    connection._up = True
    connection._next_id = 0x1FF  # ids with both bytes in use
    for token in (11, 12, 13, 14):
        connection.publish("a/b", b"x", 1, False, token)
    pids = list(connection._inflight)
    acks = [mqtt5.PubAckPacket(pid).write() for pid in pids[:3]]
    assert all(len(ack) == 4 for ack in acks)  # the short form Mosquitto sends
    refused = mqtt5.PubAckPacket(pids[3], reason_code=mqtt5.PubAckReasonCode.QUOTA_EXCEEDED)
    stream = b"".join(acks) + refused.write()
    connection.data_received(stream[:6])  # one PUBACK and half of the next
    assert handler.done_order == [11]
    connection.data_received(stream[6:])
    assert handler.done_order == [11, 12, 13, 14]
    assert handler.done == {11: True, 12: True, 13: True, 14: False}
    assert connection._inflight == {} and connection._rbuf == b""

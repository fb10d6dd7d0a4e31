"""Pure tests of the BLE link framing: chunking, reassembly, resync, reset (no radio, no loop)."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transports.ble_stream import (
    ATT_DEFAULT_MTU,
    StreamReassembler,
    chunk_size_for_mtu,
    split_frame,
)


def frame(body: bytes) -> bytes:
    """An MQTT-SN frame around ``body`` (MsgType + rest), in the shortest length form."""
    if len(body) + 1 <= 0xFF:
        return bytes([len(body) + 1]) + body
    return b"\x01" + (len(body) + 3).to_bytes(2, "big") + body


def test_chunk_size_is_mtu_minus_att_header() -> None:
    """A 23-byte MTU carries 20 bytes per write; 247 carries 244; nothing goes below 20."""
    assert chunk_size_for_mtu(ATT_DEFAULT_MTU) == 20
    assert chunk_size_for_mtu(247) == 244
    assert chunk_size_for_mtu(5) == 20


def test_split_frame_keeps_order_and_bytes() -> None:
    """A 300-byte frame splits into 20-byte chunks, the last one short."""
    data = frame(bytes([0x0C]) + bytes(range(256)) + bytes(40))
    chunks = split_frame(data, 20)
    assert len(data) == 300
    assert [len(c) for c in chunks] == [20] * 15
    assert b"".join(chunks) == data
    assert split_frame(b"\x02\x16", 20) == [b"\x02\x16"]


def test_split_frame_rejects_zero_chunk() -> None:
    """A chunk size of 0 is a caller bug."""
    with pytest.raises(ValueError):
        split_frame(b"\x02\x16", 0)


def test_short_frame_in_one_chunk() -> None:
    """A PINGREQ (2 bytes) comes out as soon as it is fed."""
    r = StreamReassembler()
    assert r.feed(b"\x02\x16") == [b"\x02\x16"]
    assert r.buffered == 0 and r.frames == 1


def test_long_form_frame_across_chunks() -> None:
    """A 300-byte three-byte-length frame is held until its last chunk arrives."""
    data = frame(b"\x0c" + bytes(296))
    r = StreamReassembler()
    chunks = split_frame(data, 20)
    out = [f for c in chunks[:-1] for f in r.feed(c)]
    assert out == [] and r.buffered == 280
    assert r.feed(chunks[-1]) == [data]


def test_long_form_header_split_after_first_byte() -> None:
    """0x01 alone (and 0x01 + one byte) is not yet a header: wait for more."""
    data = frame(b"\x0c" + bytes(300))
    r = StreamReassembler()
    assert r.feed(data[:1]) == []
    assert r.feed(data[1:2]) == []
    assert r.feed(data[2:]) == [data]


def test_several_frames_in_one_chunk() -> None:
    """Receivers accept frames packed back to back in one write or notification."""
    r = StreamReassembler()
    assert r.feed(b"\x02\x16\x02\x17\x03\x18") == [b"\x02\x16", b"\x02\x17"]
    assert r.feed(b"\x00") == [b"\x03\x18\x00"]


@pytest.mark.parametrize(
    ("garbage", "why"),
    [
        (b"\x00\x05\x0c", "first byte 0x00"),
        (b"\x01\x00\x00", "long-form length 0"),
        (b"\x01\x00\x03\x0c", "long-form length 3 < 4"),
        (b"\xff" + bytes(5), "one-byte length 255 > max 64"),
        (b"\x01\x08\x00" + bytes(5), "long-form length 2048 > max 1024"),
    ],
)
def test_invalid_header_resyncs_with_warning(
    garbage: bytes, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An impossible header drops the buffer (counted, WARNING) and the next chunk is clean."""
    r = StreamReassembler(max_frame_size=64 if "max 64" in why else 1024, peer="node-x")
    with caplog.at_level(logging.WARNING, logger="transports.ble_stream"):
        out = r.feed(garbage + b"\x02\x16")
    assert out == []
    assert r.resyncs == 1 and r.buffered == 0
    assert "node-x" in caplog.text and "resync" in caplog.text
    assert r.feed(b"\x02\x16") == [b"\x02\x16"]


def test_length_one_short_form_is_invalid() -> None:
    """There is no one-byte frame: a length byte can only mean 0x01 (long form) or >= 2."""
    r = StreamReassembler()
    # 0x01 0x00 0x01: long form claiming 1 byte in total.
    assert r.feed(b"\x01\x00\x01\x16") == []
    assert r.resyncs == 1


def test_frame_above_max_is_rejected() -> None:
    """The receiver's bound applies to the one-byte form too."""
    r = StreamReassembler(max_frame_size=64)
    assert r.feed(bytes([65]) + bytes(64)) == []
    assert r.resyncs == 1
    assert r.feed(bytes([64]) + bytes(63)) == [bytes([64]) + bytes(63)]


def test_resync_warnings_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    """A node spewing garbage yields a few WARNINGs, then only every 100th."""
    r = StreamReassembler()
    with caplog.at_level(logging.DEBUG, logger="transports.ble_stream"):
        for _ in range(150):
            r.feed(b"\x00\x00")
    warnings = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
    assert r.resyncs == 150
    assert len(warnings) == 4  # resyncs 1, 2, 3 and 100


def test_reset_forgets_a_partial_frame() -> None:
    """A new connection starts at a frame boundary: the half frame of the old one is gone."""
    data = frame(b"\x0c" + bytes(100))
    r = StreamReassembler()
    assert r.feed(data[:50]) == []
    r.reset()
    assert r.buffered == 0
    assert r.feed(b"\x02\x16") == [b"\x02\x16"]
    assert r.resyncs == 0


def test_without_reset_a_partial_frame_would_swallow_the_next() -> None:
    """Why the reset matters: the old half frame's length header would eat the new frames."""
    data = frame(b"\x0c" + bytes(100))
    r = StreamReassembler()
    r.feed(data[:50])
    assert r.feed(b"\x02\x16") == []


def test_repr_shows_live_state() -> None:
    """The repr names the peer and the buffered byte count."""
    r = StreamReassembler(peer="C0:00:00:00:00:01")
    r.feed(b"\x05\x0c")
    assert "C0:00:00:00:00:01" in repr(r) and "buffered=2" in repr(r)


def test_bad_max_frame_size() -> None:
    """The bound must fit the MQTT-SN length field."""
    with pytest.raises(ValueError):
        StreamReassembler(max_frame_size=70000)


_bodies = st.lists(
    st.binary(min_size=1, max_size=600).map(frame),
    min_size=1,
    max_size=12,
)


@given(frames=_bodies, mtu=st.integers(min_value=23, max_value=517))
def test_round_trip_chunked_per_frame(frames: list[bytes], mtu: int) -> None:
    """Any frames, each split by any MTU as senders do, come back whole and in order."""
    r = StreamReassembler(max_frame_size=0xFFFF)
    out: list[bytes] = []
    for f in frames:
        for chunk in split_frame(f, chunk_size_for_mtu(mtu)):
            out += r.feed(chunk)
    assert out == frames
    assert r.buffered == 0 and r.resyncs == 0


@given(frames=_bodies, cuts=st.lists(st.integers(min_value=1, max_value=300), max_size=40))
def test_round_trip_any_stream_split(frames: list[bytes], cuts: list[int]) -> None:
    """The receiver is a true stream parser: frames survive any split of the joined bytes."""
    stream = b"".join(frames)
    r = StreamReassembler(max_frame_size=0xFFFF)
    out: list[bytes] = []
    pos = 0
    for cut in cuts:
        out += r.feed(stream[pos : pos + cut])
        pos += cut
    out += r.feed(stream[pos:])
    assert out == frames

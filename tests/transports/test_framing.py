"""Byte-stream framing: plain length-header deframing with resync, SLIP + CRC-16 framing."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transports.framing import (
    BODY_LIMITS,
    KNOWN_MSG_TYPES,
    SlipCrcDeframer,
    StreamDeframer,
    crc16_ccitt_false,
    declared_length,
    slip_crc_encode,
)

PINGREQ = bytes.fromhex("02 16")
PUBLISH = bytes.fromhex("09 0C 00 00 01 00 00 C0 DB")
CONNECT = b"\x0b\x04\x04\x01\x00\x3cnode1"
REGACK = bytes.fromhex("07 0B 00 01 00 02 00")


@st.composite
def frames(draw: st.DrawFn, max_frame: int = 255, body_cap: int = 48) -> bytes:
    """One MQTT-SN frame of a known type with a body length that type can have."""
    msg_type = draw(st.sampled_from(sorted(BODY_LIMITS)))
    if msg_type == 0xFE:
        # Forwarder frame [§5.5]: the outer Length covers Ctrl + node id; a whole frame follows.
        node_id = draw(st.binary(min_size=1, max_size=8))
        inner = draw(
            frames(max_frame=max_frame - 3 - len(node_id), body_cap=body_cap).filter(
                lambda f: f[1 if f[0] != 1 else 3] != 0xFE
            )
        )
        return bytes([3 + len(node_id), 0xFE, 0]) + node_id + inner
    low, high = BODY_LIMITS[msg_type]
    long_form = max_frame >= 4 + low and draw(st.booleans())
    header = 3 if long_form else 1
    cap = min(max_frame, 255 if not long_form else max_frame, body_cap + header + 1) - header - 1
    body = draw(st.binary(min_size=low, max_size=cap if high is None else min(high, cap)))
    total = header + 1 + len(body)
    prefix = bytes([1, total >> 8, total & 0xFF]) if long_form else bytes([total])
    return prefix + bytes([msg_type]) + body


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` split at the given offsets (taken modulo its length)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def feed_all(deframer: StreamDeframer | SlipCrcDeframer, pieces: list[bytes]) -> list[bytes]:
    """Every frame the deframer yields for the pieces fed in order."""
    out: list[bytes] = []
    for piece in pieces:
        out += deframer.feed(piece)
    return out


def is_subsequence(part: list[bytes], whole: list[bytes]) -> bool:
    """True when ``part`` appears in ``whole`` in order (gaps allowed)."""
    it = iter(whole)
    return all(any(p == w for w in it) for p in part)


# -- shared helpers -----------------------------------------------------------------------------


def test_crc_check_value() -> None:
    """CRC-16/CCITT-FALSE of ASCII 123456789 is the catalogue check value 0x29B1."""
    assert crc16_ccitt_false(b"123456789") == 0x29B1


def test_slip_vectors_from_docstring() -> None:
    """The module docstring's test vectors for firmware authors hold."""
    assert crc16_ccitt_false(PINGREQ) == 0x099A
    assert slip_crc_encode(PINGREQ) == bytes.fromhex("C0 02 16 09 9A C0")
    assert crc16_ccitt_false(PUBLISH) == 0x0D0A
    assert slip_crc_encode(PUBLISH) == bytes.fromhex("C0 09 0C 00 00 01 00 00 DB DC DB DD 0D 0A C0")


def test_crc_residue_is_zero() -> None:
    """The CRC over frame plus its big-endian CRC is zero, as documented."""
    assert crc16_ccitt_false(PUBLISH + (0x0D0A).to_bytes(2, "big")) == 0


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", None),
        (b"\x00\x16", None),
        (b"\x02\x16", 2),
        (b"\x01", None),
        (b"\x01\x00", None),
        (b"\x01\x00\x03", None),
        (b"\x01\x00\x04\x16", 4),
        (b"\x01\x01\x2c", 300),
    ],
)
def test_declared_length(data: bytes, expected: int | None) -> None:
    """Both header forms give the total length; 0x00 and runt long forms give None."""
    assert declared_length(data) == expected


def test_known_types_table() -> None:
    """Reserved MsgTypes are unknown; every type with body limits is known."""
    assert {0x03, 0x11, 0x19, 0x1E, 0xFD, 0xFF}.isdisjoint(KNOWN_MSG_TYPES)
    assert set(BODY_LIMITS) == set(KNOWN_MSG_TYPES)


# -- plain --------------------------------------------------------------------------------------


def test_plain_back_to_back_and_split() -> None:
    """Frames back to back come out whole, whether fed at once or byte by byte."""
    stream = PINGREQ + CONNECT + REGACK
    assert StreamDeframer().feed(stream) == [PINGREQ, CONNECT, REGACK]
    deframer = StreamDeframer()
    assert feed_all(deframer, [bytes([b]) for b in stream]) == [PINGREQ, CONNECT, REGACK]
    assert deframer.pending == 0


def test_plain_long_form() -> None:
    """A long-form header (any value, pitfall P6) is read, also when split inside the header."""
    frame = bytes([1, 0, 9]) + bytes.fromhex("0C 00 00 01 00 00")  # PUBLISH, 9 bytes in all
    deframer = StreamDeframer()
    assert deframer.feed(frame[:1]) == []
    assert deframer.feed(frame[1:2]) == []
    assert deframer.feed(frame[2:]) == [frame]


def test_plain_skips_garbage_that_cannot_start_a_frame() -> None:
    """Zero bytes, reserved types and over-long lengths are dropped one byte at a time."""
    deframer = StreamDeframer(max_frame=60)
    garbage = b"\x00\xff\x03\x11\x90\x00"
    assert deframer.feed(garbage + PINGREQ + REGACK) == [PINGREQ, REGACK]
    assert deframer.dropped_bytes == len(garbage)
    assert deframer.take_garbage() == garbage
    assert deframer.take_garbage() == b""


def test_plain_rejects_impossible_layouts() -> None:
    """A header whose type cannot have that length (PINGRESP of 4 bytes) is not a frame."""
    deframer = StreamDeframer()
    assert deframer.feed(b"\x04\x17\x00\x00" + PINGREQ) == [PINGREQ]
    assert deframer.dropped_bytes == 4
    assert StreamDeframer(check_layout=False).feed(b"\x04\x17\x00\x00") == [b"\x04\x17\x00\x00"]


def test_plain_reset_unwedges_after_lost_length_byte() -> None:
    """A frame that lost bytes waits for more; reset() after the gap lets the next ones through."""
    deframer = StreamDeframer()
    damaged = CONNECT[:-3]  # the node's UART lost the end of the frame
    assert deframer.feed(damaged) == []
    assert deframer.pending == len(damaged)
    assert deframer.reset() == len(damaged)
    assert deframer.feed(PINGREQ + REGACK) == [PINGREQ, REGACK]
    assert deframer.dropped_bytes == len(damaged)


def test_plain_memory_is_bounded() -> None:
    """Nothing longer than one candidate frame is ever held back."""
    deframer = StreamDeframer(max_frame=60)
    for _ in range(100):
        deframer.feed(bytes(range(256)))
        assert deframer.pending <= 60


@given(st.lists(frames(body_cap=255), max_size=20), st.lists(st.integers(min_value=0), max_size=20))
def test_plain_roundtrip_any_chunking(sequence: list[bytes], cuts: list[int]) -> None:
    """Any frame sequence survives concatenation and arbitrary chunking."""
    deframer = StreamDeframer()
    assert feed_all(deframer, chunked(b"".join(sequence), cuts)) == sequence
    assert deframer.dropped_bytes == 0
    assert deframer.pending == 0


@given(
    st.lists(frames(max_frame=60), max_size=10),
    st.binary(max_size=40).map(lambda b: bytes(x if x > 60 else 0 for x in b)),
    st.lists(frames(max_frame=60), min_size=1, max_size=10),
    st.lists(st.integers(min_value=0), max_size=20),
)
def test_plain_garbage_between_frames_is_skipped(
    before: list[bytes], garbage: bytes, after: list[bytes], cuts: list[int]
) -> None:
    """Garbage that cannot be a length header is skipped without a reset; all frames survive."""
    deframer = StreamDeframer(max_frame=60)
    stream = b"".join(before) + garbage + b"".join(after)
    assert feed_all(deframer, chunked(stream, cuts)) == before + after
    assert deframer.dropped_bytes == len(garbage)


@given(
    st.binary(max_size=300),
    st.lists(frames(), min_size=1, max_size=10),
    st.lists(st.integers(min_value=0), max_size=20),
)
def test_plain_any_garbage_then_idle_gap(
    garbage: bytes, after: list[bytes], cuts: list[int]
) -> None:
    """Arbitrary garbage, then the idle-gap reset(): every following frame comes through."""
    deframer = StreamDeframer()
    for frame in feed_all(deframer, chunked(garbage, cuts)):
        assert declared_length(frame) == len(frame) <= deframer.max_frame
    assert deframer.pending <= deframer.max_frame
    deframer.reset()
    assert feed_all(deframer, chunked(b"".join(after), cuts)) == after


@given(
    st.lists(frames(), min_size=1, max_size=8),
    st.integers(min_value=0),
    st.lists(frames(), min_size=1, max_size=8),
)
def test_plain_lost_byte_then_idle_gap(
    damaged: list[bytes], position: int, after: list[bytes]
) -> None:
    """A byte lost in transit costs the frames until the next idle gap, none after it."""
    deframer = StreamDeframer()
    stream = b"".join(damaged)
    position %= len(stream)
    deframer.feed(stream[:position] + stream[position + 1 :])
    deframer.reset()
    assert deframer.feed(b"".join(after)) == after


# -- SLIP + CRC ---------------------------------------------------------------------------------


def test_slip_decodes_escapes_and_ignores_empty_packets() -> None:
    """Escaped END/ESC bytes are restored; back-to-back ENDs are not errors."""
    deframer = SlipCrcDeframer()
    wire = b"\xc0\xc0" + slip_crc_encode(PUBLISH) + slip_crc_encode(PINGREQ)
    assert deframer.feed(wire) == [PUBLISH, PINGREQ]
    assert (deframer.crc_errors, deframer.malformed, deframer.dropped_bytes) == (0, 0, 0)


def test_slip_accepts_trailing_end_only() -> None:
    """A sender that puts END only after each packet is understood."""
    wire = slip_crc_encode(PINGREQ)[1:] + slip_crc_encode(REGACK)[1:]
    assert SlipCrcDeframer().feed(wire) == [PINGREQ, REGACK]


def test_slip_bad_crc_is_dropped_and_counted() -> None:
    """A corrupted byte fails the CRC: that frame is dropped, the next one delivered."""
    bad = bytearray(slip_crc_encode(CONNECT))
    bad[4] ^= 0x20
    deframer = SlipCrcDeframer()
    assert deframer.feed(bytes(bad) + slip_crc_encode(REGACK)) == [REGACK]
    assert deframer.crc_errors == 1
    assert deframer.take_garbage() == bytes(bad[1:-1])


@pytest.mark.parametrize(
    "packet",
    [
        b"\x02\xdb\x16",  # ESC followed by neither ESC_END nor ESC_ESC
        b"\x02\x16\xdb",  # ESC at the end
        b"\x16\x09",  # runt: too short for a frame and a CRC
    ],
)
def test_slip_malformed_packets(packet: bytes) -> None:
    """Bad escapes and runts are counted as malformed, not delivered."""
    deframer = SlipCrcDeframer()
    assert deframer.feed(b"\xc0" + packet + b"\xc0" + slip_crc_encode(PINGREQ)) == [PINGREQ]
    assert deframer.malformed == 1


def test_slip_length_header_must_match() -> None:
    """A packet with a good CRC but a length header disagreeing with its size is dropped."""
    frame = b"\x05\x16ab"  # claims 5 bytes, has 4
    deframer = SlipCrcDeframer()
    assert deframer.feed(slip_crc_encode(frame)) == []
    assert deframer.malformed == 1


def test_slip_oversize_is_bounded() -> None:
    """An END-less flood is discarded in bounded memory; the next packet is delivered."""
    deframer = SlipCrcDeframer(max_frame=60)
    for _ in range(50):
        deframer.feed(b"\x55" * 100)
        assert deframer.pending <= 2 * 62
    assert deframer.feed(slip_crc_encode(PINGREQ)) == [PINGREQ]
    assert deframer.oversize == 1
    too_big = bytes([64, 0x0C]) + bytes(62)
    assert deframer.feed(slip_crc_encode(too_big)) == []
    assert deframer.oversize == 2


def test_slip_reset_drops_partial_packet() -> None:
    """reset() discards an unterminated packet so it cannot merge with the next one."""
    deframer = SlipCrcDeframer()
    assert deframer.feed(slip_crc_encode(CONNECT)[:-4]) == []
    assert deframer.reset() > 0
    assert deframer.feed(slip_crc_encode(CONNECT)[1:]) == [CONNECT]


@given(st.lists(frames(body_cap=255), max_size=20), st.lists(st.integers(min_value=0), max_size=20))
def test_slip_roundtrip_any_chunking(sequence: list[bytes], cuts: list[int]) -> None:
    """Any frame sequence survives SLIP encoding and arbitrary chunking."""
    deframer = SlipCrcDeframer()
    wire = b"".join(slip_crc_encode(f) for f in sequence)
    assert feed_all(deframer, chunked(wire, cuts)) == sequence
    assert deframer.dropped_bytes == 0


@given(
    st.lists(frames(), max_size=8),
    st.binary(max_size=100),
    st.lists(frames(), max_size=8),
    st.lists(st.integers(min_value=0), max_size=20),
)
def test_slip_garbage_between_frames_is_skipped(
    before: list[bytes], garbage: bytes, after: list[bytes], cuts: list[int]
) -> None:
    """Arbitrary garbage between packets costs no valid frame."""
    deframer = SlipCrcDeframer()
    wire = b"".join(map(slip_crc_encode, before)) + garbage + b"".join(map(slip_crc_encode, after))
    assert feed_all(deframer, chunked(wire, cuts)) == before + after


@given(st.lists(frames(), min_size=1, max_size=10), st.integers(min_value=0))
def test_slip_deleted_byte_loses_at_most_one_frame(sequence: list[bytes], position: int) -> None:
    """One byte lost anywhere on the line costs at most the frame it belonged to."""
    wire = b"".join(slip_crc_encode(f) for f in sequence)
    position %= len(wire)
    out = SlipCrcDeframer().feed(wire[:position] + wire[position + 1 :])
    assert len(out) >= len(sequence) - 1
    assert is_subsequence(out, sequence)


@given(
    st.lists(frames(), min_size=1, max_size=10),
    st.integers(min_value=0),
    st.integers(min_value=1, max_value=255),
)
def test_slip_corrupted_byte_loses_at_most_one_frame(
    sequence: list[bytes], position: int, flip: int
) -> None:
    """One corrupted byte anywhere (even into or out of END) costs at most one frame."""
    wire = bytearray(b"".join(slip_crc_encode(f) for f in sequence))
    wire[position % len(wire)] ^= flip
    out = SlipCrcDeframer().feed(bytes(wire))
    assert len(out) >= len(sequence) - 1
    assert is_subsequence(out, sequence)

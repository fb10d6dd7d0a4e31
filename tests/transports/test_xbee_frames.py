"""XBee API framing: exact bytes against digi-xbee's packet classes, escaping, stream resync."""

from __future__ import annotations

import itertools

import pytest
from digi.xbee.models.address import XBee16BitAddress, XBee64BitAddress
from digi.xbee.models.mode import OperatingMode
from digi.xbee.models.status import ATCommandStatus as DigiAtStatus
from digi.xbee.models.status import DiscoveryStatus as DigiDiscovery
from digi.xbee.models.status import ModemStatus as DigiModemStatus
from digi.xbee.models.status import TransmitStatus as DigiTransmitStatus
from digi.xbee.packets import common as digi
from hypothesis import given, settings
from hypothesis import strategies as st

from transports.xbee_frames import (
    ApiFrame,
    AtCommand,
    AtCommandQueue,
    AtResponse,
    AtStatus,
    DeliveryStatus,
    FrameDecoder,
    FrameError,
    ModemStatus,
    ModemStatusCode,
    ReceivePacket,
    TransmitRequest,
    TransmitStatus,
    UnknownFrame,
    encode_frame,
    escape,
    parse_frame_data,
    unescape,
)

MODES = pytest.mark.parametrize("api_mode", [1, 2])
ORACLE = settings(max_examples=40, deadline=None)  # x2 modes x6 frame types: enough, and quick
SPECIAL = b"\x7e\x7d\x11\x13"

frame_ids = st.integers(0, 255)
ieee64s = st.integers(0, 2**64 - 1)
nwk16s = st.integers(0, 0xFFFF)
bytes8 = st.integers(0, 255)
# Biased towards the bytes API mode 2 must escape.
payloads = st.lists(st.one_of(st.sampled_from(list(SPECIAL)), bytes8), max_size=90).map(bytes)
commands = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ%", min_size=2, max_size=2)
delivery_codes = st.sampled_from(sorted({s.code for s in DigiTransmitStatus} & set(DeliveryStatus)))
discovery_codes = st.sampled_from([s.code for s in DigiDiscovery if s.code != 0xFF])


def a64(value: int) -> XBee64BitAddress:
    return XBee64BitAddress(bytearray(value.to_bytes(8, "big")))


def a16(value: int) -> XBee16BitAddress:
    return XBee16BitAddress(bytearray(value.to_bytes(2, "big")))


def decode_one(raw: bytes, api_mode: int) -> ApiFrame:
    decoder = FrameDecoder(api_mode)
    frames = decoder.feed(raw)
    assert len(frames) == 1, decoder
    return parse_frame_data(frames[0])


def assert_same_as_digi(ours: ApiFrame, theirs: digi.XBeeAPIPacket, api_mode: int) -> None:
    """Our bytes equal digi-xbee's, and our decoder reads digi-xbee's bytes back to ``ours``."""
    expected = bytes(theirs.output(escaped=api_mode == 2))
    assert encode_frame(ours, api_mode) == expected
    assert decode_one(expected, api_mode) == ours


# -- byte-for-byte against digi-xbee --------------------------------------------------------


@MODES
@ORACLE
@given(
    frame_id=frame_ids,
    dest64=ieee64s,
    dest16=nwk16s,
    radius=bytes8,
    options=bytes8,
    rf_data=payloads,
)
def test_transmit_request_matches_digi(
    api_mode, frame_id, dest64, dest16, radius, options, rf_data
):
    ours = TransmitRequest(frame_id, dest64, rf_data, dest16, radius, options)
    theirs = digi.TransmitPacket(
        frame_id, a64(dest64), a16(dest16), radius, options, bytearray(rf_data)
    )
    assert_same_as_digi(ours, theirs, api_mode)


@MODES
@ORACLE
@given(src64=ieee64s, src16=nwk16s, options=bytes8, rf_data=payloads)
def test_receive_packet_matches_digi(api_mode, src64, src16, options, rf_data):
    ours = ReceivePacket(src64, rf_data, src16, options)
    theirs = digi.ReceivePacket(a64(src64), a16(src16), options, bytearray(rf_data))
    assert_same_as_digi(ours, theirs, api_mode)


@MODES
@ORACLE
@given(
    frame_id=frame_ids,
    dest16=nwk16s,
    retries=bytes8,
    status=delivery_codes,
    discovery=discovery_codes,
)
def test_transmit_status_matches_digi(api_mode, frame_id, dest16, retries, status, discovery):
    ours = TransmitStatus(frame_id, DeliveryStatus(status), dest16, retries, discovery)
    theirs = digi.TransmitStatusPacket(
        frame_id, a16(dest16), retries, DigiTransmitStatus.get(status), DigiDiscovery.get(discovery)
    )
    assert_same_as_digi(ours, theirs, api_mode)


@MODES
@ORACLE
@given(frame_id=frame_ids, command=commands, parameter=payloads)
def test_at_command_matches_digi(api_mode, frame_id, command, parameter):
    ours = AtCommand(frame_id, command, parameter)
    theirs = digi.ATCommPacket(frame_id, command, bytearray(parameter) or None)
    assert_same_as_digi(ours, theirs, api_mode)


@MODES
@ORACLE
@given(frame_id=frame_ids, command=commands, parameter=payloads)
def test_at_command_queue_matches_digi(api_mode, frame_id, command, parameter):
    ours = AtCommandQueue(frame_id, command, parameter)
    theirs = digi.ATCommQueuePacket(frame_id, command, bytearray(parameter) or None)
    assert_same_as_digi(ours, theirs, api_mode)


@MODES
@ORACLE
@given(
    frame_id=frame_ids, command=commands, status=st.sampled_from([0, 1, 2, 3, 4]), value=payloads
)
def test_at_response_matches_digi(api_mode, frame_id, command, status, value):
    ours = AtResponse(frame_id, command, AtStatus(status), value)
    theirs = digi.ATCommResponsePacket(
        frame_id, command, DigiAtStatus.get(status), bytearray(value) or None
    )
    assert_same_as_digi(ours, theirs, api_mode)


@MODES
@pytest.mark.parametrize("code", list(ModemStatusCode))
def test_modem_status_matches_digi(api_mode, code):
    assert_same_as_digi(
        ModemStatus(code), digi.ModemStatusPacket(DigiModemStatus.get(code)), api_mode
    )


@MODES
def test_digi_parses_our_transmit_request(api_mode):
    raw = bytearray(
        encode_frame(TransmitRequest(0x13, 0x0013A200_4111117E, b"\x7e\x11SN"), api_mode)
    )
    if api_mode == 2:  # digi-xbee's serial reader unescapes before it builds packets
        raw = digi.XBeeAPIPacket.unescape_data(raw)
    packet = digi.TransmitPacket.create_packet(raw, OperatingMode.API_MODE)
    assert packet.frame_id == 0x13
    assert str(packet.x64bit_dest_addr) == "0013A2004111117E"
    assert bytes(packet.rf_data) == b"\x7e\x11SN"


def test_known_vector_from_the_user_guide():
    """XBee 3 Zigbee user guide, AT Command frame example: ATNJ -> 7E 00 04 08 01 4E 4A 5E."""
    assert encode_frame(AtCommand(1, "NJ"), 1) == bytes.fromhex("7E0004 08014E4A 5E")


# -- escaping --------------------------------------------------------------------------------


@given(st.binary(max_size=300))
def test_escape_round_trip(data):
    escaped = escape(data)
    assert unescape(escaped) == data
    assert not set(escaped) & {0x7E, 0x11, 0x13}


def test_escape_vector():
    assert escape(b"\x7e\x7d\x11\x13A") == b"\x7d\x5e\x7d\x5d\x7d\x31\x7d\x33A"


def test_unescape_rejects_dangling_escape():
    with pytest.raises(FrameError):
        unescape(b"A\x7d")


# -- the stream decoder ----------------------------------------------------------------------


@MODES
@given(
    frames=st.lists(st.binary(min_size=1, max_size=120), min_size=1, max_size=5),
    cuts=st.lists(st.integers(0, 2000), max_size=8),
)
def test_decoder_round_trip_in_any_chunks(api_mode, frames, cuts):
    stream = b"".join(encode_frame(data, api_mode) for data in frames)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    decoder = FrameDecoder(api_mode)
    out = []
    for start, end in itertools.pairwise(points):
        out += decoder.feed(stream[start:end])
    assert out == frames


@MODES
def test_decoder_split_at_every_byte(api_mode):
    raw = encode_frame(ReceivePacket(0x0013A200_40A1B27E, b"\x7e\x7d\x11\x13 hello"), api_mode)
    decoder = FrameDecoder(api_mode)
    out = [frame for byte in raw for frame in decoder.feed(bytes((byte,)))]
    assert [parse_frame_data(d) for d in out] == [
        ReceivePacket(0x0013A200_40A1B27E, b"\x7e\x7d\x11\x13 hello")
    ]


@MODES
@given(garbage=st.binary(max_size=64), data=st.binary(min_size=1, max_size=64))
def test_decoder_skips_garbage_before_start(api_mode, garbage, data):
    if api_mode == 1:
        garbage = garbage.replace(b"\x7e", b"")  # AP=1 cannot tell a stray 0x7E from a start
    decoder = FrameDecoder(api_mode)
    assert decoder.feed(garbage + encode_frame(data, api_mode)) == [data]
    if api_mode == 1:
        assert decoder.stats["garbage"] == len(garbage)


@MODES
def test_decoder_resyncs_after_bad_checksum(api_mode):
    first = bytearray(encode_frame(b"\x90first", api_mode))
    first[-1] ^= 0xFF
    second = encode_frame(b"\x90second", api_mode)
    decoder = FrameDecoder(api_mode)
    assert decoder.feed(bytes(first) + second) == [b"\x90second"]
    assert decoder.stats["bad_checksum"] == 1


def test_mode1_resyncs_on_a_false_start_inside_noise():
    noise = b"\x7e\x00\x03\x01\x02"  # a "start" whose length swallows the real frame
    real = encode_frame(b"\x8a\x06", 1)
    decoder = FrameDecoder(1)
    assert decoder.feed(noise + real) == [b"\x8a\x06"]
    assert decoder.stats["bad_checksum"] == 1


def test_mode1_carries_raw_delimiters_in_data():
    data = b"\x90" + b"\x7e" * 20
    assert FrameDecoder(1).feed(encode_frame(data, 1) * 2) == [data, data]


def test_mode2_drops_a_frame_cut_by_a_new_delimiter():
    cut = encode_frame(b"\x90" + b"x" * 30, 2)[:12]
    whole = encode_frame(b"\x8a\x00", 2)
    decoder = FrameDecoder(2)
    assert decoder.feed(cut + whole) == [b"\x8a\x00"]
    assert decoder.stats["truncated"] == 1


def test_mode2_keeps_a_frame_followed_by_noise_and_a_dangling_escape():
    stream = encode_frame(b"\x8a\x06", 2) + b"zz\x7d" + encode_frame(b"\x8a\x02", 2)
    decoder = FrameDecoder(2)
    assert decoder.feed(stream) == [b"\x8a\x06", b"\x8a\x02"]
    assert decoder.stats["garbage"] == 2


@MODES
@pytest.mark.parametrize("length", [b"\x00\x00", b"\xff\xff"])
def test_decoder_rejects_impossible_lengths(api_mode, length):
    decoder = FrameDecoder(api_mode)
    assert decoder.feed(b"\x7e" + length + encode_frame(b"\x8a\x02", api_mode)) == [b"\x8a\x02"]
    assert decoder.stats["bad_length"] == 1


# -- parsing ---------------------------------------------------------------------------------


def test_unknown_status_codes_are_kept():
    status = parse_frame_data(bytes.fromhex("8B 05 FFFD 00 99 00"))
    assert isinstance(status, TransmitStatus)
    assert status.delivery_status == 0x99
    assert status.delivery_status.name == "UNKNOWN_0x99"


def test_unknown_frame_type_is_kept_whole():
    assert parse_frame_data(b"\x95abc") == UnknownFrame(0x95, b"abc")


@pytest.mark.parametrize("data", [b"", b"\x90\x00", b"\x8b\x01", b"\x88\x01AP", b"\x10\x01"])
def test_short_frames_raise_frame_error(data):
    with pytest.raises(FrameError):
        parse_frame_data(data)


@pytest.mark.parametrize(
    "build",
    [
        lambda: TransmitRequest(256, 1, b""),
        lambda: TransmitRequest(1, 2**64, b""),
        lambda: AtCommand(1, "A"),
        lambda: ReceivePacket(1, b"", src16=0x10000),
    ],
)
def test_impossible_fields_cannot_be_built(build):
    with pytest.raises(ValueError):
        build()


def test_encode_rejects_unknown_api_mode():
    with pytest.raises(ValueError):
        encode_frame(b"\x8a\x00", 0)


def test_decoder_repr_shows_state():
    decoder = FrameDecoder(2)
    decoder.feed(b"junk\x7e\x00")
    assert repr(decoder) == "<FrameDecoder AP=2 buffered=2 garbage=4>"

"""Property tests: round trips for every type; garbage and mutated frames never escape as anything
but RemoteProtocolError."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import LocalProtocolError, RemoteProtocolError
from gateway.protocol import Message, MsgType, decode, encode, frame_length
from tests.protocol.strategies import BY_TYPE, messages

# No deadline: the machine running the suite may be busy; examples are kept few enough that the
# whole tests/protocol directory stays well under 20 s.
FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MANY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("msg_type", list(BY_TYPE), ids=lambda t: t.name)
@FEW
@given(data=st.data())
def test_round_trip(msg_type: MsgType, data: st.DataObject) -> None:
    """decode(encode(m)) == m for every message type, both Length forms."""
    msg = data.draw(BY_TYPE[msg_type])
    wire = encode(msg)
    assert wire[1 if wire[0] != 1 else 3] == msg_type
    assert decode(wire) == msg
    assert frame_length(wire) == len(wire)
    # Encoder rule [reference §1]: short form iff the total fits in 255 bytes.
    if msg_type is not MsgType.ENCAPSULATED:
        assert (wire[0] == 0x01) == (len(wire) > 0xFF)


@MANY
@given(msg=messages)
def test_decoded_messages_pass_their_own_constructor(msg: Message) -> None:
    """The decoder's fast construction never yields what the validating constructor would refuse."""
    decoded = decode(encode(msg))
    rebuilt = dataclasses.replace(decoded)  # type: ignore[type-var]
    assert rebuilt == decoded
    assert hash(rebuilt) == hash(decoded)


def _decode_or_reject(wire: bytes) -> Message | None:
    """Decode, allowing only RemoteProtocolError; check what decodes is self-consistent."""
    try:
        msg = decode(wire)
    except RemoteProtocolError:
        msg = None
    except Exception as exc:  # the property under test: nothing else may escape
        raise AssertionError(f"decode({wire.hex()}) raised {exc!r}") from exc
    try:
        claimed = frame_length(wire)
    except RemoteProtocolError:
        claimed = -1
    except Exception as exc:
        raise AssertionError(f"frame_length({wire.hex()}) raised {exc!r}") from exc
    if msg is None:
        return None
    # Whatever decodes frames to exactly its own size and re-encodes to the same message.
    assert claimed == len(wire)
    try:
        again = encode(msg)
    except LocalProtocolError as exc:
        # The only thing accepted on receipt but refused on sending: P5's stray MsgId.
        assert "MsgId must be 0" in str(exc)
        return msg
    assert decode(again) == msg
    return msg


@MANY
@given(wire=st.binary(max_size=64))
def test_random_bytes(wire: bytes) -> None:
    """Arbitrary datagrams decode or raise RemoteProtocolError, nothing else."""
    _decode_or_reject(wire)


@MANY
@given(msg_type=st.integers(0, 0xFF), body=st.binary(max_size=40), long_form=st.booleans())
def test_random_bodies_with_consistent_length(msg_type: int, body: bytes, long_form: bool) -> None:
    """Frames whose Length is right reach every body decoder with arbitrary contents."""
    if long_form:
        wire = bytes((1, 0, len(body) + 4, msg_type)) + body
    else:
        wire = bytes((len(body) + 2, msg_type)) + body
    _decode_or_reject(wire)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A valid frame with one fault: bit flip, truncation, extension or a tampered Length."""
    wire = bytearray(encode(draw(messages)))
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "length", "long-length"]))
    if kind == "flip":
        index = draw(st.integers(0, len(wire) - 1))
        wire[index] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        del wire[draw(st.integers(0, len(wire) - 1)) :]
    elif kind == "extend":
        wire += draw(st.binary(min_size=1, max_size=8))
    elif kind == "length":
        wire[0] = draw(st.integers(0, 0xFF))
    else:  # rewrite the header as the long form carrying an arbitrary value (P6)
        header = 3 if wire[0] == 0x01 else 1
        wire[:header] = bytes((1,)) + draw(st.integers(0, 0xFFFF)).to_bytes(2, "big")
    return bytes(wire)


@MANY
@given(wire=mutated_frames())
def test_mutated_frames(wire: bytes) -> None:
    """Damaged frames decode to something consistent or raise RemoteProtocolError."""
    _decode_or_reject(wire)


@FEW
@given(frames=st.lists(messages.map(encode), min_size=1, max_size=6), cut=st.integers(0, 10))
def test_frame_length_splits_streams(frames: list[bytes], cut: int) -> None:
    """A stream of frames is split exactly; a partial tail asks for more bytes (None)."""
    stream = b"".join(frames)
    out = []
    while stream:
        size = frame_length(stream)
        assert size is not None
        out.append(stream[:size])
        stream = stream[size:]
    assert out == frames
    last = frames[-1]
    partial = last[: min(cut, len(last) - 1)]
    size = frame_length(partial)
    assert size is None or size == len(last)

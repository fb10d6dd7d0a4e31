"""A million random and mutated chunks into each serial deframer and each XBee API mode.

Pure code, so this is fast: the stream is valid wire frames (MQTT-SN frames of every type from
``FrameFactory``, plainly framed, SLIP+CRC framed, or carried in XBee API frames of every kind),
their mutations and noise, cut at random points into chunks of 1-32 bytes (serial reads are small). After every chunk the
decoder's buffer must be within its documented bound; nothing may raise; every frame that comes
out must be whole (its own length header agrees, the codec decodes it or raises only
RemoteProtocolError, the XBee parser raises only FrameError). Every 500 chunks a known valid
frame is fed (after the idle-gap reset where the format needs one) and must come out intact.

The four decoders run in two worker processes (this machine has two cores). Set
``MQTTSN_FUZZ_SEED`` to replay another seed; a failure names the decoder, seed and chunk.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.errors import RemoteProtocolError
from gateway.protocol import decode
from tests.fuzz.mutations import FrameFactory
from transports.framing import SlipCrcDeframer, StreamDeframer, frame_total, slip_crc_encode
from transports.xbee_frames import (
    MAX_FRAME_DATA,
    AtCommand,
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
    encode_frame,
    parse_frame_data,
)

SEED = int(os.environ.get("MQTTSN_FUZZ_SEED", "20261122"))
CHUNKS = 1_000_000
PROBE_EVERY = 500
MAX_FRAME = 255  # the serial transports' default max_frame

KINDS = ("xbee-api2", "plain", "xbee-api1", "slip")  # slowest first: the two workers even out


@dataclass
class FuzzResult:
    """What one decoder went through."""

    kind: str
    chunks: int = 0
    bytes_fed: int = 0
    frames_out: int = 0
    probes: int = 0
    probes_recovered: int = 0
    max_buffered: int = 0
    decoded: int = 0  # frames out that the MQTT-SN codec accepted
    failures: list[str] = field(default_factory=list)
    stats: str = ""


class _Harness:
    """One decoder kind: how to frame, feed, reset and measure it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.mode = 2 if kind == "xbee-api2" else 1
        self.decoder: Any
        if kind == "plain":
            self.decoder = StreamDeframer(MAX_FRAME)
            self.bound = MAX_FRAME + 3  # one candidate frame, plus an incomplete header
        elif kind == "slip":
            self.decoder = SlipCrcDeframer(MAX_FRAME)
            self.bound = 2 * (MAX_FRAME + 2)  # fully escaped frame + CRC (documented)
        else:
            self.decoder = FrameDecoder(self.mode)
            # AP=1: delimiter, length, data, checksum; AP=2: all of that escaped.
            self.bound = (MAX_FRAME_DATA + 4) * (2 if self.mode == 2 else 1)

    def wire(self, payload: bytes, rng: random.Random) -> bytes:
        """``payload`` (an MQTT-SN frame) as this line format carries it."""
        if self.kind == "plain":
            return payload
        if self.kind == "slip":
            return slip_crc_encode(payload)
        return encode_frame(self.api_frame(payload, rng), self.mode)

    def api_frame(self, payload: bytes, rng: random.Random) -> Any:
        """Any XBee API frame; node traffic (0x90 carrying ``payload``) most of the time."""
        roll = rng.random()
        if roll < 0.6 or not payload:
            return ReceivePacket(rng.getrandbits(64), payload or b"\x02\x16", rng.getrandbits(16))
        if roll < 0.7:
            return TransmitStatus(rng.randrange(256), DeliveryStatus(rng.randrange(256)))
        if roll < 0.8:
            return AtResponse(rng.randrange(256), "AP", AtStatus(rng.randrange(256)), payload[:4])
        if roll < 0.85:
            return ModemStatus(ModemStatusCode(rng.randrange(256)))
        if roll < 0.9:
            return AtCommand(rng.randrange(256), "NI", payload[:20])
        if roll < 0.95:
            return TransmitRequest(rng.randrange(256), rng.getrandbits(64), payload)
        return bytes((rng.randrange(256),)) + payload  # any frame type: kept as UnknownFrame

    def reset(self) -> None:
        self.decoder.reset()

    def recovers_without_reset(self) -> bool:
        """SLIP (END flushes) and AP=2 (a raw 0x7E is always a delimiter) resynchronise alone."""
        return self.kind in ("slip", "xbee-api2")

    def check_frame(self, frame: bytes) -> str | None:
        """A problem with a frame the decoder produced, or None."""
        if isinstance(self.decoder, FrameDecoder):
            if not 0 < len(frame) <= MAX_FRAME_DATA:
                return f"frame data of {len(frame)} bytes"
            try:
                parse_frame_data(frame)
            except FrameError:
                pass  # the one exception the transport expects (and counts)
            except Exception as exc:
                return f"parse_frame_data({frame[:16].hex()}) raised {exc!r}, not FrameError"
            return None
        if frame_total(frame) != len(frame) or len(frame) > MAX_FRAME:
            return f"frame whose header disagrees with its {len(frame)} bytes: {frame[:16].hex()}"
        return None


_SPECIALS = (0x7E, 0x7D, 0x11, 0x13, 0xC0, 0xDB, 0xDC, 0xDD, 0x01, 0x00, 0xFE, 0xFF)


def _wire_mutation(data: bytes, rng: random.Random, factory: FrameFactory) -> bytes:
    """A line-level accident: a delimiter or escape byte dropped in, a byte lost, a cut."""
    roll = rng.random()
    if not data or roll < 0.4:
        return factory.mutate(data)  # bit flips, inserts, deletes, truncation, splices ...
    i = rng.randrange(len(data))
    if roll < 0.7:
        return data[:i] + bytes((rng.choice(_SPECIALS),)) + data[i:]
    if roll < 0.85:
        return data[:i] + bytes((rng.choice(_SPECIALS),)) + data[i + 1 :]
    return data[:i]


def _corpus(harness: _Harness, rng: random.Random, factory: FrameFactory) -> list[bytes]:
    """Segments the stream is drawn from: 40 % valid, 40 % mutated, 20 % noise."""
    segments = []
    for _ in range(20_000):
        roll = rng.random()
        if roll < 0.4:
            segments.append(harness.wire(factory.frame(), rng))
        elif roll < 0.8:
            inner = factory.frame() if rng.random() < 0.7 else factory.mutated()
            segments.append(_wire_mutation(harness.wire(inner, rng), rng, factory))
        else:
            noise = rng.randbytes(rng.randrange(1, 48))
            if rng.random() < 0.3:  # noise rich in delimiters and escapes
                noise = bytes(rng.choice(_SPECIALS) if rng.random() < 0.3 else b for b in noise)
            segments.append(noise)
    return segments


def fuzz_decoder(kind: str, chunks: int, seed: int) -> FuzzResult:
    """Feed ``chunks`` chunks to a fresh decoder of ``kind`` (runs in a worker process)."""
    rng = random.Random(f"{kind}-{seed}")
    factory = FrameFactory(rng.randrange(1 << 30))
    harness = _Harness(kind)
    result = FuzzResult(kind)
    segments = _corpus(harness, rng, factory)
    limit = MAX_FRAME if kind in ("plain", "slip") else 900
    probes = [p for p in (factory.frame() for _ in range(200)) if len(p) <= limit]
    mean = sum(map(len, segments)) / len(segments)
    stream = b"".join(rng.choices(segments, k=int(chunks * 12 / mean) + 100))
    sizes = rng.choices(range(1, 33), weights=range(32, 0, -1), k=chunks)
    feed, bound, check = harness.decoder.feed, harness.bound, harness.check_frame
    # Each decoder keeps one bytearray for its whole life (extended and cut in place); its
    # length is what it holds. Read directly: a property call per chunk costs 10 % here.
    held = harness.decoder._buffer
    failures = result.failures
    where = [0]  # the chunk being fed, for the failure messages

    def note(problem: str) -> None:
        if len(failures) < 10:
            failures.append(f"{kind} seed {seed} chunk {where[0]}: {problem}")

    def emit(frames: list[bytes]) -> None:
        result.frames_out += len(frames)
        for frame in frames:
            problem = check(frame)
            if problem:
                note(problem)
            if kind in ("plain", "slip"):
                try:
                    decode(frame)
                    result.decoded += 1
                except RemoteProtocolError:
                    pass

    at, end, max_buffered = 0, len(stream), 0
    for n, size in enumerate(sizes, 1):
        if at >= end:
            at = 0
        chunk = stream[at : at + size]
        at += size
        result.bytes_fed += len(chunk)
        try:
            frames = feed(chunk)
        except Exception as exc:
            where[0] = n
            note(f"feed({chunk.hex()}) raised {exc!r}")
            harness.reset()
            continue
        if frames:
            emit(frames)
        if len(held) > max_buffered:
            max_buffered = len(held)
            if max_buffered > bound:
                where[0] = n
                note(f"{max_buffered} bytes buffered, bound {bound}")
        if n % PROBE_EVERY == 0:
            where[0] = n
            _probe(harness, rng, probes, result, note, emit)
    result.chunks += len(sizes)  # plus the probes' chunks, counted by _probe
    result.max_buffered = max_buffered
    result.stats = repr(harness.decoder)
    return result


def _probe(
    harness: _Harness,
    rng: random.Random,
    probes: list[bytes],
    result: FuzzResult,
    note: Callable[[str], None],
    emit: Callable[[list[bytes]], None],
) -> None:
    """A valid frame after the noise (and after an idle gap where the format needs one)."""
    payload = rng.choice(probes)
    if not harness.recovers_without_reset():
        harness.reset()
    if isinstance(harness.decoder, FrameDecoder):
        frame = ReceivePacket(rng.getrandbits(64), payload, rng.getrandbits(16))
        wire, expected = encode_frame(frame, harness.mode), frame.to_frame_data()
    else:
        wire, expected = harness.wire(payload, rng), payload
    cuts = sorted(rng.sample(range(1, len(wire)), min(2, len(wire) - 1)))
    out: list[bytes] = []
    for part in (wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)):
        result.chunks += 1
        result.bytes_fed += len(part)
        out += harness.decoder.feed(part)
    emit(out)
    result.probes += 1
    if out and out[-1] == expected:
        result.probes_recovered += 1
    else:
        note(f"valid frame {expected.hex()} not recovered; got {[f.hex() for f in out]}")


@pytest.fixture(scope="module")
def results() -> dict[str, FuzzResult]:
    """The four decoders fuzzed in two worker processes."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
        jobs = {kind: pool.submit(fuzz_decoder, kind, CHUNKS, SEED) for kind in KINDS}
        return {kind: job.result() for kind, job in jobs.items()}


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_a_million_chunks_never_raise_stay_bounded_and_recover(
    results: dict[str, FuzzResult], kind: str
) -> None:
    """No exception, buffer within bound, only whole frames out, valid frames recovered."""
    result = results[kind]
    summary = (
        f"{kind}: {result.chunks} chunks, {result.bytes_fed} bytes, {result.frames_out} frames"
        f" out ({result.decoded} decoded), max buffered {result.max_buffered},"
        f" probes {result.probes_recovered}/{result.probes}; {result.stats}"
    )
    print(summary)
    assert not result.failures, "\n".join([summary, *result.failures])
    assert result.chunks >= CHUNKS
    assert result.probes >= CHUNKS // PROBE_EVERY
    assert result.frames_out > result.probes  # valid frames amid the noise came out too

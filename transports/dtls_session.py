"""DTLS sessions without the socket: their Mbed TLS set-up, their records, one peer's state.

``transports.dtls`` owns the socket, the session tables and the policy (limits, timeouts,
counters, warnings); this module holds what it applies to Mbed TLS and to one peer's datagrams
and buffer: checking the PSK table and suites and building the server context, reading DTLS
record headers (is this DTLS, does it open with a ClientHello, where do records end), the
bytes a record adds to a frame, whether a handshake got past its cookie or is over, and the
loop that steps a handshake until Mbed TLS needs input. Nothing here sends, logs or reads the
clock; the caller passes in how to flush what Mbed TLS queued.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from mbedtls import tls
from mbedtls.exceptions import TLSError

if TYPE_CHECKING:
    from transports.dtls import DtlsAddress

__all__ = [
    "DtlsSession",
    "Records",
    "application_records",
    "check_ciphers",
    "check_psk",
    "client_hello_random",
    "cut_datagrams",
    "handshake_over",
    "handshake_progressed",
    "parse_records",
    "record_overhead",
    "run_handshake",
    "server_context",
]

_MAX_PSK: Final = 32  # MBEDTLS_PSK_MAX_LEN of the bundled Mbed TLS
_HEADER: Final = 13  # DTLS record header: type 1, version 2, epoch 2, sequence 6, length 2
_CHANGE_CIPHER_SPEC, _ALERT, _HANDSHAKE, _APPLICATION_DATA = 20, 21, 22, 23
_CLIENT_HELLO: Final = 1
_RANDOM: Final = slice(_HEADER + 12 + 2, _HEADER + 12 + 2 + 32)  # after handshake hdr, version

#: (content type, epoch, offset) of each record in a datagram.
Records = list[tuple[int, int, int]]


def check_psk(psk: Mapping[str, bytes]) -> None:
    """Raise ValueError unless ``psk`` maps 1..128-byte identities to 1..32-byte keys."""
    if not psk:
        raise ValueError("psk needs at least one identity -> key")
    for identity, key in psk.items():
        if not isinstance(identity, str) or not identity or len(identity.encode()) > 128:
            raise ValueError(f"PSK identity {identity!r}: a string of 1..128 bytes")
        if not isinstance(key, bytes | bytearray) or not 1 <= len(key) <= _MAX_PSK:
            raise ValueError(f"PSK of {identity!r}: 1..{_MAX_PSK} bytes (a hex key: 32 digits)")


def check_ciphers(ciphers: Sequence[str]) -> tuple[str, ...]:
    """``ciphers`` as a tuple; ValueError if empty or naming a suite this Mbed TLS lacks."""
    ciphers = tuple(ciphers)
    unknown = sorted(set(ciphers) - set(tls.ciphers_available()))
    if not ciphers or unknown:
        raise ValueError(f"cipher suites not available in this Mbed TLS: {unknown}")
    return ciphers


def server_context(
    psk: Mapping[str, bytes],
    ciphers: tuple[str, ...],
    retransmit_timeout: float,
    handshake_timeout: float,
) -> tls.ServerContext:
    """A DTLS 1.2 server context for ``psk`` and ``ciphers``, with replay protection on."""
    # The PSK mapping is held by Mbed TLS' configuration; keys are never logged.
    return tls.ServerContext(
        tls.DTLSConfiguration(
            pre_shared_key_store={k: bytes(v) for k, v in psk.items()},
            ciphers=ciphers,
            validate_certificates=False,
            lowest_supported_version=tls.DTLSVersion.DTLSv1_2,
            highest_supported_version=tls.DTLSVersion.DTLSv1_2,
            anti_replay=True,
            handshake_timeout_min=retransmit_timeout,
            handshake_timeout_max=handshake_timeout,
        )
    )


def record_overhead(ciphers: Sequence[str]) -> int:
    """Bytes a DTLS 1.2 record adds to its payload, for the worst of ``ciphers``."""
    worst = 0
    for name in ciphers:
        if "CHACHA20" in name:
            extra = 16  # tag, no explicit nonce
        elif name.endswith("-CCM-8"):
            extra = 8 + 8  # explicit nonce, 8-byte tag
        elif "-GCM-" in name or name.endswith("-CCM"):
            extra = 8 + 16  # explicit nonce, 16-byte tag
        else:
            extra = 16 + 48 + 16  # CBC: IV, up to a SHA-384 MAC, up to a block of padding
        worst = max(worst, extra)
    return _HEADER + worst


def parse_records(data: bytes) -> Records | None:
    """(content type, epoch, offset) of each record, or None unless ``data`` is DTLS records."""
    found: Records = []
    offset, size = 0, len(data)
    while offset < size:
        if size - offset < _HEADER:
            return None
        kind, major = data[offset], data[offset + 1]
        if not _CHANGE_CIPHER_SPEC <= kind <= _APPLICATION_DATA or major != 0xFE:
            return None
        length = data[offset + 11] << 8 | data[offset + 12]
        if offset + _HEADER + length > size:
            return None
        found.append((kind, data[offset + 3] << 8 | data[offset + 4], offset))
        offset += _HEADER + length
    return found or None


def application_records(records: Records) -> int:
    """How many of ``records`` carry application data (each should decrypt to one frame)."""
    return sum(1 for kind, _, _ in records if kind == _APPLICATION_DATA)


def client_hello_random(data: bytes, records: Records) -> bytes | None:
    """The random of a datagram that opens with a ClientHello (epoch 0), else None."""
    kind, epoch, _ = records[0]
    if kind != _HANDSHAKE or epoch != 0 or len(data) < _RANDOM.stop or data[_HEADER] != 1:
        return None
    return data[_RANDOM]


def cut_datagrams(data: bytes, mtu: int) -> Iterator[bytes]:
    """Cut queued records into datagrams of at most ``mtu`` bytes, never splitting a record."""
    start = offset = 0
    size = len(data)
    while offset < size:
        if size - offset < _HEADER:
            break
        end = offset + _HEADER + (data[offset + 11] << 8 | data[offset + 12])
        if end - start > mtu and offset > start:
            yield data[start:offset]
            start = offset
        offset = end
    if start < size:
        yield data[start:]


def handshake_over(buffer: tls.TLSWrappedBuffer) -> bool:
    """True once the handshake on ``buffer`` finished."""
    # python-mbedtls offers no public "handshake done" test (do_handshake() afterwards raises
    # ValueError); the state is readable, and typed in its stubs, as ``_handshake_state``.
    # (Compared by name: the stubs type the HandshakeStep members as int.)
    return buffer._handshake_state.name == "HANDSHAKE_OVER"


def handshake_progressed(buffer: tls.TLSWrappedBuffer) -> bool:
    """True once the server answered a ClientHello with a ServerHello (its cookie was good)."""
    return buffer._handshake_state.name not in ("HELLO_REQUEST", "CLIENT_HELLO")


def run_handshake(buffer: tls.TLSWrappedBuffer, flush: Callable[[], bool]) -> None:
    """Run handshake steps until Mbed TLS needs input; ``flush`` sends what it queued.

    ``flush`` returns True if there was anything to send. A ``TLSError`` (a HelloVerifyRequest,
    a failed handshake) is raised after flushing what Mbed TLS queued for the peer.
    """
    for _ in range(64):  # a handshake has ~10 steps; never spin on a confused library
        if handshake_over(buffer):
            return
        try:
            buffer.do_handshake()
        except tls.WantWriteError:
            flush()
        except tls.WantReadError:
            # An expired timer makes Mbed TLS resend its flight and return WantRead before
            # looking at the input: after a resend, step once more to read it.
            if not flush():
                return
        except TLSError:
            flush()  # a HelloVerifyRequest, or an alert to the peer
            raise


class DtlsSession:
    """One peer's DTLS state."""

    __slots__ = ("address", "buffer", "deadline", "last_seen", "random", "sockaddr")

    def __init__(
        self,
        address: DtlsAddress,
        sockaddr: tuple[Any, ...],
        buffer: tls.TLSWrappedBuffer,
        random: bytes,
        deadline: float,
    ) -> None:
        self.address = address
        self.sockaddr = sockaddr
        self.buffer = buffer
        self.random = random  # the ClientHello random that opened it: tells a restart apart
        self.deadline = deadline  # handshake must be over by then
        self.last_seen = 0.0

    def __repr__(self) -> str:
        return f"<DtlsSession {self.address} last_seen={self.last_seen:.1f}>"

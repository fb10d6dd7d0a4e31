"""MQTT-SN over DTLS 1.2 with pre-shared keys, on UDP: one DTLS record carries one MQTT-SN frame.

The record layer is Mbed TLS 2.28 through python-mbedtls' sans-I/O buffers: each peer gets one
``TLSWrappedBuffer``; datagrams go in with ``receive_from_network``, handshake steps and record
reads run until the library wants more input, and whatever it queued for the network is cut at
record boundaries into datagrams and sent. The socket is a plain asyncio ``DatagramProtocol``.
This module is the public face (``DtlsTransport``, ``DtlsAddress``, the defaults, and
``record_overhead`` re-exported) and holds the socket, the session tables and their policy;
the Mbed TLS side without a socket (PSK and suite checks, the server context, record parsing
and cutting, handshake stepping, one peer's session state) lives in :mod:`transports.dtls_session`.

What a hostile network cannot do (RFC 6347 §4.2.1, §4.1.2.6):

* make us keep state from a spoofed source: a ClientHello without a valid cookie is answered
  with a HelloVerifyRequest (smaller than the ClientHello: no amplification) from a throw-away
  buffer; state is kept only once the cookie, bound to the source address, checks out;
* fill memory: half-open handshakes are bounded (``max_handshakes``) and time out
  (``handshake_timeout``); sessions are bounded (``max_peers``), the least recently heard one
  is evicted for a new one;
* crash or confuse us with garbage: non-DTLS datagrams, records that fail to decrypt or are
  replayed are dropped, counted and logged (WARNING with the source, rate-limited).

Handshake flights are retransmitted on Mbed TLS' doubling timer (``retransmit_timeout`` up to
``handshake_timeout``), looked at by a tick that runs only while handshakes are open (or an
``idle_timeout`` is set). A peer that restarts and sends a fresh
ClientHello (new random) from the same address gets a new session once its cookie checks out;
the old one is kept until then. A peer whose session the gateway forgot (restart, eviction)
must handshake again: its records are dropped and counted as ``rx_no_session``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from mbedtls import tls
from mbedtls.exceptions import TLSError

from transports.base import Address, FrameSink, LinkEvent, LinkEventSink, Transport
from transports.dtls_session import (
    DtlsSession,
    Records,
    application_records,
    check_ciphers,
    check_psk,
    client_hello_random,
    cut_datagrams,
    handshake_over,
    handshake_progressed,
    parse_records,
    record_overhead,
    run_handshake,
    server_context,
)
from transports.warning_limiter import WarningLimiter

__all__ = ["DEFAULT_CIPHERS", "DEFAULT_PORT", "DtlsAddress", "DtlsTransport", "record_overhead"]

_LOGGER = logging.getLogger(__name__)

DEFAULT_PORT: Final = 1885  # no port is registered for MQTT-SN over DTLS: UDP's 1884, plus one
#: PSK suites, AEAD only; CCM-8 first: the one RFC 7925 (IoT profile) makes mandatory.
DEFAULT_CIPHERS: Final = (
    "TLS-PSK-WITH-AES-128-CCM-8",
    "TLS-PSK-WITH-AES-128-CCM",
    "TLS-PSK-WITH-AES-128-GCM-SHA256",
)
_MAX_DATAGRAM: Final = 16384 + 2048  # a full record plus expansion; larger is not DTLS
_OUT_MAX: Final = 1 << 16
_TICK: Final = 0.1  # retransmission and handshake timeout resolution, seconds
_IDLE_TICK: Final = 1.0  # idle_timeout resolution; no tick at all when there is nothing to time
_EXCERPT: Final = 16


# Defined here, not in dtls_session: the state file (gateway.store_codec) names its module.
@dataclass(frozen=True, slots=True)
class DtlsAddress:
    """A DTLS peer on UDP; ``host`` is the textual IP address as the socket reports it."""

    host: str
    port: int

    def __str__(self) -> str:
        where = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        return f"dtls://{where}"


class _Endpoint(asyncio.DatagramProtocol):
    """The socket's protocol: hands datagrams to the transport."""

    def __init__(self, owner: DtlsTransport) -> None:
        self._owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._owner._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        # Linux reports ICMP port unreachable of an earlier send here: the peer went away.
        self._owner.counters["tx_errors"] += 1
        _LOGGER.debug("%s: socket error: %s", self._owner.name, exc)


class DtlsTransport(Transport):
    """MQTT-SN frames in DTLS 1.2 records (PSK) over UDP, IPv4 or IPv6; unicast only.

    Args:
        bind_host: local address; ``"::"`` listens on IPv6 and IPv4 (dual stack).
        bind_port: local port; 0 picks a free one (see ``local_address``).
        psk: identity -> key (1..32 bytes); a ClientHello naming another identity is refused.
        ciphers: Mbed TLS suite names, most preferred first (see ``DEFAULT_CIPHERS``).
        handshake_timeout: seconds a handshake may take before its state is dropped; also the
            cap of the retransmission timer.
        retransmit_timeout: first retransmission of a lost flight (doubles each time).
        idle_timeout: drop a session not heard from for this long; None keeps it until evicted
            (sleeping nodes stay silent for their whole sleep duration).
        max_peers: established sessions kept; the least recently heard one makes room.
        max_handshakes: half-open handshakes kept at once; more ClientHellos are ignored.
        max_frame: largest datagram sent; frames are limited to that minus the record overhead.
        rcvbuf: SO_RCVBUF to ask for (bursts of many nodes); the kernel may grant less.
        warn_interval: at most one WARNING per source and kind in this many seconds.
    """

    def __init__(
        self,
        bind_host: str = "0.0.0.0",
        bind_port: int = DEFAULT_PORT,
        *,
        psk: Mapping[str, bytes],
        ciphers: Sequence[str] = DEFAULT_CIPHERS,
        handshake_timeout: float = 10.0,
        retransmit_timeout: float = 1.0,
        idle_timeout: float | None = None,
        max_peers: int = 1000,
        max_handshakes: int = 64,
        max_frame: int = 1024,
        rcvbuf: int = 4 * 1024 * 1024,
        warn_interval: float = 10.0,
        name: str = "dtls",
    ) -> None:
        check_psk(psk)
        ciphers = check_ciphers(ciphers)
        if not 0 < retransmit_timeout <= handshake_timeout:
            raise ValueError("need 0 < retransmit_timeout <= handshake_timeout")
        if max_peers < 1 or max_handshakes < 1:
            raise ValueError("max_peers and max_handshakes must be at least 1")
        self.identities = len(psk)
        self.overhead = record_overhead(ciphers)
        if not self.overhead + 2 <= max_frame <= 65535:
            raise ValueError(f"max_frame must be within {self.overhead + 2}..65535")
        self.name = name
        self.bind_host = bind_host
        self.bind_port = bind_port
        self.ciphers = ciphers
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.max_peers = max_peers
        self.max_handshakes = max_handshakes
        self.max_frame = max_frame
        self.rcvbuf = rcvbuf
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "rx_frames",
                "rx_malformed",  # not DTLS at all
                "rx_undecryptable",  # records that failed to decrypt, or replays
                "rx_no_session",  # records of a peer without a session
                "rx_oversize",
                "rx_deliver_errors",
                "tx_frames",
                "tx_errors",
                "tx_oversize",
                "tx_no_session",
                "hello_verify_requests",
                "handshakes",
                "handshakes_failed",
                "handshakes_refused",  # max_handshakes reached
                "handshake_timeouts",
                "sessions_closed",
                "sessions_evicted",
            ),
            0,
        )
        self._context = server_context(psk, ciphers, retransmit_timeout, handshake_timeout)
        self._warnings = WarningLimiter(_LOGGER, warn_interval)
        self._sessions: OrderedDict[tuple[str, int], DtlsSession] = OrderedDict()  # LRU first
        self._handshakes: dict[tuple[str, int], DtlsSession] = {}
        self._deliver: FrameSink = _no_sink
        self._on_event: LinkEventSink | None = None
        self._endpoint: _Endpoint | None = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self._read_buffer = bytearray(_MAX_DATAGRAM)
        self._local: DtlsAddress | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, deliver: FrameSink, on_event: LinkEventSink | None = None) -> None:
        """Bind the socket and begin accepting handshakes."""
        if self._endpoint is not None:
            raise RuntimeError(f"{self!r} is already started")
        loop = asyncio.get_running_loop()
        sock = self._socket()
        try:
            _, protocol = await loop.create_datagram_endpoint(lambda: _Endpoint(self), sock=sock)
        except BaseException:
            sock.close()
            raise
        self._endpoint = protocol
        self._deliver = deliver
        self._on_event = on_event
        host, port = sock.getsockname()[:2]
        self._local = DtlsAddress(host, port)
        _LOGGER.info(
            "%s: DTLS 1.2 (PSK, %d identities) on %s; suites %s",
            self.name,
            self.identities,
            self._local,
            ", ".join(self.ciphers),
        )

    async def close(self) -> None:
        """Send close_notify to every peer, then close the socket."""
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        for session in list(self._sessions.values()):
            self._shutdown(session)
        self._sessions.clear()
        self._handshakes.clear()
        if self._endpoint is not None and self._endpoint.transport is not None:
            self._endpoint.transport.close()
        self._endpoint = None
        self._deliver = _no_sink
        self._on_event = None

    @property
    def local_address(self) -> DtlsAddress | None:
        """The address the socket is bound to (after start)."""
        return self._local

    @property
    def peers(self) -> int:
        """Established sessions."""
        return len(self._sessions)

    @property
    def handshakes(self) -> int:
        """Half-open handshakes."""
        return len(self._handshakes)

    # -- the Transport contract --------------------------------------------------------------

    def send(self, address: Address, frame: bytes) -> None:
        """Encrypt one frame into one record for an established peer; else count and drop."""
        session = None
        if isinstance(address, DtlsAddress):
            session = self._sessions.get((address.host, address.port))
        if session is None:
            self.counters["tx_no_session"] += 1
            _LOGGER.debug("%s: no DTLS session with %s; frame dropped", self.name, address)
            return
        if len(frame) > self.max_frame - self.overhead:
            self.counters["tx_oversize"] += 1
            self._warnings.warning(
                ("tx-oversize", address),
                "%s: not sending %d-byte frame to %s: larger than %d",
                self.name,
                len(frame),
                address,
                self.max_frame - self.overhead,
            )
            return
        try:
            session.buffer.write(frame)
        except TLSError as exc:
            self.counters["tx_errors"] += 1
            _LOGGER.info(
                "%s: DTLS write to %s failed (%s); session dropped", self.name, address, exc
            )
            self._drop(session)
            return
        self._flush(session.buffer, session.sockaddr)
        self.counters["tx_frames"] += 1

    def broadcast(self, frame: bytes, radius: int = 0) -> None:
        """DTLS has no broadcast: a no-op (GWINFO goes unicast, ADVERTISE is not sent)."""

    def max_frame_size(self, address: Address | None = None) -> int:
        """``max_frame`` minus the record overhead of the worst configured suite."""
        return self.max_frame - self.overhead

    def owns(self, address: Address) -> bool:
        """True for a DtlsAddress."""
        return isinstance(address, DtlsAddress)

    def cipher(self, address: DtlsAddress) -> str | None:
        """The suite negotiated with an established peer, else None."""
        session = self._sessions.get((address.host, address.port))
        return None if session is None else cast(str, session.buffer.cipher())  # stubs: bytes

    # -- receiving ---------------------------------------------------------------------------

    def _on_datagram(self, data: bytes, addr: tuple[Any, ...]) -> None:
        key = (addr[0], addr[1])
        if len(data) > _MAX_DATAGRAM:
            self.counters["rx_oversize"] += 1
            self._warn(key, "oversize", "%d-byte datagram", len(data))
            return
        records = parse_records(data)
        if records is None:
            self.counters["rx_malformed"] += 1
            self._warn(key, "malformed", "not DTLS: %s", data[:_EXCERPT].hex(" "))
            return
        random = client_hello_random(data, records)
        session = self._handshakes.get(key) or self._sessions.get(key)
        if session is None:
            if random is None:
                self.counters["rx_no_session"] += 1
                self._warn(key, "no-session", "record without a DTLS session (must handshake)")
            else:
                self._on_client_hello(key, addr, data, random)
            return
        if random is not None and random != session.random:
            self._on_client_hello(key, addr, data, random)  # the peer restarted
            return
        session.sockaddr = addr
        session.last_seen = time.monotonic()
        if key in self._handshakes:
            self._advance(key, session, data)
        elif random is None:  # an established session never takes its own ClientHello again
            self._sessions.move_to_end(key)
            self._read(session, data, records)

    def _on_client_hello(
        self, key: tuple[str, int], addr: tuple[Any, ...], data: bytes, random: bytes
    ) -> None:
        """A ClientHello: answer from a throw-away buffer; keep state only for a good cookie."""
        if key not in self._handshakes and len(self._handshakes) >= self.max_handshakes:
            self.counters["handshakes_refused"] += 1
            self._warn(key, "busy", "ClientHello ignored: %d handshakes open", self.max_handshakes)
            return
        buffer = self._context.wrap_buffers()
        buffer.setcookieparam(f"{key[0]}:{key[1]}".encode())  # cookies bind the source
        buffer.setmtu(self.max_frame)
        buffer.receive_from_network(data)
        try:
            run_handshake(buffer, lambda: self._flush(buffer, addr))
        except tls.HelloVerifyRequest:
            self.counters["hello_verify_requests"] += 1
            return
        except TLSError as exc:
            self._handshake_failed(key, exc)
            return
        if not handshake_progressed(buffer):
            return  # an invalid hello Mbed TLS dropped silently
        address = DtlsAddress(*key)
        session = DtlsSession(
            address, addr, buffer, random, time.monotonic() + self.handshake_timeout
        )
        session.last_seen = time.monotonic()
        self._handshakes[key] = session
        if self._tick_handle is None:
            self._tick_handle = asyncio.get_running_loop().call_later(_TICK, self._tick)
        _LOGGER.debug("%s: handshake with %s under way", self.name, address)
        if handshake_over(buffer):  # cannot happen with PSK, but harmless
            self._established(key, session)

    def _advance(self, key: tuple[str, int], session: DtlsSession, data: bytes | None) -> None:
        """Feed a half-open handshake (``data`` None: only let its retransmission timer run)."""
        try:
            if data is not None:
                session.buffer.receive_from_network(data)
            run_handshake(session.buffer, lambda: self._flush(session.buffer, session.sockaddr))
        except (TLSError, BufferError) as exc:  # no HelloVerifyRequest mid-handshake
            del self._handshakes[key]
            self._handshake_failed(key, exc)
            return
        if handshake_over(session.buffer):
            del self._handshakes[key]
            self._established(key, session)
            self._read(session, None, None)  # records that came with the last flight

    def _established(self, key: tuple[str, int], session: DtlsSession) -> None:
        old = self._sessions.pop(key, None)
        if old is not None:
            _LOGGER.info("%s: %s restarted: new DTLS session", self.name, session.address)
        elif len(self._sessions) >= self.max_peers:
            _, evicted = self._sessions.popitem(last=False)
            self.counters["sessions_evicted"] += 1
            _LOGGER.info(
                "%s: %d sessions: evicted %s, the least recently heard",
                self.name,
                self.max_peers,
                evicted.address,
            )
            self._shutdown(evicted)
            self._emit(evicted.address, LinkEvent.LINK_DOWN)
        self._sessions[key] = session
        self.counters["handshakes"] += 1
        _LOGGER.info(
            "%s: DTLS session with %s (%s)", self.name, session.address, session.buffer.cipher()
        )
        self._emit(session.address, LinkEvent.LINK_UP)

    def _read(self, session: DtlsSession, data: bytes | None, records: Records | None) -> None:
        """Decrypt what ``data`` brought and deliver one frame per application record."""
        buffer = session.buffer
        if data is not None:
            try:
                buffer.receive_from_network(data)
            except BufferError:  # Mbed TLS stopped reading: the session is wedged
                _LOGGER.info(
                    "%s: input of %s overflowed; session dropped", self.name, session.address
                )
                self._drop(session)
                return
        delivered = 0
        view = self._read_buffer
        while True:
            try:
                size = buffer.readinto(view, len(view))  # type: ignore[arg-type]  # stubs: bytes
            except tls.WantReadError:
                break
            except tls.WantWriteError:
                self._flush(buffer, session.sockaddr)
                continue
            except TLSError as exc:  # close_notify, a fatal alert, ragged EOF
                self._flush(buffer, session.sockaddr)
                _LOGGER.info("%s: DTLS session with %s ended: %s", self.name, session.address, exc)
                self._drop(session)
                return
            delivered += 1
            self._deliver_frame(session.address, bytes(view[:size]))
        self._flush(buffer, session.sockaddr)  # e.g. our last flight again, for a lost Finished
        if records is not None:
            sent = application_records(records)
            if sent > delivered:
                self.counters["rx_undecryptable"] += sent - delivered
                self._warn(
                    (session.address.host, session.address.port),
                    "undecryptable",
                    "%d record(s) failed to decrypt or were replayed",
                    sent - delivered,
                )

    def _deliver_frame(self, address: DtlsAddress, frame: bytes) -> None:
        if len(frame) > self.max_frame - self.overhead:
            self.counters["rx_oversize"] += 1
            self._warn((address.host, address.port), "oversize", "%d-byte frame", len(frame))
            return
        self.counters["rx_frames"] += 1
        try:
            self._deliver(address, frame)
        except Exception:
            self.counters["rx_deliver_errors"] += 1
            _LOGGER.exception(
                "%s: deliver() failed for a frame from %s: %s",
                self.name,
                address,
                frame[:_EXCERPT].hex(" "),
            )

    # -- handshake machinery -----------------------------------------------------------------

    def _flush(self, buffer: tls.TLSWrappedBuffer, addr: tuple[Any, ...]) -> bool:
        """Send what Mbed TLS queued (records cut into datagrams); True if there was any."""
        data = buffer.peek_outgoing(_OUT_MAX)
        if not data:
            return False  # never send an empty datagram: a peer may read it as end of stream
        buffer.consume_outgoing(len(data))
        endpoint = self._endpoint
        if endpoint is None or endpoint.transport is None:
            return True
        for datagram in cut_datagrams(data, self.max_frame):
            try:
                endpoint.transport.sendto(datagram, addr)
            except (OSError, ValueError) as exc:
                self.counters["tx_errors"] += 1
                _LOGGER.debug("%s: send to %s failed: %s", self.name, addr, exc)
        return True

    def _handshake_failed(self, key: tuple[str, int], exc: Exception) -> None:
        self.counters["handshakes_failed"] += 1
        self._warn(key, "handshake", "DTLS handshake failed: %s", exc)

    def _tick(self) -> None:
        """Retransmit lost flights, expire slow handshakes and idle sessions."""
        self._tick_handle = None
        now = time.monotonic()
        for key, session in list(self._handshakes.items()):
            if now >= session.deadline:
                del self._handshakes[key]
                self.counters["handshake_timeouts"] += 1
                self._warn(key, "handshake", "DTLS handshake timed out")
            else:
                self._advance(key, session, None)
        if self.idle_timeout is not None:
            while self._sessions:
                oldest = next(iter(self._sessions.values()))
                if now - oldest.last_seen < self.idle_timeout:
                    break
                _LOGGER.info("%s: %s idle: DTLS session closed", self.name, oldest.address)
                self._shutdown(oldest)
                self._drop(oldest)
        if self._handshakes or (self.idle_timeout is not None and self._sessions):
            delay = _TICK if self._handshakes else min(_IDLE_TICK, self.idle_timeout or _IDLE_TICK)
            self._tick_handle = asyncio.get_running_loop().call_later(delay, self._tick)

    def _drop(self, session: DtlsSession) -> None:
        """Forget an established session (after an error, idleness, or a peer's close)."""
        key = (session.address.host, session.address.port)
        if self._sessions.get(key) is session:
            del self._sessions[key]
            self.counters["sessions_closed"] += 1
            self._emit(session.address, LinkEvent.LINK_DOWN)

    def _shutdown(self, session: DtlsSession) -> None:
        """Send close_notify, best effort."""
        try:
            session.buffer.shutdown()
        except TLSError:
            pass
        self._flush(session.buffer, session.sockaddr)

    def _emit(self, address: DtlsAddress, event: LinkEvent) -> None:
        if self._on_event is not None:
            self._on_event(address, event)

    def _warn(self, key: tuple[str, int], kind: str, msg: str, *args: object) -> None:
        source = DtlsAddress(*key)
        self._warnings.warning((kind, key), "%s: %s: " + msg, self.name, source, *args)

    # -- socket set-up -----------------------------------------------------------------------

    def _socket(self) -> socket.socket:
        try:
            family = (
                socket.AF_INET6
                if ipaddress.ip_address(self.bind_host or "0.0.0.0").version == 6
                else socket.AF_INET
            )
        except ValueError:
            family = socket.getaddrinfo(self.bind_host, None, type=socket.SOCK_DGRAM)[0][0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6 and self.bind_host in ("::", ""):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            sock.setblocking(False)
            sock.bind((self.bind_host, self.bind_port))
        except BaseException:
            sock.close()
            raise
        return sock

    def __repr__(self) -> str:
        state = "open" if self._endpoint is not None else "closed"
        where = self._local or DtlsAddress(self.bind_host, self.bind_port)
        c = self.counters
        return (
            f"<DtlsTransport {self.name!r} {where} {state} sessions={len(self._sessions)}"
            f" handshakes={len(self._handshakes)} rx={c['rx_frames']} tx={c['tx_frames']}"
            f" malformed={c['rx_malformed']} undecryptable={c['rx_undecryptable']}>"
        )


def _no_sink(address: Address, frame: bytes) -> None:
    """The deliver callback before start() and after close(): frames are dropped."""

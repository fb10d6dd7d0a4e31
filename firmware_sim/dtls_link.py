"""A simulated node's radio over DTLS 1.2 (PSK) on real UDP: the client side of transports.dtls.

The node opens a UDP socket connected to the gateway, runs the DTLS handshake with
python-mbedtls' sans-I/O buffers (flights retransmitted on Mbed TLS' timer, driven by a
periodic tick), then sends each MQTT-SN frame as one DTLS record. DTLS has no broadcast:
``broadcast`` (SEARCHGW) goes to the gateway.

    link = DtlsNodeLink(("127.0.0.1", 1885), psk_identity="node1", psk=bytes.fromhex("00" * 16))
    async with SimNode("node1", link) as node:
        await node.connect()
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence
from typing import Any, cast

from mbedtls import tls
from mbedtls.exceptions import TLSError

from firmware_sim.link import FrameReceiver, NodeLink
from gateway.errors import TransportError
from transports.dtls import DEFAULT_CIPHERS

__all__ = ["DtlsNodeLink"]

_LOGGER = logging.getLogger(__name__)

_TICK = 0.1  # how often the retransmission timer is looked at during a handshake
_OUT_MAX = 1 << 16
_READ_MAX = 16384 + 2048


class _Endpoint(asyncio.DatagramProtocol):
    """Hands every datagram from the gateway to its link."""

    def __init__(self, link: DtlsNodeLink) -> None:
        self._link = link

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._link._on_datagram(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable (no gateway listening) lands here on Linux.
        self._link.errors += 1
        _LOGGER.debug("%r: socket error: %s", self._link, exc)


class DtlsNodeLink(NodeLink):
    """``NodeLink`` that speaks DTLS 1.2 with a pre-shared key to one gateway.

    Args:
        gateway: (host, port) of the gateway's DTLS transport.
        psk_identity: the identity the gateway knows this node by.
        psk: the key (1..32 bytes).
        ciphers: Mbed TLS suite names offered, most preferred first.
        handshake_timeout: seconds ``open`` waits for the handshake.
        retransmit_timeout: first retransmission of a lost flight (doubles each time).
        local_port: the node's UDP port (0: any); a restarted node may reuse its old one.
    """

    def __init__(
        self,
        gateway: tuple[str, int],
        *,
        psk_identity: str,
        psk: bytes,
        ciphers: Sequence[str] = DEFAULT_CIPHERS,
        handshake_timeout: float = 10.0,
        retransmit_timeout: float = 1.0,
        local_port: int = 0,
    ) -> None:
        self.gateway = gateway
        self.psk_identity = psk_identity
        self.handshake_timeout = handshake_timeout
        self.local_port = local_port
        self.sent = 0
        self.received = 0
        self.dropped_asleep = 0
        self.errors = 0
        self.closed_by_gateway: str | None = None  # why the gateway ended the session
        self._context = tls.ClientContext(
            tls.DTLSConfiguration(
                pre_shared_key=(psk_identity, bytes(psk)),
                ciphers=tuple(ciphers),
                validate_certificates=False,
                lowest_supported_version=tls.DTLSVersion.DTLSv1_2,
                highest_supported_version=tls.DTLSVersion.DTLSv1_2,
                handshake_timeout_min=retransmit_timeout,
                handshake_timeout_max=handshake_timeout,
            )
        )
        self._buffer: tls.TLSWrappedBuffer | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._receive: FrameReceiver | None = None
        self._ready: asyncio.Future[None] | None = None
        self._tick: asyncio.TimerHandle | None = None
        self._read_buffer = bytearray(_READ_MAX)
        self._asleep = False

    def __repr__(self) -> str:
        if self._transport is None:
            state = "closed"
        elif not self.established:
            state = "handshaking"
        else:
            state = "asleep" if self._asleep else "open"
        return (
            f"<DtlsNodeLink {state} {self.psk_identity!r} local={self.local_address}"
            f" gateway={self.gateway[0]}:{self.gateway[1]} sent={self.sent}"
            f" received={self.received}>"
        )

    @property
    def local_address(self) -> tuple[Any, ...] | None:
        """The (host, port, ...) of the socket, once open."""
        return self._transport.get_extra_info("sockname") if self._transport else None

    @property
    def established(self) -> bool:
        """True once the handshake is over (and the gateway has not closed the session)."""
        return (
            self._buffer is not None
            and self._ready is not None
            and self._ready.done()
            and not self._ready.exception()
            and self.closed_by_gateway is None
        )

    @property
    def cipher(self) -> str | None:
        """The negotiated suite, once established."""
        if not self.established or self._buffer is None:
            return None
        return cast(str, self._buffer.cipher())  # the stubs say bytes; it is the suite's name

    async def open(self, receive: FrameReceiver) -> None:
        """Open the socket and complete the DTLS handshake (TransportError if it fails)."""
        if self._transport is not None:
            raise TransportError(f"{self!r} is already open")
        loop = asyncio.get_running_loop()
        host, port = self.gateway
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            family, _, _, _, remote = infos[0]
            any_host = "::" if family == socket.AF_INET6 else "0.0.0.0"
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Endpoint(self),
                local_addr=(any_host, self.local_port),
                remote_addr=(str(remote[0]), int(remote[1])),
                family=family,
            )
        except OSError as exc:
            raise TransportError(f"cannot open DTLS link to {host}:{port}: {exc}") from exc
        self._transport = transport
        self._receive = receive
        self._asleep = False
        self.closed_by_gateway = None
        self._buffer = self._context.wrap_buffers(None)
        self._ready = loop.create_future()
        self._step()
        self._schedule_tick()
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), self.handshake_timeout)
        except (TimeoutError, TransportError) as exc:
            await self.abort()
            if isinstance(exc, TransportError):
                raise
            raise TransportError(
                f"DTLS handshake with {host}:{port} timed out after {self.handshake_timeout}s"
            ) from None
        _LOGGER.debug("opened %r (%s)", self, self.cipher)

    async def send(self, frame: bytes) -> None:
        """Send one frame to the gateway as one DTLS record."""
        if not self.established or self._buffer is None:
            raise TransportError(f"{self!r}: no DTLS session ({self.closed_by_gateway or 'none'})")
        try:
            self._buffer.write(frame)
        except TLSError as exc:
            raise TransportError(f"{self!r}: DTLS write failed: {exc}") from exc
        self._flush()
        self.sent += 1

    async def broadcast(self, frame: bytes, radius: int = 0) -> None:
        """DTLS is unicast: the frame goes to the gateway."""
        await self.send(frame)

    async def close(self) -> None:
        """Send close_notify and close the socket; safe to call twice."""
        if self._buffer is not None and self.established:
            try:
                self._buffer.shutdown()
            except TLSError:
                pass
            self._flush()
        await self.abort()

    async def abort(self) -> None:
        """Close the socket without a word to the gateway (a crash, a power loss)."""
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        if self._transport is not None:
            self._transport.close()
        self._transport = None
        self._receive = None
        self._buffer = None
        if self._ready is not None and not self._ready.done():
            self._ready.cancel()

    async def sleep_radio(self) -> None:
        """Stop hearing anything until ``wake_radio``."""
        self._asleep = True

    async def wake_radio(self) -> None:
        """Hear frames again."""
        self._asleep = False

    # -- machinery ---------------------------------------------------------------------------

    def _on_datagram(self, data: bytes) -> None:
        buffer = self._buffer
        if buffer is None:
            return
        if self._asleep and self.established:
            self.dropped_asleep += 1
            return
        try:
            buffer.receive_from_network(data)
        except BufferError:
            self.errors += 1
            return
        if not self.established:
            self._step()
        if self.established:
            self._read()

    def _step(self) -> None:
        """Run the handshake until Mbed TLS needs input; resolve ``_ready`` when it is over."""
        buffer, ready = self._buffer, self._ready
        if buffer is None or ready is None or ready.done():
            return
        for _ in range(64):
            if buffer._handshake_state.name == "HANDSHAKE_OVER":
                ready.set_result(None)
                return
            try:
                buffer.do_handshake()
            except tls.WantWriteError:
                self._flush()
            except tls.WantReadError:
                if not self._flush():  # after a timed-out resend, step once more to read
                    return
            except TLSError as exc:
                self._flush()
                ready.set_exception(TransportError(f"DTLS handshake failed: {exc}"))
                return

    def _read(self) -> None:
        buffer = self._buffer
        view = self._read_buffer
        while buffer is not None:
            try:
                size = buffer.readinto(view, len(view))  # type: ignore[arg-type]  # stubs: bytes
            except tls.WantReadError:
                break
            except tls.WantWriteError:
                self._flush()
                continue
            except TLSError as exc:  # close_notify or an alert: the gateway ended the session
                self._flush()
                self.closed_by_gateway = str(exc)
                _LOGGER.info("%r: the gateway ended the DTLS session: %s", self, exc)
                break
            self.received += 1
            if self._receive is not None:
                self._receive(bytes(view[:size]))
        self._flush()

    def _flush(self) -> bool:
        buffer = self._buffer
        if buffer is None:
            return False
        data = buffer.peek_outgoing(_OUT_MAX)
        if not data:
            return False  # never an empty datagram
        buffer.consume_outgoing(len(data))
        if self._transport is not None:
            self._transport.sendto(data)
        return True

    def _schedule_tick(self) -> None:
        self._tick = asyncio.get_running_loop().call_later(_TICK, self._on_tick)

    def _on_tick(self) -> None:
        self._tick = None
        if self._ready is not None and not self._ready.done():
            self._step()  # Mbed TLS resends the last flight once its timer expired
            self._schedule_tick()

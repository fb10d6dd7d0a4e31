"""DTLS transport on real loopback sockets against the firmware_sim DTLS link and a hand-driven
Mbed TLS client: handshake, frames both ways, wrong keys, garbage, bounds, loss, restarts."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import mbedtls  # noqa: F401 - python-mbedtls, in the [test] extra
import pytest
from mbedtls import tls

from firmware_sim.dtls_link import DtlsNodeLink
from gateway.config import parse_config
from gateway.errors import ConfigError, TransportError
from transports import create_transport
from transports.base import Address, LinkEvent
from transports.dtls import DtlsAddress, DtlsTransport, record_overhead

KEY = bytes(range(16))
OTHER_KEY = bytes(16)
CCM8 = "TLS-PSK-WITH-AES-128-CCM-8"
PINGREQ = b"\x02\x16"
PINGRESP = b"\x02\x17"


class Inbox:
    """Collects what a transport delivers (and its link events), awaitable."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[Address, bytes]] = asyncio.Queue()
        self.events: list[tuple[Address, LinkEvent]] = []

    def __call__(self, address: Address, frame: bytes) -> None:
        self.queue.put_nowait((address, frame))

    def on_event(self, address: Address, event: LinkEvent) -> None:
        self.events.append((address, event))

    async def get(self) -> tuple[Address, bytes]:
        async with asyncio.timeout(3.0):
            return await self.queue.get()


@pytest.fixture
async def gateway_side() -> AsyncIterator[Callable[..., Any]]:
    """``transport, inbox = await gateway_side(**options)``: a started DtlsTransport."""
    started: list[DtlsTransport] = []

    async def factory(**options: Any) -> tuple[DtlsTransport, Inbox]:
        options.setdefault("psk", {"node-1": KEY, "node-2": OTHER_KEY})
        options.setdefault("retransmit_timeout", 0.2)
        options.setdefault("handshake_timeout", 3.0)
        transport = DtlsTransport("127.0.0.1", 0, **options)
        inbox = Inbox()
        await transport.start(inbox, inbox.on_event)
        started.append(transport)
        return transport, inbox

    yield factory
    for transport in started:
        await transport.close()


def node_link(transport: DtlsTransport, **options: Any) -> DtlsNodeLink:
    """A firmware_sim DTLS link to ``transport``."""
    assert transport.local_address is not None
    options.setdefault("psk_identity", "node-1")
    options.setdefault("psk", KEY)
    options.setdefault("retransmit_timeout", 0.2)
    options.setdefault("handshake_timeout", 3.0)
    return DtlsNodeLink(("127.0.0.1", transport.local_address.port), **options)


async def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 3.0) -> None:
    """Poll until ``predicate()`` holds."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - counters and lists have no event to wait on
            await asyncio.sleep(0.01)
    assert predicate(), what


class RawPeer:
    """A loopback UDP socket, optionally with an Mbed TLS client stepped by hand."""

    def __init__(self, port: int, identity: str = "node-1", key: bytes = KEY) -> None:
        self.gateway = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        config = tls.DTLSConfiguration(
            pre_shared_key=(identity, key),
            ciphers=(CCM8,),
            validate_certificates=False,
            handshake_timeout_min=30.0,  # the test decides when to retransmit
            handshake_timeout_max=60.0,
        )
        self.buffer = tls.ClientContext(config).wrap_buffers(None)

    @property
    def source(self) -> str:
        """How the gateway names this peer in its log lines."""
        return str(DtlsAddress(*self.sock.getsockname()))

    def step(self) -> bytes:
        """Run the handshake until it needs input; what it queued for the network."""
        out = b""
        while self.buffer._handshake_state.name != "HANDSHAKE_OVER":
            try:
                self.buffer.do_handshake()
            except (tls.WantReadError, tls.WantWriteError):
                data = self.buffer.peek_outgoing(1 << 16)
                self.buffer.consume_outgoing(len(data))
                out += data
                if not data:
                    break
        return out

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.gateway)

    async def receive(self, timeout: float = 2.0) -> bytes:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while True:
                try:
                    return self.sock.recv(65536)
                except BlockingIOError:
                    ready = loop.create_future()
                    loop.add_reader(self.sock.fileno(), ready.set_result, None)
                    try:
                        await ready
                    finally:
                        loop.remove_reader(self.sock.fileno())

    async def nothing_within(self, seconds: float) -> bool:
        try:
            await self.receive(seconds)
        except TimeoutError:
            return True
        return False

    async def half_open(self) -> bytes:
        """ClientHello, HelloVerifyRequest, ClientHello with cookie; the ServerHello flight."""
        self.send(self.step())
        self.buffer.receive_from_network(await self.receive())
        self.send(self.step())
        return await self.receive()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw_peers() -> Iterator[Callable[..., RawPeer]]:
    peers: list[RawPeer] = []

    def factory(transport: DtlsTransport, **options: Any) -> RawPeer:
        assert transport.local_address is not None
        peer = RawPeer(transport.local_address.port, **options)
        peers.append(peer)
        return peer

    yield factory
    for peer in peers:
        peer.close()


# -- handshake and frames ----------------------------------------------------------------------


async def test_handshake_and_frames_both_ways_in_order(gateway_side):
    """The firmware_sim link handshakes; frames go both ways, one per record, in order."""
    transport, inbox = await gateway_side()
    heard: list[bytes] = []
    link = node_link(transport)
    await link.open(heard.append)
    try:
        assert link.cipher == transport.ciphers[0] == CCM8
        frames = [bytes([3 + i % 200, 0x0C]) + bytes(1 + i % 200) for i in range(50)]
        frames = [bytes([len(f)]) + f[1:] for f in frames]
        for frame in frames:
            await link.send(frame)
        got = [await inbox.get() for _ in frames]
        address = got[0][0]
        assert isinstance(address, DtlsAddress)
        assert address == DtlsAddress(*link.local_address[:2])
        assert [frame for _, frame in got] == frames
        assert transport.owns(address) and not transport.owns(("127.0.0.1", address.port))
        for i in range(20):
            transport.send(address, PINGRESP + bytes([i]))
        await wait_for(lambda: len(heard) == 20, "20 frames at the node")
        assert heard == [PINGRESP + bytes([i]) for i in range(20)]
        assert inbox.events == [(address, LinkEvent.LINK_UP)]
        assert transport.counters["handshakes"] == 1
        assert transport.counters["rx_frames"] == 50 and transport.counters["tx_frames"] == 20
        assert transport.peers == 1 and transport.handshakes == 0
    finally:
        await link.close()
    await wait_for(lambda: transport.peers == 0, "close_notify ends the session")
    assert inbox.events[-1] == (address, LinkEvent.LINK_DOWN)


async def test_frame_size_is_the_datagram_minus_the_record_overhead(gateway_side, caplog):
    """max_frame_size() leaves room for the record; a larger frame is counted, not sent."""
    transport, inbox = await gateway_side(ciphers=[CCM8], max_frame=200)
    assert record_overhead([CCM8]) == 13 + 8 + 8
    assert transport.max_frame_size() == 200 - 29
    heard: list[bytes] = []
    link = node_link(transport, ciphers=[CCM8])
    await link.open(heard.append)
    await link.send(PINGREQ)
    address, _ = await inbox.get()
    transport.send(address, bytes(171))
    transport.send(address, bytes(172))
    await wait_for(lambda: len(heard) == 1, "the frame that fits")
    assert heard == [bytes(171)]
    assert transport.counters["tx_oversize"] == 1
    await link.close()


async def test_gateway_retransmits_its_flight_when_the_peer_is_silent(gateway_side, raw_peers):
    """RFC 6347 §4.2.4: a lost ServerHello flight is sent again on the timer."""
    transport, _ = await gateway_side(retransmit_timeout=0.2)
    peer = raw_peers(transport)
    flight = await peer.half_open()
    again = await peer.receive(1.0)  # nothing answered: the gateway resends
    assert len(again) == len(flight) and again != flight  # same flight, new record numbers
    assert transport.handshakes == 1
    peer.buffer.receive_from_network(again)
    peer.send(peer.step())
    peer.buffer.receive_from_network(await peer.receive())
    peer.step()
    assert peer.buffer._handshake_state.name == "HANDSHAKE_OVER"
    await wait_for(lambda: transport.peers == 1, "the session is established")


class LossyProxy:
    """Forwards datagrams between one node and the gateway, dropping chosen ones."""

    def __init__(self, gateway: tuple[str, int], drops: list[tuple[str, Callable[[bytes], bool]]]):
        self.gateway = gateway
        self.drops = drops  # (direction "up"/"down", matcher): each drops one datagram
        self.dropped: list[str] = []
        self.node: tuple[Any, ...] | None = None
        self.front: asyncio.DatagramTransport | None = None
        self.back: asyncio.DatagramTransport | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        proxy = self

        class Side(asyncio.DatagramProtocol):
            def __init__(self, direction: str) -> None:
                self.direction = direction

            def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
                proxy.forward(self.direction, data, addr)

        self.front, _ = await loop.create_datagram_endpoint(
            lambda: Side("up"), local_addr=("127.0.0.1", 0)
        )
        self.back, _ = await loop.create_datagram_endpoint(
            lambda: Side("down"), local_addr=("127.0.0.1", 0)
        )
        return int(self.front.get_extra_info("sockname")[1])

    def forward(self, direction: str, data: bytes, addr: tuple[Any, ...]) -> None:
        for rule in self.drops:
            if rule[0] == direction and rule[1](data):
                self.drops.remove(rule)
                self.dropped.append(direction)
                return
        if direction == "up":
            self.node = addr
            assert self.back is not None
            self.back.sendto(data, self.gateway)
        elif self.node is not None:
            assert self.front is not None
            self.front.sendto(data, self.node)

    def close(self) -> None:
        for side in (self.front, self.back):
            if side is not None:
                side.close()


def server_hello(data: bytes) -> bool:
    return data[0] == 22 and data[13] == 2


def change_cipher_spec(data: bytes) -> bool:
    offset = 0
    while offset + 13 <= len(data):
        if data[offset] == 20:
            return True
        offset += 13 + int.from_bytes(data[offset + 11 : offset + 13], "big")
    return False


async def test_handshake_survives_lost_flights_both_ways(gateway_side):
    """Lost ServerHello, client Finished and server Finished flights are all retransmitted."""
    transport, inbox = await gateway_side(retransmit_timeout=0.2)
    assert transport.local_address is not None
    proxy = LossyProxy(
        ("127.0.0.1", transport.local_address.port),
        [("down", server_hello), ("up", change_cipher_spec), ("down", change_cipher_spec)],
    )
    port = await proxy.start()
    heard: list[bytes] = []
    link = DtlsNodeLink(("127.0.0.1", port), psk_identity="node-1", psk=KEY, retransmit_timeout=0.2)
    try:
        await link.open(heard.append)
        assert proxy.dropped == ["down", "up", "down"]
        await link.send(PINGREQ)
        address, frame = await inbox.get()
        assert frame == PINGREQ
        transport.send(address, PINGRESP)
        await wait_for(lambda: heard == [PINGRESP], "the reply after a lossy handshake")
        assert transport.counters["handshakes"] == 1
    finally:
        await link.close()
        proxy.close()


# -- refusals and garbage ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("identity", "key"), [("node-1", OTHER_KEY), ("stranger", KEY)], ids=["wrong-key", "unknown"]
)
async def test_wrong_psk_is_refused_counted_and_logged(gateway_side, caplog, identity, key):
    """A wrong key or an unknown identity: no session, a counted, rate-limited WARNING."""
    transport, inbox = await gateway_side()
    link = node_link(transport, psk_identity=identity, psk=key)
    with caplog.at_level(logging.WARNING, "transports.dtls"), pytest.raises(TransportError):
        await link.open(lambda frame: None)
    await wait_for(lambda: transport.counters["handshakes_failed"] == 1, "the failure counted")
    assert transport.peers == 0 and transport.handshakes == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert (
        "handshake failed" in warnings[0] and str(DtlsAddress("127.0.0.1", 0))[:17] in warnings[0]
    )
    assert KEY.hex() not in warnings[0] and OTHER_KEY.hex() not in warnings[0]
    assert inbox.queue.empty() and not inbox.events


async def test_garbage_does_not_crash_or_create_state(gateway_side, raw_peers, caplog):
    """Non-DTLS bytes, truncated records, records without a session, junk ClientHellos."""
    transport, inbox = await gateway_side()
    peer = raw_peers(transport)
    app_record = bytes([23, 0xFE, 0xFD, 0, 1]) + bytes(6) + b"\x00\x05hello"
    junk_hello = bytes([22, 0xFE, 0xFD]) + bytes(8) + b"\x00\x30" + b"\x01" + os.urandom(47)
    garbage = [
        b"",
        b"\x00",
        b"\x00" + os.urandom(199),
        b"\x16\xfe\xfd\x00",
        app_record[:-1],
        app_record,
    ]
    with caplog.at_level(logging.WARNING, "transports.dtls"):
        for datagram in [*garbage, junk_hello]:
            peer.send(datagram)
        await wait_for(
            lambda: (
                transport.counters["rx_no_session"] == 1
                and transport.counters["handshakes_failed"] == 1
            ),
            "every datagram looked at",
        )
        assert await peer.nothing_within(0.3)
    assert transport.counters["rx_malformed"] == 5
    assert transport.peers == 0 and transport.handshakes == 0
    assert any(peer.source in r.getMessage() for r in caplog.records)
    # Rate-limited: one WARNING per source and kind, however many datagrams.
    assert len([r for r in caplog.records if "not DTLS" in r.getMessage()]) == 1
    # Still serving.
    link = node_link(transport)
    await link.open(lambda frame: None)
    await link.send(PINGREQ)
    assert (await inbox.get())[1] == PINGREQ
    await link.close()


async def test_client_hello_without_cookie_keeps_no_state_and_is_not_amplified(
    gateway_side, raw_peers
):
    """RFC 6347 §4.2.1: a (possibly spoofed) ClientHello only gets a smaller HelloVerifyRequest."""
    transport, _ = await gateway_side()
    peer = raw_peers(transport)
    hello = peer.step()
    for _ in range(20):
        peer.send(hello)
    replies = [await peer.receive() for _ in range(20)]
    assert all(reply[0] == 22 and reply[13] == 3 for reply in replies)  # HelloVerifyRequest
    assert all(len(reply) < len(hello) for reply in replies)
    assert transport.counters["hello_verify_requests"] == 20
    assert transport.peers == 0 and transport.handshakes == 0


async def test_undecryptable_record_is_counted_and_the_session_survives(gateway_side, caplog):
    """A forged record from a peer's own address is dropped, counted and logged."""
    transport, inbox = await gateway_side()
    link = node_link(transport)
    await link.open(lambda frame: None)
    await link.send(PINGREQ)
    await inbox.get()
    forged = bytes([23, 0xFE, 0xFD, 0, 1, 0, 0, 0, 0, 0, 99, 0, 24]) + os.urandom(24)
    with caplog.at_level(logging.WARNING, "transports.dtls"):
        assert link._transport is not None
        link._transport.sendto(forged)
        await wait_for(lambda: transport.counters["rx_undecryptable"] == 1, "the forgery counted")
    assert any("failed to decrypt" in r.getMessage() for r in caplog.records)
    await link.send(b"\x03\x16\x01")
    assert (await inbox.get())[1] == b"\x03\x16\x01"
    assert transport.peers == 1
    await link.close()


# -- bounds ------------------------------------------------------------------------------------


async def test_sessions_are_bounded_and_the_least_recent_is_evicted(gateway_side):
    """max_peers=2: a third node evicts the least recently heard one, which is told so."""
    transport, inbox = await gateway_side(max_peers=2)
    links = [node_link(transport) for _ in range(3)]
    try:
        await links[0].open(lambda frame: None)
        await links[1].open(lambda frame: None)
        await links[1].send(PINGREQ)  # links[0] is now the least recently heard
        await inbox.get()
        await links[2].open(lambda frame: None)
        assert transport.peers == 2
        assert transport.counters["sessions_evicted"] == 1
        await wait_for(lambda: links[0].closed_by_gateway is not None, "close_notify to links[0]")
        first = DtlsAddress(*links[0].local_address[:2])
        assert (first, LinkEvent.LINK_DOWN) in inbox.events
        for link in links[1:]:
            await link.send(PINGREQ)
            assert (await inbox.get())[1] == PINGREQ
    finally:
        for link in links:
            await link.close()


async def test_half_open_handshakes_are_bounded_and_time_out(gateway_side, raw_peers):
    """max_handshakes=1: a second half-open handshake is refused; the first one times out."""
    transport, _ = await gateway_side(max_handshakes=1, handshake_timeout=0.6)
    first = raw_peers(transport)
    await first.half_open()
    assert transport.handshakes == 1
    second = raw_peers(transport)
    second.send(second.step())
    assert await second.nothing_within(0.2)
    assert transport.counters["handshakes_refused"] == 1
    await wait_for(lambda: transport.handshakes == 0, "the half-open handshake expired", 2.0)
    assert transport.counters["handshake_timeouts"] == 1
    link = node_link(transport)
    await link.open(lambda frame: None)
    assert transport.peers == 1
    await link.close()


async def test_idle_sessions_are_closed_when_asked_to(gateway_side):
    """idle_timeout: a silent peer's session is closed (with close_notify); others are kept."""
    transport, inbox = await gateway_side(idle_timeout=0.3)
    link = node_link(transport)
    await link.open(lambda frame: None)
    assert transport.peers == 1
    await wait_for(lambda: link.closed_by_gateway is not None, "close_notify after 0.3 s idle")
    assert transport.peers == 0
    assert [event for _, event in inbox.events] == [LinkEvent.LINK_UP, LinkEvent.LINK_DOWN]
    await link.abort()


# -- restarts ----------------------------------------------------------------------------------


async def test_a_restarted_peer_gets_a_fresh_session(gateway_side):
    """A node that reboots (no close_notify) and handshakes from the same port is served anew."""
    transport, inbox = await gateway_side()
    first = node_link(transport)
    await first.open(lambda frame: None)
    await first.send(PINGREQ)
    address, _ = await inbox.get()
    await first.abort()  # power loss: the gateway still holds the old session
    heard: list[bytes] = []
    second = node_link(transport, local_port=address.port)
    await second.open(heard.append)
    try:
        await second.send(b"\x03\x16\x02")
        assert await inbox.get() == (address, b"\x03\x16\x02")
        transport.send(address, PINGRESP)
        await wait_for(lambda: heard == [PINGRESP], "the reply under the new keys")
        assert transport.peers == 1 and transport.counters["handshakes"] == 2
    finally:
        await second.close()


def test_a_dtls_address_round_trips_through_the_state_file_encoding():
    """Sessions of DTLS nodes are saved with their address (``run`` keeps a state file)."""
    from gateway.store import decode_address, encode_address

    address = DtlsAddress("127.0.0.1", 40000)
    assert decode_address(encode_address(address)) == address


# -- configuration -----------------------------------------------------------------------------


def test_config_table_and_key_file_build_the_transport(tmp_path: Path):
    """[transports.dtls] with a psk table and a psk-file; check-config never shows a key."""
    key_file = tmp_path / "psk.txt"
    key_file.write_text(f"# node keys\nnode-2:{OTHER_KEY.hex()}\n")
    config = parse_config(
        {
            "transports": {
                "dtls": {
                    "bind": "127.0.0.1:18855",
                    "psk": {"node-1": KEY.hex()},
                    "psk-file": str(key_file),
                    "ciphers": [CCM8],
                    "max-peers": 10,
                }
            }
        }
    )
    text = config.to_toml()
    assert 'type = "dtls"' in text and "node-1" in text
    assert KEY.hex() not in text and OTHER_KEY.hex() not in text
    assert KEY.hex() not in repr(config)
    transport = create_transport("dtls", config.transports["dtls"])
    assert isinstance(transport, DtlsTransport)
    assert (transport.bind_host, transport.bind_port) == ("127.0.0.1", 18855)
    assert transport.identities == 2 and transport.max_peers == 10
    assert transport.ciphers == (CCM8,)


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"psk": {"n": "xyz"}}, "transports.dtls.psk.n"),
        ({"psk": {"n": "00" * 33}}, "transports.dtls.psk.n"),
        ({}, "transports.dtls.psk"),
        ({"psk-file": "/nonexistent/psk"}, "transports.dtls.psk-file"),
        ({"psk": {"n": "00"}, "bind": "nowhere"}, "transports.dtls.bind"),
    ],
)
def test_config_errors_name_the_key(table, key):
    """Bad keys, no keys, an unreadable key file, a bad bind: ConfigError names the key."""
    with pytest.raises(ConfigError) as info:
        parse_config({"transports": {"dtls": table}})
    assert str(info.value).startswith(key)

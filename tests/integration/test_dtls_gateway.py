"""The real gateway with a [transports.dtls] table against the real Mosquitto: a SimNode over
DTLS, and the OpenSSL command-line client as an independent DTLS 1.2 PSK peer."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from collections.abc import AsyncIterator
from typing import Any

import mbedtls  # noqa: F401 - python-mbedtls, in the [test] extra
import pytest

from firmware_sim.dtls_link import DtlsNodeLink
from firmware_sim.node import SimNode
from gateway.config import parse_config
from gateway.protocol.codec import decode, encode
from gateway.protocol.constants import QoS, ReturnCode
from gateway.protocol.messages import (
    Connack,
    Connect,
    Disconnect,
    Message,
    Puback,
    Publish,
    Regack,
    Register,
)
from gateway.runtime import GatewayRuntime
from tests.integration.conftest import wait_for
from tests.mosquitto import free_port
from transports.dtls import DtlsAddress, DtlsTransport

NODE_KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
OPENSSL_KEY = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")


@pytest.fixture
async def dtls_gateway(mosquitto: Any) -> AsyncIterator[GatewayRuntime]:
    """The gateway built from a config document with a DTLS transport only."""
    port = free_port(socket.SOCK_DGRAM)
    config = parse_config(
        {
            "mqttsn": {"t-adv": 0, "t-retry": 2.0},
            "transports": {
                "dtls": {
                    "bind": f"127.0.0.1:{port}",
                    "psk": {"sensor-1": NODE_KEY.hex(), "openssl-1": OPENSSL_KEY.hex()},
                    "retransmit-timeout": 0.5,
                }
            },
        },
        broker=mosquitto.url,
    )
    async with GatewayRuntime(config) as gateway:
        gateway.dtls_port = port  # type: ignore[attr-defined]
        await wait_for(lambda: gateway.upstream.connected, 10, "broker connection")
        yield gateway


async def test_simnode_over_dtls_publishes_qos1_to_the_broker(
    dtls_gateway, observe, mosquitto, unique_topic
):
    """CONNECT, REGISTER and a QoS 1 PUBLISH in DTLS records reach a broker subscriber."""
    observer = await observe(mosquitto, f"{unique_topic}/#")
    link = DtlsNodeLink(
        ("127.0.0.1", dtls_gateway.dtls_port), psk_identity="sensor-1", psk=NODE_KEY
    )
    async with SimNode("dtls-sensor", link, t_retry=2.0) as node:
        await node.connect()
        await node.publish(f"{unique_topic}/temp", b"21.5", qos=1)
        assert link.cipher == "TLS-PSK-WITH-AES-128-CCM-8"
    assert await observer.wait_count(f"{unique_topic}/temp", 1) == [b"21.5"]
    transport = dtls_gateway.transports[0]
    assert isinstance(transport, DtlsTransport)
    assert transport.counters["handshakes"] == 1
    assert transport.counters["rx_undecryptable"] == transport.counters["rx_malformed"] == 0


class OpenSslPeer:
    """``openssl s_client -dtls1_2`` with a PSK: MQTT-SN frames in on stdin, out on stdout."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.pending = b""

    async def send(self, message: Message) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(encode(message))
        await self.process.stdin.drain()

    async def receive(self) -> Message:
        """The next MQTT-SN frame the gateway sent (short length form)."""
        assert self.process.stdout is not None
        async with asyncio.timeout(10):
            while not self.pending or len(self.pending) < self.pending[0]:
                chunk = await self.process.stdout.read(4096)
                if not chunk:
                    stderr = await self.process.stderr.read() if self.process.stderr else b""
                    raise AssertionError(f"openssl ended: {stderr.decode(errors='replace')}")
                self.pending += chunk
        frame, self.pending = self.pending[: self.pending[0]], self.pending[self.pending[0] :]
        return decode(frame)


@pytest.fixture
async def openssl_peer(dtls_gateway) -> AsyncIterator[OpenSslPeer]:
    """An OpenSSL DTLS 1.2 client with PSK-AES128-CCM8 connected to the gateway."""
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is not installed (.ci/run installs it)")
    process = await asyncio.create_subprocess_exec(
        "openssl",
        "s_client",
        "-dtls1_2",
        "-connect",
        f"127.0.0.1:{dtls_gateway.dtls_port}",
        "-psk_identity",
        "openssl-1",
        "-psk",
        OPENSSL_KEY.hex(),
        "-cipher",
        "PSK-AES128-CCM8",
        "-quiet",  # no session print-out on stdout; implies -ign_eof
        "-nocommands",  # a frame starting with "Q" or "R" is data, not a command
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield OpenSslPeer(process)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


async def test_openssl_s_client_interoperates(
    dtls_gateway, openssl_peer, observe, mosquitto, unique_topic
):
    """An independent DTLS stack (OpenSSL) connects, registers and publishes QoS 1."""
    observer = await observe(mosquitto, f"{unique_topic}/#")
    await openssl_peer.send(Connect("openssl-node", duration=60))
    assert await openssl_peer.receive() == Connack(ReturnCode.ACCEPTED)
    await openssl_peer.send(Register(0, 1, f"{unique_topic}/openssl"))
    regack = await openssl_peer.receive()
    assert isinstance(regack, Regack) and regack.return_code is ReturnCode.ACCEPTED
    await openssl_peer.send(Publish(regack.topic_id, b"from openssl", QoS.AT_LEAST_ONCE, 2))
    assert await openssl_peer.receive() == Puback(regack.topic_id, 2, ReturnCode.ACCEPTED)
    assert await observer.wait_count(f"{unique_topic}/openssl", 1) == [b"from openssl"]
    address = dtls_gateway.core.sessions["openssl-node"].address
    assert isinstance(address, DtlsAddress)
    assert dtls_gateway.transports[0].cipher(address) == "TLS-PSK-WITH-AES-128-CCM-8"
    await openssl_peer.send(Disconnect())
    assert isinstance(await openssl_peer.receive(), Disconnect)

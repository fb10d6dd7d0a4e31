"""[access] end to end over UDP with the real Mosquitto: allow-list, topic rules, per-node logins."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from firmware_sim.node import ConnectRefused, RequestRejected, SimNode
from firmware_sim.udp_link import UdpNodeLink
from gateway.cli import main
from gateway.config import parse_config
from gateway.protocol.codec import decode, encode
from gateway.protocol.constants import QoS, ReturnCode, TopicIdType
from gateway.protocol.messages import Connack, Connect, Message, Puback, Publish
from gateway.runtime import GatewayRuntime
from tests.integration.conftest import wait_for
from tests.mosquitto import MosquittoBroker, free_port

NOT_SUPPORTED = ReturnCode.REJECTED_NOT_SUPPORTED
SECRETS = ("pw1-SECRET-d41d8c", "pw2-FILE-SECRET-98f00b", "wrong-SECRET-e3b0c4", "gw-SECRET-7a9e")
StartGateway = Callable[..., Any]


@pytest.fixture
async def start_secure_gateway() -> AsyncIterator[StartGateway]:
    """``await start(broker_url, mode, access={...}, predefined={...})`` -> a running gateway."""
    runtimes: list[GatewayRuntime] = []

    async def start(
        broker_url: str,
        mode: str,
        *,
        access: dict[str, Any],
        predefined: dict[str, str] | None = None,
        protocol: str = "5",
    ) -> GatewayRuntime:
        port = free_port(socket.SOCK_DGRAM)
        config = parse_config(
            {
                "gateway": {"mode": mode},
                "mqttsn": {"t-adv": 0, "t-retry": 1.0, "n-retry": 3},
                "broker": {"protocol": protocol},
                "predefined": predefined or {},
                "access": access,
            },
            udp=f"127.0.0.1:{port}",
            broker=broker_url,
        )
        runtime = GatewayRuntime(config)
        await runtime.start()
        runtime.udp_port = port  # type: ignore[attr-defined]
        runtimes.append(runtime)
        await wait_for(lambda: runtime.upstream.connected, 10.0, "gateway connects to the broker")
        return runtime

    yield start
    for runtime in runtimes:
        await runtime.close()


def node(runtime: GatewayRuntime, client_id: str, **kwargs: Any) -> SimNode:
    """A simulated node on its own UDP socket."""
    port = runtime.udp_port  # type: ignore[attr-defined]
    return SimNode(client_id, UdpNodeLink(("127.0.0.1", port)), t_retry=1.0, **kwargs)


async def exchange(sock: socket.socket, message: Message, timeout: float = 5.0) -> Message:
    """Send one frame on a connected UDP socket and decode the answer."""
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, encode(message))
    return decode(await asyncio.wait_for(loop.sock_recv(sock, 2048), timeout))


# ---------------------------------------------------------------------------- allow-list


async def test_allow_list_refuses_unknown_client_id(
    mosquitto: MosquittoBroker,
    start_secure_gateway: StartGateway,
    mode: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not on the allow-list: CONNACK rejected: not supported (0x03) and one WARNING."""
    access = {"clients": [{"client-id": "sensor-*", "transport": "udp", "address": "127.0.0.1:*"}]}
    gateway = await start_secure_gateway(mosquitto.url, mode, access=access)
    async with node(gateway, "intruder") as intruder:
        with pytest.raises(ConnectRefused) as refused:
            await intruder.connect()
    assert refused.value.return_code is NOT_SUPPORTED
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'intruder'" in w and "allow-list" in w for w in warnings), warnings
    assert gateway.core.counters["connect_refused_access"] == 1
    async with node(gateway, "sensor-1") as sensor:
        await sensor.connect()


# ---------------------------------------------------------------------------- topic rules


async def test_topic_rules_for_publish_and_subscribe(
    mosquitto: MosquittoBroker,
    start_secure_gateway: StartGateway,
    observe: Any,
    mode: str,
    unique_topic: str,
) -> None:
    """REGISTER/PUBLISH/SUBSCRIBE outside the node's rules get 0x03 and reach nobody."""
    t = unique_topic
    access = {
        "rules": [
            {
                "client-id": "*",
                "publish": [f"{t}/sensors/{{client_id}}/#"],
                "subscribe": [f"{t}/cmd/{{client_id}}/#", f"{t}/broadcast/#"],
            }
        ]
    }
    predefined = {"1": f"{t}/sensors/n2/temp"}
    gateway = await start_secure_gateway(mosquitto.url, mode, access=access, predefined=predefined)
    observer = await observe(mosquitto, f"{t}/#")
    async with node(gateway, "n1", predefined={1: predefined["1"]}) as n1:
        await n1.connect()
        await n1.publish(f"{t}/sensors/n1/temp", b"21.5", qos=1)
        with pytest.raises(RequestRejected) as rejected:
            await n1.publish(f"{t}/sensors/n2/rh", b"spoof", qos=1)  # REGISTER refused
        assert (rejected.value.what, rejected.value.return_code) == (
            f"REGISTER {t + '/sensors/n2/rh'!r}",
            NOT_SUPPORTED,
        )
        with pytest.raises(RequestRejected) as rejected:
            await n1.publish(1, b"spoof", qos=1, topic_id_type=TopicIdType.PREDEFINED)
        assert rejected.value.return_code is NOT_SUPPORTED

        await n1.subscribe(f"{t}/cmd/n1/+/set", qos=1)
        await n1.subscribe(f"{t}/broadcast/#", qos=0)
        for refused_filter in (f"{t}/cmd/#", f"{t}/cmd/n2/led", f"{t}/sensors/#"):
            with pytest.raises(RequestRejected) as rejected:
                await n1.subscribe(refused_filter, qos=1)
            assert rejected.value.return_code is NOT_SUPPORTED
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
            await client.publish(f"{t}/cmd/n2/led/set", b"not for n1", qos=1)
            await client.publish(f"{t}/cmd/n1/led/set", b"on", qos=1)
        received = await asyncio.wait_for(anext(n1.messages()), 5)
        assert (received.topic_name, received.payload) == (f"{t}/cmd/n1/led/set", b"on")

    # QoS 0 to a forbidden pre-defined topic: PUBACK 0x03 too, over a raw socket.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect(("127.0.0.1", gateway.udp_port))
        assert await exchange(sock, Connect("n3", 60)) == Connack(ReturnCode.ACCEPTED)
        publish = Publish(1, b"spoof-q0", QoS.AT_MOST_ONCE, 0, TopicIdType.PREDEFINED)
        assert await exchange(sock, publish) == Puback(1, 0, NOT_SUPPORTED)

    await observer.wait_count(f"{t}/sensors/n1/temp", 1)
    await asyncio.sleep(0.3)
    assert observer.payloads(f"{t}/sensors/n2/temp") == []
    assert observer.payloads(f"{t}/sensors/n2/rh") == []
    assert gateway.core.counters["publish_refused_access"] == 2


# ---------------------------------------------------------------------------- per-node logins


@pytest.fixture
def auth_broker() -> Iterator[MosquittoBroker]:
    """A broker that knows the gateway and two sensors, each with its own password."""
    # Not under tmp_path: mosquitto started as root drops to its own user (0700 directories).
    directory = Path(tempfile.mkdtemp(prefix="mqttsn-security-"))
    directory.chmod(0o755)
    passwords = directory / "passwords"
    users = [("gateway", SECRETS[3]), ("sensor-1", SECRETS[0]), ("sensor-2", SECRETS[1])]
    for index, (user, password) in enumerate(users):
        create = ["-c"] if index == 0 else []
        subprocess.run(
            ["mosquitto_passwd", "-b", *create, str(passwords), user, password], check=True
        )
    passwords.chmod(0o644)
    broker = MosquittoBroker(
        extra_config=f"allow_anonymous false\npassword_file {passwords}\nlog_type all\n"
    )
    broker.start()
    yield broker
    broker.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_transparent_nodes_log_in_with_their_own_credentials(
    auth_broker: MosquittoBroker,
    start_secure_gateway: StartGateway,
    tmp_path: Path,
    protocol: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each node's broker connection logs in as [[access.credentials]] says; secrets never show."""
    password_file = tmp_path / "sensor-2.secret"
    password_file.write_text(SECRETS[1] + "\n")
    access = {
        "credentials": [
            {"client-id": "sensor-1", "username": "sensor-1", "password": SECRETS[0]},
            {"client-id": "sensor-bad", "username": "sensor-1", "password": SECRETS[2]},
            {
                "client-id": "sensor-*",
                "username": "{client_id}",
                "password-file": str(password_file),
            },
        ]
    }
    url = f"mqtt://gateway:{SECRETS[3]}@{auth_broker.host}:{auth_broker.port}"
    caplog.set_level(logging.DEBUG)
    gateway = await start_secure_gateway(url, "transparent", access=access, protocol=protocol)
    async with node(gateway, "sensor-1") as s1, node(gateway, "sensor-2") as s2:
        await s1.connect()
        await s2.connect()
        await s1.publish("telemetry/sensor-1", b"1", qos=1)
        await s2.publish("telemetry/sensor-2", b"2", qos=1)
    async with node(gateway, "sensor-bad") as bad:
        with pytest.raises(ConnectRefused) as refused:
            await bad.connect()  # the broker refused its login: the node is refused too
        assert refused.value.return_code is NOT_SUPPORTED
    async with node(gateway, "other") as other:
        await other.connect()  # no entry: logs in as [broker] says (user gateway)
    log = auth_broker.log_text()
    for user in ("sensor-1", "sensor-2"):
        assert f"as {user} (" in log and f"u'{user}'" in log, log[-2000:]
    assert "as other (" in log and "u'gateway'" in log

    # Not one log record of the whole session shows a password (DEBUG included).
    assert caplog.records
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "") + repr(record.args)
        for secret in SECRETS:
            assert secret not in text, (record.name, record.getMessage())

    # check-config shows the password as *** and the password file by its path only.
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\nmode = "transparent"\n[broker]\nurl = "{url}"\n'
        '[[access.credentials]]\nclient-id = "sensor-1"\nusername = "sensor-1"\n'
        f'password = "{SECRETS[0]}"\n'
        '[[access.credentials]]\nclient-id = "sensor-*"\nusername = "{client_id}"\n'
        f'password-file = "{password_file}"\n'
    )
    assert main(["check-config", str(config)]) == 0
    out = capsys.readouterr().out
    assert 'password = "***"' in out
    assert f'password-file = "{password_file}"' in out
    for secret in SECRETS:
        assert secret not in out

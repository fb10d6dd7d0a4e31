"""Peers not written here: the `mqtt-sn-12` CLI client, and tshark's MQTT-SN dissector."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import aiomqtt

from tests.integration.conftest import sim_node


def _cli(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    assert Path(found).exists(), f"{name} missing: pip install mqtt-sn-12 (in the [test] extra)"
    return found


async def test_mqtt_sn_12_cli_publishes_through_the_gateway(
    mosquitto, start_gateway, observe, unique_topic
):
    """The mqtt-sn-12 package's mqtt_sn_pub (QoS 0 and 1) reaches the broker through us."""
    gateway = await start_gateway(mosquitto)
    observer = await observe(mosquitto, f"{unique_topic}/#")
    for qos in ("0", "1"):
        proc = await asyncio.create_subprocess_exec(
            _cli("mqtt_sn_pub"),
            "-h",
            "127.0.0.1",
            "-p",
            str(gateway.udp_port),
            "-t",
            f"{unique_topic}/cli",
            "-m",
            f"from-cli-{qos}",
            "-q",
            qos,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, (out, err)
    assert await observer.wait_count(f"{unique_topic}/cli", 2) == [b"from-cli-0", b"from-cli-1"]


async def test_mqtt_sn_12_cli_subscribes_through_the_gateway(
    mosquitto, start_gateway, unique_topic
):
    """mqtt_sn_sub receives a message published at the broker."""
    gateway = await start_gateway(mosquitto)
    proc = await asyncio.create_subprocess_exec(
        _cli("mqtt_sn_sub"),
        "-h",
        "127.0.0.1",
        "-p",
        str(gateway.udp_port),
        "-t",
        f"{unique_topic}/down",
        "-q",
        "1",
        "-1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
        for _ in range(100):  # until its SUBSCRIBE reached the broker
            await asyncio.sleep(0.1)
            if any(s.subscriptions for s in gateway.core.sessions.values()):
                break
        await client.publish(f"{unique_topic}/down", b"to-cli", qos=1)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    assert b"to-cli" in out


async def test_tshark_finds_nothing_malformed_in_what_we_send(
    mosquitto, start_gateway, unique_topic
):
    """Every frame the gateway sends dissects cleanly in tshark's MQTT-SN dissector."""
    tshark = shutil.which("tshark")
    assert tshark, "tshark missing: apt-get install tshark (.ci/run installs it)"
    gateway = await start_gateway(mosquitto, mqttsn={"t-adv": 0})
    port = gateway.udp_port
    pcap = Path(tempfile.mkdtemp()) / "cap.pcap"
    capture = subprocess.Popen(
        [tshark, "-i", "lo", "-f", f"udp port {port}", "-w", str(pcap)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        await asyncio.sleep(1.5)  # tshark needs a moment before it captures
        async with sim_node(gateway, "shark") as node:
            await node.connect(will=(f"{unique_topic}/will", b"bye", 1, True))
            await node.subscribe(f"{unique_topic}/#", qos=2)
            await node.publish(
                f"{unique_topic}/a", b"x" * 300, qos=1
            )  # long form back via REGISTER
            await node.publish(f"{unique_topic}/b", b"y", qos=2)
            async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
                await client.publish(f"{unique_topic}/new", b"z", qos=1)  # REGISTER first
            got = node.messages()
            for _ in range(3):
                await asyncio.wait_for(anext(got), 5)
            await node.ping()
            await node.sleep(10)
            await node.wake()
        await asyncio.sleep(1.0)
    finally:
        capture.terminate()
        capture.wait(10)
    result = subprocess.run(
        [
            tshark,
            "-r",
            str(pcap),
            "-d",
            f"udp.port=={port},mqttsn",
            "-Y",
            f"udp.srcport=={port}",
            "-T",
            "fields",
            "-e",
            "mqttsn.msg.type",
            "-e",
            "_ws.expert.message",
            "-e",
            "_ws.malformed",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) >= 10, f"too few gateway frames captured: {result.stdout} {result.stderr}"
    assert not any("alformed" in line for line in lines), lines
    types = {line.split("\t")[0] for line in lines}
    # CONNACK, WILLTOPICREQ, WILLMSGREQ, REGACK, PUBLISH, PUBACK, SUBACK, REGISTER, PINGRESP...
    assert {"0x05", "0x06", "0x08", "0x0b", "0x0c", "0x0d", "0x13", "0x0a", "0x17"} <= types, types

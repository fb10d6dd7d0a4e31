"""The running gateway under a million random and mutated datagrams; what the flood found.

The flood itself lives in ``tests/fuzz/run_fuzz.py`` (also a script for longer runs by hand).
Set ``MQTTSN_FUZZ_SEED`` to replay another seed.
"""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from firmware_sim.node import SimNode, SimNodeError
from firmware_sim.udp_link import UdpNodeLink
from gateway.config import parse_config
from gateway.protocol import (
    Connack,
    Connect,
    ReturnCode,
    TopicIdType,
    WillMsg,
    WillMsgReq,
    WillTopic,
    WillTopicReq,
    decode,
    encode,
)
from gateway.runtime import GatewayRuntime
from tests.fuzz.run_fuzz import fuzz_gateway
from tests.mosquitto import MosquittoBroker, free_port

SEED = int(os.environ.get("MQTTSN_FUZZ_SEED", "20261122"))
COUNT = 1_000_000

# Measured on this 2-core machine (seed 20261122, against a copy of the gateway with the fixes
# reported below): VmRSS 31.2 MiB at the start, 33.3 MiB after the million (+2.1 MiB; +0.9 MiB
# over the second half: bounded caches such as the per-source warning tables filling up, plus
# AggregatingUpstream._props, which is not bounded: see the report). The bounds leave room for
# another machine and allocator and still catch a leak of 30 bytes per datagram.
RSS_GROWTH_LIMIT_KB = 30 * 1024
RSS_SECOND_HALF_LIMIT_KB = 10 * 1024


@pytest.mark.slow
@pytest.mark.timeout(200)
async def test_a_million_fuzzed_datagrams_leave_the_gateway_serving(
    private_mosquitto: MosquittoBroker, unique_topic: str
) -> None:
    """1,000,000 mutated/valid/random datagrams from 64 sources: no crash, bounded RSS, served.

    Meanwhile a well-behaved node publishes QoS 1 every 100 ms: every message is acknowledged
    and reaches a broker subscriber, during the flood and after it. A broker of its own: the
    flood leaves thousands of retained messages on random topics behind.
    """
    broker = private_mosquitto
    report = await fuzz_gateway(
        broker.host, broker.port, COUNT, SEED, topic=f"{unique_topic}/survivor"
    )
    figures = f"\n{report.summary()}\n--- gateway log (end) ---\n{report.log_tail}"
    print(figures)  # the figures, for the record (pytest -s)
    assert report.sent == COUNT, figures
    assert report.alive, f"the gateway died{figures}"
    assert report.tracebacks == 0, f"traceback in the gateway's output{figures}"
    # The pacing works: the gateway read (nearly) every datagram rather than the kernel
    # dropping them, and it was busy doing so.
    assert report.kernel_drops <= COUNT // 20, figures
    assert report.gateway_cpu_s >= 5.0, figures
    assert report.connack.get(ReturnCode.ACCEPTED, 0) >= 1000, f"few sessions made{figures}"
    start, half, end = report.rss_kb["start"], report.rss_kb["50"], report.rss_kb["after"]
    assert end - start <= RSS_GROWTH_LIMIT_KB, f"RSS grew {(end - start) // 1024} MiB{figures}"
    assert report.rss_kb["100"] - half <= RSS_SECOND_HALF_LIMIT_KB, f"RSS still grows{figures}"
    # The well-behaved node was served during the flood and after it, without a loss.
    assert not report.node_errors, figures
    during = report.node_published.get("during", 0)
    assert during >= report.flood_seconds * 0.5 / 0.1, f"node starved during the flood{figures}"
    assert report.node_published.get("after", 0) >= 10, figures
    for phase in ("during", "after"):
        assert report.node_received.get(phase) == report.node_published[phase], figures
    assert report.fresh_node == "ACCEPTED" or "REJECTED_CONGESTION" in report.fresh_node, figures


# ---------------------------------------------------------------------------------------------
# What the flood found: one node could take down the broker connection every node shares.
# Mosquitto closes a connection that sends a control character (U+0001-U+001F, U+007F-U+009F) or
# a non-character (U+FDD0-U+FDEF, U+xFFFE/F) in a topic, filter or user property ("malformed
# packet" / "Malformed UTF-8"; MQTT 5 §1.5.4, MQTT 3.1.1 §1.5.3 allow it). The gateway kept the
# QoS 1 publish in its outbox and sent it again after every reconnect: no node was served again.

_BAD_INPUTS = {
    "short topic name": ("publish", "a\x01"),
    "registered topic": ("publish", "sensors/\x07bell"),
    "non-character": ("publish", "sensors/\ufffe"),
    "del character": ("publish", "sensors/\x7f"),
    "subscription filter": ("subscribe", "sensors/\x1b/#"),
    "client id (MQTT 5 user property)": ("client_id", "node\x01"),
    "will topic": ("will", "wills/\x02"),
}


async def _bad_node(port: int, kind: str, text: str) -> None:
    """Let one node send ``text`` where ``kind`` says; whether it is refused does not matter."""
    if kind == "will":
        await _will_then_vanish(port, text)
        return
    client_id = text if kind == "client_id" else "bad-node"
    node = SimNode(client_id, UdpNodeLink(("127.0.0.1", port)), t_retry=0.5, n_retry=2)
    async with node:
        try:
            await node.connect()
            if kind == "subscribe":
                await node.subscribe(text, qos=1)
            elif kind == "client_id":
                await node.publish("fuzz/ok-topic", b"from a node with an odd id", qos=1)
            else:
                short = TopicIdType.SHORT_NAME if len(text.encode()) == 2 else None
                await node.publish(text, b"x", qos=1, topic_id_type=short)
        except SimNodeError:
            pass  # refused or unanswered: either way the next node must be served


async def _will_then_vanish(port: int, will_topic: str) -> None:
    """CONNECT with a will on ``will_topic``, keep-alive 1 s, then fall silent (will is due)."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))

        async def ask(frame: bytes) -> object:
            await loop.sock_sendall(sock, frame)
            return decode(await asyncio.wait_for(loop.sock_recv(sock, 2048), 2))

        assert isinstance(await ask(encode(Connect("will-node", 1, will=True))), WillTopicReq)
        reply = await ask(encode(WillTopic(will_topic)))
        if isinstance(reply, WillMsgReq):
            reply = await ask(encode(WillMsg(b"gone")))
        assert isinstance(reply, Connack)
    await asyncio.sleep(2.5)  # 1.5 x keep-alive: lost, the will is published (if accepted)


@pytest.mark.parametrize("case", list(_BAD_INPUTS))
async def test_odd_characters_from_one_node_do_not_cut_everyones_broker_link(
    private_mosquitto: MosquittoBroker, case: str
) -> None:
    """A control or non-character from one node never reaches the broker; others stay served."""
    kind, text = _BAD_INPUTS[case]
    port = free_port(socket.SOCK_DGRAM)
    config = parse_config(
        {"mqttsn": {"t-adv": 0, "t-retry": 0.5}},
        udp=f"127.0.0.1:{port}",
        broker=private_mosquitto.url,
    )
    async with GatewayRuntime(config) as gateway:
        for _ in range(500):
            if gateway.upstream.connected:
                break
            await asyncio.sleep(0.01)
        await _bad_node(port, kind, text)
        good = SimNode("good-node", UdpNodeLink(("127.0.0.1", port)), t_retry=0.5, n_retry=6)
        async with good:
            await good.connect()
            await good.publish("fuzz/after", b"still served", qos=1)  # acked after the broker
    broker_log = private_mosquitto.log_text()
    assert "alformed" not in broker_log, broker_log[-2000:]

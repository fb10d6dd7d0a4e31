"""The QoS 2 twin of ``test_restart.py::test_broker_messages_are_acknowledged_only_once_on_disk``:
broker QoS 2 messages handed over right before ``kill -9`` reach the node, exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from firmware_sim.node import SimNode
from firmware_sim.udp_link import UdpNodeLink
from tests.store.test_restart import publish_at_broker


async def test_qos2_broker_messages_survive_kill_9_exactly_once(
    mosquitto, gateway_process, mode, unique_topic, tmp_path: Path
):
    """SIGKILL right after the broker handed over QoS 2 messages for a sleeper: after the
    restart every one reaches the node, none twice.

    PUBREC waits for the commit that holds the buffered message and its packet id; the broker
    sends again what got no PUBREC, and a repeat whose id is on disk is answered, not buffered
    a second time. (With PUBREC sent on receipt, as before, the messages not yet committed are
    lost: the broker considers them delivered.)
    """
    state = tmp_path / "state.sqlite"
    topic = f"{unique_topic}/cmd"
    first = gateway_process(mosquitto, state, mode=mode)
    await first.start()
    port = first.udp_port
    async with SimNode("sleeper2", UdpNodeLink(("127.0.0.1", port)), t_retry=1.0) as node:
        # Clean session off: in transparent mode the node's broker session outlives us.
        await node.connect(keepalive=60, clean_session=False)
        await node.subscribe(topic, qos=2)
        await node.sleep(300)
        await first.wait_line("(0 held)", 10)  # the subscription is on disk
        burst = [(f"q{i}".encode(), 2) for i in range(50)]
        await publish_at_broker(mosquitto, topic, *burst)
        await first.kill()  # no time to save: at most a few of the 50 are on disk
        await publish_at_broker(mosquitto, topic, (b"while-down", 2))

        second = gateway_process(mosquitto, state, port, mode=mode)
        await second.start()
        try:  # the broker redelivers what got no PUBREC; a miss shows in the assert below
            await second.wait_line("(51 held)", 10)
        except AssertionError:
            pass
        await asyncio.sleep(0.5)  # a duplicate, if any, would be buffered by now
        woken = await node.wake()
    got = Counter(m.payload for m in woken)
    expected = Counter([p for p, _ in burst] + [b"while-down"])
    assert got == expected, f"missing {sorted(expected - got)}, duplicated {sorted(got - expected)}"
    assert {m.qos for m in woken} == {2}
